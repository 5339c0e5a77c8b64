#!/usr/bin/env python3
"""Benchmark: `reviewbot review MSGID --tree T` against the floor
(`b4 am MSGID` + `git am` onto the same tree), and checkpatch.pl over the
same series, on Debian's linux-source-6.1 as a git tree, with the series
served by a real public-inbox on loopback.

Series (real kernel code): 17 real functions removed from a copy of the
tree and sent back one patch per function; and one large patch re-adding
a whole real file.  Medians of --runs runs; results to bench/RESULTS.md.

    python3 bench/bench_review.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from support import ktree  # noqa: E402
from support.lore import LoreServer  # noqa: E402

from reviewbot.analysis import cparse  # noqa: E402

CACHE = Path(os.environ.get("REVIEWBOT_BENCH_CACHE", Path.home() / ".cache" / "reviewbot-bench"))
SERIES_FILES = {"net/core/sock_map.c": 6, "net/ipv4/tcp_bpf.c": 5, "net/core/filter.c": 7}
LARGE_FILE = "net/ipv4/tcp_input.c"
AUTHOR = "Bench Author <bench@example.org>"


def git(cwd, *args, env=None, input=None) -> str:
    e = ktree.git_env(AUTHOR)
    e.update(env or {})
    p = subprocess.run(["git", *args], cwd=cwd, env=e, input=input, capture_output=True)
    if p.returncode:
        raise RuntimeError(f"git {args}: {p.stderr.decode()}")
    return p.stdout.decode()


def pick_functions(text: str, n: int) -> list[tuple[int, int]]:
    """n real function definitions of 10-60 lines, as byte ranges."""
    tree = cparse.parse(text)
    out = []
    for f in cparse.functions(tree):
        lines = f.end - f.start + 1
        if 10 <= lines <= 60 and f.node.parent is not None and f.node.parent.type == "translation_unit":
            out.append((f.node.start_byte, f.node.end_byte))
    step = max(1, len(out) // n)
    return out[::step][:n]


def remove_ranges(data: bytes, ranges) -> bytes:
    for s, e in sorted(ranges, reverse=True):
        end = e + 1 if data[e:e + 1] == b"\n" else e
        data = data[:s] + data[end:]
    return data


def setup_tree() -> tuple[Path, str, list[Path], list[Path]]:
    """The bench tree at base A (functions and the large file removed), and
    the two series as format-patch files."""
    full, orig = ktree.build_full_tree()
    tree = CACHE / "tree"
    stamp = CACHE / "tree.base"
    key = repr((SERIES_FILES, LARGE_FILE, orig))
    if not stamp.exists() or stamp.read_text().split("\n", 1)[-1].strip() != key:
        if (tree / ".git").exists() and subprocess.run(
                ["git", "-C", str(tree), "cat-file", "-e", f"{orig}^{{commit}}"], capture_output=True).returncode:
            shutil.rmtree(tree)     # the cached full tree was rebuilt: start again
        if not (tree / ".git").exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            git(CACHE, "clone", "-q", str(full), str(tree))   # hardlinked objects: independent of the test cache
            print(f"clone + checkout of the full tree: {time.time() - t0:.1f}s", file=sys.stderr)
        git(tree, "reset", "-q", "--hard", orig)
        originals = {}
        restored = []     # (path, ranges) in order
        for path, n in SERIES_FILES.items():
            data = (tree / path).read_bytes()
            originals[path] = data
            ranges = pick_functions(data.decode(), n)
            restored.extend((path, r) for r in ranges)
            (tree / path).write_bytes(remove_ranges(data, ranges))
        large = (tree / LARGE_FILE).read_bytes()
        (tree / LARGE_FILE).unlink()
        git(tree, "add", "-A")
        git(tree, "commit", "-qm", "bench: base with real functions removed")
        base = git(tree, "rev-parse", "HEAD").strip()
        # The 17-patch series: restore one function per commit, made with a
        # temporary index so the bench tree's checkout stays at the base.
        idx = CACHE / "series.index"
        env = {"GIT_INDEX_FILE": str(idx)}
        git(tree, "read-tree", base, env=env)
        parent = base
        kept = {p: [r for (q, r) in restored if q == p] for p in SERIES_FILES}
        for i, (path, rng) in enumerate(restored, start=1):
            kept[path].remove(rng)
            blob = git(tree, "hash-object", "-w", "--stdin", input=remove_ranges(originals[path], kept[path]))
            git(tree, "update-index", "--cacheinfo", f"100644,{blob.strip()},{path}", env=env)
            wt = git(tree, "write-tree", env=env).strip()
            name = cparse.functions(cparse.parse(originals[path][rng[0]:rng[1]].decode()))[0].name
            parent = git(tree, "commit-tree", wt, "-p", parent,
                         input=f"{path.split('/')[1]}: restore {name}()\n\nSigned-off-by: {AUTHOR}\n".encode()).strip()
        git(tree, "update-ref", "refs/bench/series17", parent)
        # The large patch: re-add the whole file.
        git(tree, "read-tree", base, env=env)
        blob = git(tree, "hash-object", "-w", "--stdin", input=large)
        git(tree, "update-index", "--add", "--cacheinfo", f"100644,{blob.strip()},{LARGE_FILE}", env=env)
        wt = git(tree, "write-tree", env=env).strip()
        big = git(tree, "commit-tree", wt, "-p", base,
                  input=f"tcp: restore tcp_input.c\n\nSigned-off-by: {AUTHOR}\n".encode()).strip()
        git(tree, "update-ref", "refs/bench/large", big)
        idx.unlink()
        stamp.write_text(base + "\n" + key + "\n")
    base = stamp.read_text().split("\n", 1)[0].strip()
    out17 = CACHE / "series17"
    outl = CACHE / "large"
    for d, ref, cover in ((out17, "refs/bench/series17", True), (outl, "refs/bench/large", False)):
        if d.exists():
            shutil.rmtree(d)
        args = ["format-patch", "-q", "-o", str(d), "--thread=shallow", f"--base={base}"]
        if cover:
            args += ["--cover-letter"]
        git(tree, *args, f"{base}..{ref}")
        if cover:
            c = next(d.glob("0000-*"))
            c.write_text(c.read_text().replace("*** SUBJECT HERE ***", "net: restore seventeen functions")
                         .replace("*** BLURB HERE ***", "Benchmark series."))
    return tree, base, sorted(out17.glob("*.patch")), sorted(outl.glob("*.patch"))


def msgid_of(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.lower().startswith("message-id:"):
            return line.split(":", 1)[1].strip().strip("<>")
    raise ValueError(path)


def timed(cmd, cwd=None, env=None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
    return time.perf_counter() - t0, p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    tree, base, s17, large = setup_tree()
    # Byte-compile reviewbot as `pip install` does (this machine sets
    # PYTHONDONTWRITEBYTECODE, so an editable install would otherwise
    # compile its sources on every run; b4 and the other tools are
    # installed compiled).
    import reviewbot
    import reviewbot.rules
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(reviewbot.__file__).parent),
                    *reviewbot.rules.__path__], check=True, capture_output=True)
    # The tree index is built once per tree commit and cached (`reviewbot
    # index`), like the checkout itself: reviews run with it, and once more
    # without any (REVIEWBOT_DUPINDEX=off: a tree nobody indexed).
    index_dir = CACHE / "index"
    t_index, p = timed(["reviewbot", "index", "--tree", str(tree), "--rev", base],
                       env=dict(os.environ, REVIEWBOT_INDEX_DIR=str(index_dir)))
    assert p.returncode == 0, p.stderr.decode()
    work = Path(tempfile.mkdtemp(prefix="rb-bench-"))
    lore = LoreServer(work / "lore")
    raw = [p.read_bytes() for p in s17 + large]
    lore.add_inbox("bench", raw)
    lore.start()
    results = {}
    try:
        for label, files in (("17-patch series", s17), ("single large patch", large)):
            mid = msgid_of(files[0])
            floor, rb, rb_noidx, cp, stages = [], [], [], [], []
            for run in range(args.runs):
                home = work / f"home-{label[:3]}-{run}"
                home.mkdir()
                env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
                           XDG_DATA_HOME=str(home / ".data"), XDG_CONFIG_HOME=str(home / ".config"))
                env.update({k: v for k, v in ktree.git_env("Bench Maint <maint@example.org>").items()})
                git(tree, "reset", "-q", "--hard", base)
                amdir = work / f"am-{label[:3]}-{run}"
                t_b4, p = timed(["b4", "-q", "-c", f"b4.midmask={lore.all_url}%s", "am", "-o", str(amdir), mid],
                                cwd=tree, env=env)
                assert p.returncode == 0, p.stderr.decode()
                mbx = [m for m in amdir.glob("*.mbx")]
                t_am, p = timed(["git", "am", "-q", str(mbx[0])], cwd=tree, env=env)
                assert p.returncode == 0, p.stderr.decode()
                floor.append(t_b4 + t_am)
                git(tree, "reset", "-q", "--hard", base)
                review = ["reviewbot", "review", mid, "--tree", str(tree), "--lore-url", lore.url,
                          "--format", "json", "--from", "Bench <b@example.org>"]
                t_rb, p = timed(review, env=dict(env, REVIEWBOT_INDEX_DIR=str(index_dir)))
                assert p.returncode == 0, p.stderr.decode()
                out = json.loads(p.stdout)
                assert all(x["applies"] for x in out["patches"]), [x["apply_error"] for x in out["patches"]]
                rb.append(t_rb)
                stages.append(out["timings"])
                t_rb0, p = timed(review, env=dict(env, REVIEWBOT_DUPINDEX="off"))
                assert p.returncode == 0, p.stderr.decode()
                rb_noidx.append(t_rb0)
                t_cp, p = timed(["perl", "scripts/checkpatch.pl", "-q", "--no-summary", *map(str, files)],
                                cwd=tree, env=env)
                cp.append(t_cp)
            med = statistics.median
            st = {k: med([s.get(k, 0.0) for s in stages]) for k in stages[0]}
            results[label] = dict(floor=med(floor), reviewbot=med(rb), noindex=med(rb_noidx),
                                  checkpatch=med(cp), stages=st,
                                  findings=sum(len(x["findings"]) for x in out["patches"]),
                                  patches=len(out["patches"]))
    finally:
        lore.stop()
        git(tree, "reset", "-q", "--hard", base)
        shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = ["# Benchmarks", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"{platform.platform()}.",
             "Tree: Debian linux-source-6.1 as a git repo (78k files), checkout at the series' base.",
             "Lore: public-inbox-httpd on 127.0.0.1. b4 and reviewbot with empty caches each run.",
             "reviewbot byte-compiled first, as `pip install` leaves it (this machine sets "
             "PYTHONDONTWRITEBYTECODE).",
             f"Medians of {args.runs} runs. Command: `python3 bench/bench_review.py --runs {args.runs}`.", "",
             f"Tree index: `reviewbot index` of the base commit, built once ({t_index:.1f} s this run, "
             "or found in the cache) and used by every review in the first reviewbot column; the "
             "second column is the same review with REVIEWBOT_DUPINDEX=off (a tree never indexed: "
             "DUP001 scans the directory instead).", "",
             "| series | floor: b4 am + git am (s) | reviewbot review --tree (s) | ratio "
             "| without tree index (s) | ratio | checkpatch.pl (s) | rules+render share | findings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        share = (r["stages"].get("rules", 0) + r["stages"].get("render", 0)) / r["reviewbot"]
        lines.append(f"| {label} ({r['patches']} patches) | {r['floor']:.2f} | {r['reviewbot']:.2f} | "
                     f"{r['reviewbot'] / r['floor']:.2f}x | {r['noindex']:.2f} | {r['noindex'] / r['floor']:.2f}x | "
                     f"{r['checkpatch']:.2f} | {share:.0%} | {r['findings']} |")
    lines += ["", "Stage medians inside reviewbot with the tree index (s):", ""]
    for label, r in results.items():
        lines.append(f"- {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["stages"].items()))
    lines += ["", f"Peak RSS of any child process: {peak:.0f} MiB.", ""]
    text = "\n".join(lines)
    print(text)
    marker = "<!-- bench_review -->"
    old = Path(args.out).read_text() if Path(args.out).exists() else ""
    keep = old.split(marker)[0] if marker in old else old
    Path(args.out).write_text(keep.rstrip("\n") + ("\n\n" if keep.strip() else "") + marker + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
