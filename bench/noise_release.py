"""Noise of the missing-release rules (REL001-REL003) on real patches.

Runs the rules, without a tree, over
  * the SK_LOOKUP v1 and v2 series (tests/data/lists/sk_lookup-v*.mbox),
    each reviewed as one series;
  * every patch mail of the dccp list archive (tests/data/lists/dccp.mbox),
    each reviewed alone;
  * the seeds and tests/data/messages/*.mbox, for reference;
and prints the findings per rule and per confidence, and every finding
(to be read: each one is either a real question or noise).

    python bench/noise_release.py [-v]
"""
from __future__ import annotations

import collections
import pathlib
import re
import sys
import time

from reviewbot.review import Options, review_mbox

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
RULES = {"REL001", "REL002", "REL003"}


def _review(data: bytes):
    try:
        return review_mbox(data, Options(only_rules=RULES))
    except Exception as exc:        # a mail the pipeline refuses is not a finding
        return exc


def _dccp_patches(path: pathlib.Path):
    raw = path.read_bytes().replace(b"\r\n", b"\n")
    from liblore import utils as lu
    for msg_bytes in lu.split_mbox_as_bytes(raw):
        head = msg_bytes.split(b"\n\n", 1)[0]
        m = re.search(rb"^Subject:\s*(.*)$", head, re.M)
        subj = m.group(1).decode(errors="replace") if m else ""
        if not re.search(r"\[PATCH", subj) or re.match(r"(?i)re:", subj.strip()):
            continue
        if b"\ndiff --git " not in msg_bytes and b"\n+++ " not in msg_bytes:
            continue
        yield subj, msg_bytes


def main(verbose: bool) -> int:
    counts = collections.Counter()
    per_conf = collections.Counter()
    patches = 0
    listing = []
    t0 = time.time()
    corpora = []
    for name in ("sk_lookup-v1.mbox", "sk_lookup-v2.mbox"):
        corpora.append((name, [(name, (DATA / "lists" / name).read_bytes())]))
    corpora.append(("dccp.mbox", list(_dccp_patches(DATA / "lists" / "dccp.mbox"))))
    for name, items in corpora:
        n_here = 0
        for label, data in items:
            res = _review(data)
            if isinstance(res, Exception):
                listing.append(f"{name}: {label[:60]}: pipeline error {res.__class__.__name__}")
                continue
            for note in res.notes:
                if note.startswith("rule "):
                    counts["crash"] += 1
                    listing.append(f"{name} [{label[:60]}]: {note}")
            for pr in res.patches:
                if not pr.patch.has_diff:
                    continue
                n_here += 1
                for f in pr.findings:
                    counts[f.rule] += 1
                    per_conf[(f.rule, f.confidence)] += 1
                    listing.append(f"{name} [{pr.patch.subject[:70]}]\n    {f.rule} {f.path}:{f.line} "
                                   f"{f.confidence}: {f.message}")
            for f in res.series_findings:
                counts[f.rule] += 1
                per_conf[(f.rule, f.confidence)] += 1
                listing.append(f"{name} (series)\n    {f.rule} {f.path}:{f.line} {f.confidence}: {f.message}")
        print(f"{name}: {n_here} patches reviewed")
        patches += n_here
    print(f"\n{patches} patches in {time.time() - t0:.1f}s")
    for rule in sorted(RULES):
        by = {c: per_conf[(rule, c)] for c in ("high", "medium", "low")}
        print(f"  {rule}: {counts[rule]} findings  {by}")
    print(f"  rule failures: {counts['crash']}")
    shown = sum(v for (r, c), v in per_conf.items() if c != "low")
    print(f"  findings that reach a reply (medium/high): {shown} "
          f"= {10 * shown / max(patches, 1):.2f} per 10 patches")
    if verbose or listing:
        print("\nfindings:")
        for line in listing:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main("-v" in sys.argv))
