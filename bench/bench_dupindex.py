#!/usr/bin/env python3
"""Benchmark the duplicate index (reviewbot.dupindex) on the whole 6.1 tree.

    python bench/bench_dupindex.py [--procs 2] [--out bench/RESULTS-dupindex.md]

Uses the cached git repo of linux-source-6.1 that the test suite builds
(~/.cache/reviewbot-tests/linux-6.1-git; made here from the tarball if
missing).  That repo is only read: commits for the incremental update and
the series are made in a `git clone --shared --no-checkout` scratch copy
through a temporary index.  The index cache is a temporary directory.

Measures: full build (wall and CPU seconds, functions, bytes on disk),
incremental update after a one-file commit, the index lookups for a
17-patch series that adds 17 real functions back, the same series through
`review_mbox` with DUP001/DUP002 only, against `git grep -F` of each added
function's first distinctive line, and peak RSS (this process and its
children).  Targets: build < 60 s on 2 cores, query < 0.5 s per series,
peak RSS < 1 GB.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from reviewbot.tree import dupindex as dx  # noqa: E402
from support import ktree  # noqa: E402

# 17 real functions (path, name) removed and added back by the series
FUNCS = [
    ("net/core/sock_map.c", "sock_hash_seq_show"),
    ("net/core/filter.c", "bpf_prog_create_from_user"),
    ("net/core/flow_dissector.c", "__skb_flow_dissect_tcp"),
    ("kernel/bpf/cgroup.c", "__cgroup_bpf_run_lsm_socket"),
    ("kernel/bpf/net_namespace.c", "netns_bpf_prog_detach"),
    ("net/ipv4/udp.c", "udp_lib_lport_inuse2"),
    ("net/ipv4/inet_hashtables.c", "inet_ehash_insert"),
    ("net/ipv6/inet6_hashtables.c", "inet6_lookup_listener"),
    ("net/core/dev.c", "dev_get_iflink"),
    ("drivers/media/rc/bpf-lirc.c", "lirc_prog_detach"),
    ("net/core/sock.c", "sock_set_timestamp"),
    ("kernel/bpf/syscall.c", "bpf_prog_get_fd_by_id"),
    ("fs/pipe.c", "pipe_poll"),
    ("mm/mremap.c", "vma_expandable"),
    ("lib/kstrtox.c", "kstrtoull"),
    ("drivers/net/loopback.c", "loopback_xmit"),
    ("net/xfrm/xfrm_input.c", "xfrm_trans_reinject"),
]


def rss_mb() -> tuple[float, float]:
    s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return s, c


def cpu() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def git(repo, *args, input=None, env=None) -> str:
    e = ktree.git_env()
    e.update(env or {})
    return subprocess.run(["git", "-C", str(repo), *args], input=input, env=e, check=True,
                          capture_output=True).stdout.decode()


def commit_files(repo: Path, parent: str, files: dict[str, str], message: str, tmp: Path) -> str:
    """A commit on PARENT with FILES replaced, made through a temporary index."""
    env = {"GIT_INDEX_FILE": str(tmp / f"index-{os.getpid()}")}
    git(repo, "read-tree", parent, env=env)
    for path, text in files.items():
        sha = git(repo, "hash-object", "-w", "--stdin", input=text.encode()).strip()
        mode = git(repo, "ls-tree", parent, "--", path).split()[0]
        git(repo, "update-index", "--cacheinfo", f"{mode},{sha},{path}", env=env)
    tree = git(repo, "write-tree", env=env).strip()
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message).strip()


def function_text(text: str, name: str) -> str | None:
    for sp in dx.split_functions(text):
        if sp.name == name:
            lines = text.split("\n")
            return "\n".join(lines[sp.start - 1:sp.end]) + "\n"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "RESULTS-dupindex.md"))
    args = ap.parse_args()

    repo, base = ktree.build_full_tree()
    work = Path(tempfile.mkdtemp(prefix="bench-dupindex-"))
    cache = work / "index"
    cache.mkdir()
    os.environ["REVIEWBOT_INDEX_DIR"] = str(cache)
    rows = []
    found_lines: list[str] = []
    try:
        load = os.getloadavg()[0]
        # -- full build
        c0, t0 = cpu(), time.perf_counter()
        idx = dx.DupIndex.build(str(repo), base, cache, procs=args.procs)
        build_wall, build_cpu = time.perf_counter() - t0, cpu() - c0
        size = du(cache / idx.meta["tree"])
        nfiles = len(idx.base.paths)
        rows.append(("full build, wall", f"{build_wall:.1f} s", "< 60 s on 2 cores"))
        rows.append(("full build, CPU (all processes)", f"{build_cpu:.1f} s", ""))
        rows.append(("files / functions indexed", f"{nfiles} / {len(idx)}", ""))
        rows.append(("index size on disk", f"{size / 1e6:.0f} MB", ""))
        rows.append(("load average at start", f"{load:.1f}", "2 cores; other work shares them"))

        # -- scratch clone (objects shared; the cached repo is not written)
        scratch = work / "scratch"
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(repo), str(scratch)],
                       check=True, env=ktree.git_env())
        # -- incremental update: one file changed
        path = "net/core/sock_map.c"
        text = git(scratch, "show", f"{base}:{path}")
        one = commit_files(scratch, base, {path: text.replace("sock_hash_seq_show", "sock_hash_seq_show2")},
                           "one file", work)
        c0, t0 = cpu(), time.perf_counter()
        up = dx.DupIndex.open(str(scratch), one, cache, build=False)
        inc = time.perf_counter() - t0
        assert up is not None and up.delta is not None
        rows.append(("incremental update, 1 file changed", f"{inc:.2f} s (CPU {cpu() - c0:.2f} s)", ""))

        # -- a 17-patch series adding 17 real functions back
        removed, bodies = {}, []
        for p, name in FUNCS:
            t = git(scratch, "show", f"{base}:{p}")
            body = function_text(t, name)
            if body is None:
                print(f"skip {p}:{name} (not found)", file=sys.stderr)
                continue
            removed[p] = t.replace(body + "\n", "", 1) if body + "\n" in t else t.replace(body, "", 1)
            bodies.append((p, name, body, t))
        pre = commit_files(scratch, base, removed, "remove functions", work)
        head = pre
        for p, name, body, t in bodies:
            head = commit_files(scratch, head, {p: t}, f"{p.split('/')[-2]}: Add {name}()", work)
        series = git(scratch, "format-patch", "--stdout", "--numbered", f"{pre}..{head}").encode()
        n = len(bodies)

        t0 = time.perf_counter()
        idx_pre = dx.DupIndex.open(str(scratch), pre, cache, build=False)
        delta_t = time.perf_counter() - t0
        rows.append((f"incremental update, {len(removed)} files changed", f"{delta_t:.2f} s", ""))

        t0 = time.perf_counter()
        found = 0
        for p, name, body, _ in bodies:
            codes = dx.code_tokens(body[body.index("\n{"):])
            hits = idx_pre.query(dx.fingerprints(codes), min_shared=3)[:25]
            found += bool(hits)
        q = time.perf_counter() - t0
        rows.append((f"index lookups, {n}-patch series ({n} added functions)", f"{q:.3f} s",
                     "< 0.5 s per series"))

        from reviewbot.review import Options, review_mbox
        dx._OPEN.clear()
        t0 = time.perf_counter()
        res = review_mbox(series, Options(tree=str(scratch), base=pre, only_rules={"DUP001", "DUP002"}))
        rv = time.perf_counter() - t0
        nfind = sum(len(r.findings) for r in res.patches)
        found_lines = [f"{f.rule} {r.patch.label} {f.path}:{f.line} {f.confidence}: {f.message}"
                       for r in res.patches for f in r.findings]
        rules_t = res.timings.get("rules", 0.0)
        rows.append(("review_mbox of the series, DUP001+DUP002 only", f"{rv:.2f} s (rules {rules_t:.2f} s, "
                     f"{nfind} findings)", ""))

        # -- baseline: git grep -F of each added function's first distinctive line
        t0 = time.perf_counter()
        for p, name, body, _ in bodies:
            lines = [ln.strip() for ln in body.split("\n")[1:] if len(ln.strip()) > 25
                     and not ln.strip().startswith(("/*", "*", "//"))]
            needle = lines[0] if lines else name
            # in the checkout of the base, as a maintainer would (the scratch clone has none)
            subprocess.run(["git", "-C", str(repo), "grep", "-F", "-q", "-e", needle],
                           capture_output=True)
        grep_t = time.perf_counter() - t0
        rows.append((f"baseline: {n} x `git grep -F -q` of a distinctive line (checkout)", f"{grep_t:.2f} s", ""))
        s, c = rss_mb()
        rows.append(("peak RSS, this process / largest child", f"{s:.0f} MB / {c:.0f} MB", "< 1 GB"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out = ["# dupindex benchmark", "",
           f"Tree: linux-source-6.1 as git ({repo}), {args.procs} worker processes, "
           f"{os.cpu_count()} cores. Produced by `python bench/bench_dupindex.py`.", "",
           "| measure | value | target |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out += ["", "Findings on the series (functions removed and added back: a finding is a",
            "real twin that stays in the tree):", ""] + [f"- {ln}" for ln in found_lines]
    out += ["", "CPU counts the indexing processes, not the `git cat-file` processes they read",
            "blobs through.  On this shared machine other jobs ran at the same time (see",
            "the load average): wall time is then far above CPU time / cores."]
    Path(args.out).write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
