"""Noise bench: every discovered rule over real code nobody here wrote.

Inputs (all real, all accepted or at least posted upstream):
  * every patch message of tests/data/lists/dccp.mbox, reviewed one by one
    (the diff alone: these 2019-2025 patches do not apply to one tree);
  * the SK_LOOKUP v1 and v2 series (tests/data/lists/sk_lookup-v{1,2}.mbox),
    each reviewed as a whole series;
  * with --tree-sample N: N random .c files of linux-source-6.1, each
    presented as a patch that adds the whole file (so every line is new
    code, and rules see whole functions).

Writes a Markdown report (default bench/RESULTS-noise.md): per rule the
findings, findings per patch and per 1,000 added lines, by confidence,
and a sample of messages with their locations.

    python bench/noise.py [--tree-sample 200] [--seed 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import collections
import io
import pathlib
import random
import subprocess
import sys
import tarfile
import time

from reviewbot import engine
from reviewbot.findings import confidence_at_least
from reviewbot.review import Options, review_mbox

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
TARBALL = pathlib.Path("/usr/src/linux-source-6.1.tar.xz")
NOTES_MARK = "<!-- notes: hand-written below, kept when the bench is re-run -->"
sys.path.insert(0, str(ROOT / "tests"))


def split_messages(data: bytes) -> list[bytes]:
    from support.lore import split_mbox
    return split_mbox(data)


def is_patch(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\n\n")
    return (b"\ndiff --git " in body or body.startswith(b"diff --git ")
            or (b"\n--- a/" in body and b"\n+++ b/" in body))


def file_as_patch(path: str, text: str, n: int) -> bytes:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    diff = (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n"
            + "".join("+" + ln + "\n" for ln in lines))
    msg = (f"From: Bench <bench@example.invalid>\nSubject: [PATCH] add {path}\n"
           f"Message-ID: <tree-sample-{n}@bench.invalid>\nDate: Mon, 2 Jan 2023 00:00:00 +0000\n"
           "Content-Type: text/plain; charset=utf-8\nMIME-Version: 1.0\n\n"
           f"Whole file of linux 6.1 as new code.\n\nSigned-off-by: Bench <bench@example.invalid>\n---\n{diff}-- \n2.39.0\n")
    return msg.encode("utf-8", errors="surrogateescape")


def tree_sample(n: int, seed: int, tree_dir: str | None) -> list[tuple[str, str]]:
    """n random .c files of linux 6.1: from an extracted tree if given,
    else straight from the tarball."""
    rnd = random.Random(seed)
    if tree_dir:
        base = pathlib.Path(tree_dir)
        names = sorted(str(p.relative_to(base)) for p in base.rglob("*.c"))
        pick = rnd.sample(names, min(n, len(names)))
        return [(p, (base / p).read_text(errors="replace")) for p in pick]
    listing = subprocess.run(f"xz -T0 -dc {TARBALL} | tar -t", shell=True, capture_output=True,
                             text=True).stdout.split("\n")
    names = sorted(x for x in listing if x.endswith(".c"))
    pick = set(rnd.sample(names, min(n, len(names))))
    out = []
    xz = subprocess.Popen(["xz", "-T0", "-dc", str(TARBALL)], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=xz.stdout, mode="r|") as tf:
        for m in tf:
            if m.name in pick:
                out.append((m.name.split("/", 1)[1], tf.extractfile(m).read().decode("utf-8", "replace")))
    xz.wait()
    return out


class Tally:
    def __init__(self):
        self.patches = 0
        self.added = 0
        self.inputs = collections.Counter()
        self.findings = collections.defaultdict(list)    # code -> [(source, label, finding)]
        self.notes = collections.Counter()
        self.errors = []

    def add(self, source: str, label: str, data: bytes):
        try:
            res = review_mbox(data, Options(tree=None))
        except Exception as exc:       # a crash is a finding of the bench too
            self.errors.append(f"{source} {label}: {exc.__class__.__name__}: {exc}")
            return
        for n in res.notes:
            if n.startswith("rule "):
                self.notes[n.split(" failed")[0]] += 1
        for pr in res.patches:
            if not pr.patch.has_diff:
                continue
            self.patches += 1
            self.inputs[source] += 1
            self.added += pr.patch.diff.added_count
            for f in pr.findings:
                self.findings[f.rule].append((source, f"{label} {pr.patch.subject[:70]}", f))
        for f in res.series_findings:
            self.findings[f.rule].append((source, f"{label} (series)", f))


def report(t: Tally, rules, args, elapsed: float) -> str:
    per_src = ", ".join(f"{k}: {v}" for k, v in t.inputs.items())
    out = io.StringIO()
    w = out.write
    w("# Noise bench: all rules over real code\n\n")
    w(f"Generated by `python bench/noise.py{' --tree-sample ' + str(args.tree_sample) if args.tree_sample else ''}"
      f"{' --seed ' + str(args.seed) if args.tree_sample else ''}` in {elapsed:.0f} s.\n\n")
    w(f"Patches reviewed: **{t.patches}** ({per_src}); added lines: **{t.added}**. "
      "Reviewed without a tree (diff only), except that tree samples are whole files.\n\n")
    total = sum(len(v) for v in t.findings.values())
    shown = sum(1 for v in t.findings.values() for _, _, f in v if confidence_at_least(f.confidence, "medium"))
    real = sum(1 for v in t.findings.values() for s, _, f in v if s != "tree-sample")
    real_patches = sum(v for k, v in t.inputs.items() if k != "tree-sample")
    real_shown = sum(1 for v in t.findings.values() for s, _, f in v
                     if s != "tree-sample" and confidence_at_least(f.confidence, "medium"))
    w(f"All findings: {total} ({total / max(t.patches, 1):.3f} per patch); at medium confidence or "
      f"more (what goes into replies): {shown}.\n\n")
    w(f"On the mailing-list patches alone ({real_patches} patches): {real} findings, "
      f"{real / max(real_patches, 1):.3f} per patch; {real_shown} at medium+ "
      f"({real_shown / max(real_patches, 1):.3f} per patch; target < 0.1).\n\n")
    w("| rule | name | findings | medium+ | per patch | per 1k added lines | by source |\n|---|---|---|---|---|---|---|\n")
    for r in rules:
        fs = t.findings.get(r.code, [])
        med = sum(1 for _, _, f in fs if confidence_at_least(f.confidence, "medium"))
        srcs = collections.Counter(s for s, _, _ in fs)
        w(f"| {r.code} | {r.name} | {len(fs)} | {med} | {len(fs) / max(t.patches, 1):.3f} | "
          f"{1000 * len(fs) / max(t.added, 1):.3f} | {', '.join(f'{k} {v}' for k, v in srcs.items()) or '-'} |\n")
    if t.notes:
        w("\nRule failures (rule crashed on an input; the review went on):\n\n")
        for k, v in t.notes.most_common():
            w(f"- {k}: {v}\n")
    if t.errors:
        w(f"\nReview crashes: {len(t.errors)}\n\n")
        for e in t.errors[:10]:
            w(f"- {e}\n")
    w("\n## Sample findings\n")
    for r in rules:
        fs = t.findings.get(r.code, [])
        if not fs:
            continue
        w(f"\n### {r.code} {r.name} ({len(fs)})\n\n")
        for src, label, f in fs[:args.sample]:
            msg = " ".join(f.message.split())
            w(f"- [{src}] {label} -- `{f.path}:{f.line}` ({f.confidence}): {msg[:400]}\n")
    return out.getvalue()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree-sample", type=int, default=0, help="also review N random .c files of linux 6.1 as new files")
    ap.add_argument("--tree-dir", help="an extracted linux 6.1 tree to sample from (default: the tarball)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample", type=int, default=8, help="messages shown per rule")
    ap.add_argument("--limit", type=int, default=0, help="only the first N dccp messages (quick runs)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-noise.md"))
    args = ap.parse_args(argv)
    t0 = time.time()
    rules = engine.discover()
    t = Tally()
    msgs = [m for m in split_messages((DATA / "lists" / "dccp.mbox").read_bytes()) if is_patch(m)]
    if args.limit:
        msgs = msgs[:args.limit]
    for i, raw in enumerate(msgs):
        t.add("dccp", f"#{i}", raw)
    for v in ("v1", "v2"):
        t.add("sk_lookup", v, (DATA / "lists" / f"sk_lookup-{v}.mbox").read_bytes())
    if args.tree_sample:
        for i, (path, text) in enumerate(tree_sample(args.tree_sample, args.seed, args.tree_dir)):
            t.add("tree-sample", path, file_as_patch(path, text, i))
    text = report(t, rules, args, time.time() - t0)
    out = pathlib.Path(args.out)
    if out.exists() and NOTES_MARK in out.read_text():
        text += "\n" + NOTES_MARK + out.read_text().split(NOTES_MARK, 1)[1]   # hand-written notes survive
    out.write_text(text)
    print(text[:3000])


if __name__ == "__main__":
    main()
