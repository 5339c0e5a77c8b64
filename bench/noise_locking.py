#!/usr/bin/env python3
"""Noise of the locking rules (LCK001-LCK005) on real patches.

Reviews, without a tree (the 2020 patches do not apply to 6.1), the
SK_LOOKUP v1 and v2 series (each as one series) and every patch of the
dccp list archive (each patch mail alone), running only the locking
rules, and prints the findings per rule with the number of patches seen.
Read every finding it prints: on these real (mostly accepted) patches
each one is either a true catch or noise.

    python bench/noise_locking.py [--json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

from reviewbot import engine
from reviewbot.engine import FileView
from reviewbot.errors import ReviewbotError
from reviewbot.review import Options, review_mbox

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reviewbot.analysis import lockflow as lf  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "lists"
CODES = sorted(r.code for r in engine.discover() if r.family == "locking")


def _messages(data: bytes) -> list[bytes]:
    parts = re.split(rb"(?m)^(?=From mboxrd@z )", data)
    return [p for p in parts if p.strip()]


def _is_patch(raw: bytes) -> bool:
    head = raw.split(b"\n\n", 1)[0]
    subj = re.search(rb"(?mi)^Subject:(.*(?:\n[ \t].*)*)", head)
    return bool(subj and re.search(rb"\[[^\]]*PATCH", subj.group(1))
                and not re.search(rb"^\s*(Re|Aw|Fwd?):", subj.group(1), re.I)
                and re.search(rb"(?m)^\+\+\+ b/", raw))


def units() -> list[tuple[str, bytes]]:
    out = []
    for name in ("sk_lookup-v1.mbox", "sk_lookup-v2.mbox"):
        out.append((name, (DATA / name).read_bytes()))
    for i, raw in enumerate(_messages((DATA / "dccp.mbox").read_bytes())):
        if _is_patch(raw):
            out.append((f"dccp.mbox#{i}", raw))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    per_rule = Counter()
    patches = 0
    c_patches = 0
    analysed = 0      # changed functions the hunks show whole (what the rules can judge)
    findings = []
    notes = []
    t0 = time.perf_counter()
    for label, data in units():
        try:
            res = review_mbox(data, Options(only_rules=set(CODES), min_confidence="low"))
        except ReviewbotError as exc:
            notes.append(f"{label}: {exc}")
            continue
        notes.extend(f"{label}: {n}" for n in res.notes if "failed" in n)
        for r in res.patches:
            patches += 1
            if any(f.is_c for f in r.patch.diff.files):
                c_patches += 1
            for fd in r.patch.diff.files:
                if fd.is_c and not fd.is_deleted:
                    analysed += len(lf.touched_functions(FileView(fd, None, None)))
            for f in r.findings:
                per_rule[f.rule] += 1
                findings.append({"unit": label, "patch": r.patch.subject, **f.to_json()})
        for f in res.series_findings:
            per_rule[f.rule] += 1
            findings.append({"unit": label, "patch": None, **f.to_json()})
    summary = {"patches": patches, "patches_touching_c": c_patches, "functions_analysed": analysed,
               "findings": {c: per_rule.get(c, 0) for c in CODES},
               "per_10_patches": round(10 * sum(per_rule.values()) / max(patches, 1), 3),
               "seconds": round(time.perf_counter() - t0, 1), "notes": notes}
    if args.json:
        print(json.dumps({"summary": summary, "findings": findings}, indent=2))
        return 0
    print(f"{patches} patches ({c_patches} touching C), {analysed} changed functions shown whole, "
          f"{summary['seconds']} s")
    for c in CODES:
        print(f"  {c}: {per_rule.get(c, 0)}")
    print(f"  findings per 10 patches: {summary['per_10_patches']}")
    for f in findings:
        print(f"\n[{f['rule']} {f['confidence']}] {f['unit']}: {f['patch']}\n  {f['path']}:{f['line']}\n  {f['message']}")
    for n in notes:
        print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
