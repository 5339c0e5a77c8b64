#!/usr/bin/env python3
"""Benchmark the tree knowledge base (reviewbot.tree.knowledge, issue 15)
on the whole 6.1 tree.

    python bench/bench_index.py [--procs 2] [--cache DIR] [--skip-build] [--out bench/RESULTS-index.md]

The cached git repo of linux-source-6.1 (~/.cache/reviewbot-tests/linux-6.1-git)
is only read: the 20-patch series is committed in a `git clone --shared
--no-checkout` scratch copy through a temporary index.

Measures: full build (wall, CPU, peak RSS of the main process and of the
largest worker, size on disk), the incremental update after a 20-patch
series touching 20 .c files (a delta: only those blobs are read again), the
overlay of the series' 20 post-images (what a review pays once), and all of
one review's queries over the 20 touched functions (may_sleep, contexts,
locks_taken, held_by_callers, order edges between the locks they take,
release_for/release_on_failure of everything they call).
Budgets: build <= 300 s, RSS <= 2 GB, disk <= 1 GB, update <= 5 s, queries <= 0.2 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from reviewbot.tree import dupindex as dx  # noqa: E402
from reviewbot.tree import knowledge as kn  # noqa: E402
from support import ktree  # noqa: E402

# 20 files and one function each: the series replaces a statement in each
SERIES = [
    ("net/core/sock.c", "sk_setsockopt"), ("net/core/dev.c", "__dev_open"),
    ("net/ipv4/tcp.c", "tcp_sendmsg"), ("net/core/skbuff.c", "skb_queue_tail"),
    ("net/core/sock_map.c", "sock_map_update_common"), ("net/core/neighbour.c", "neigh_periodic_work"),
    ("drivers/base/core.c", "device_add"), ("drivers/base/bus.c", "bus_add_driver"),
    ("lib/kobject.c", "kobject_add"), ("fs/ext4/inode.c", "ext4_write_begin"),
    ("mm/slub.c", "kmem_cache_destroy"), ("kernel/workqueue.c", "destroy_workqueue"),
    ("drivers/input/mouse/pxa930_trkball.c", "pxa930_trkball_probe"),
    ("drivers/net/loopback.c", "loopback_xmit"), ("net/xfrm/xfrm_input.c", "xfrm_trans_reinject"),
    ("sound/core/pcm_native.c", "snd_pcm_hw_params"), ("drivers/usb/core/hub.c", "hub_probe"),
    ("net/ipv6/addrconf.c", "addrconf_dad_work"), ("kernel/time/timer.c", "add_timer"),
    ("drivers/net/ethernet/intel/e1000e/netdev.c", "e1000_open"),
]


def rss_mb() -> tuple[float, float]:
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def cpu() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def git(repo, *args, input=None, env=None) -> str:
    e = ktree.git_env()
    e.update(env or {})
    return subprocess.run(["git", "-C", str(repo), *args], input=input, env=e, check=True,
                          capture_output=True).stdout.decode()


def commit_files(repo: Path, parent: str, files: dict[str, str], message: str, tmp: Path) -> str:
    env = {"GIT_INDEX_FILE": str(tmp / f"index-{os.getpid()}")}
    git(repo, "read-tree", parent, env=env)
    for path, text in files.items():
        sha = git(repo, "hash-object", "-w", "--stdin", input=text.encode()).strip()
        mode = git(repo, "ls-tree", parent, "--", path).split()[0]
        git(repo, "update-index", "--cacheinfo", f"{mode},{sha},{path}", env=env)
    tree = git(repo, "write-tree", env=env).strip()
    return git(repo, "commit-tree", tree, "-p", parent, "-m", message).strip()


def edit(text: str, name: str) -> str:
    """Insert a harmless statement at the top of function NAME's body."""
    for sp in dx.split_functions(text):
        if sp.name == name:
            return text[:sp.body_off + 1] + "\n\tmight_sleep();" + text[sp.body_off + 1:]
    return text + "\n/* touched */\n"


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--cache", help="knowledge cache dir (default: a temporary one)")
    ap.add_argument("--skip-build", action="store_true", help="reuse the full base in --cache")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS-index.md"))
    a = ap.parse_args()
    repo, base = ktree.build_full_tree()
    cache = Path(a.cache or tempfile.mkdtemp(prefix="kb-bench-"))
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"tree {repo} at {base[:12]}, cache {cache}, load {load()}", flush=True)
    if not a.skip_build:
        for p in cache.glob("knowledge-*.sqlite"):
            p.unlink()
        t0, c0, l0 = time.perf_counter(), cpu(), load()
        path = kn.build(str(repo), base, cache, procs=a.procs,
                        progress=lambda s: print(f"  {time.perf_counter() - t0:6.1f} s {s}", flush=True))
        wall, cpus = time.perf_counter() - t0, cpu() - c0
        main_rss, worker_rss = rss_mb()
        size = path.stat().st_size
        rows += [("full build (wall)", f"{wall:.0f} s", "300 s", f"load {l0} -> {load()}"),
                 ("full build (CPU, all processes)", f"{cpus:.0f} s", "", ""),
                 ("peak RSS: main process / largest worker", f"{main_rss:.0f} MB / {worker_rss:.0f} MB",
                  "2048 MB", "ru_maxrss"),
                 ("size on disk", f"{size / 1e6:.0f} MB", "1000 MB", path.name)]
        print(rows, flush=True)
    kb = kn.open_db(str(repo), base, cache)
    assert kb is not None, "no full base in the cache"
    conn = kb.db
    nf = conn.execute("SELECT COUNT(*) FROM funcs").fetchone()[0]
    stats = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
             for t in ("calls", "sleep", "edges", "ctx", "pairs", "failrel", "wrappers")}
    rows.append(("contents", f"{nf} functions", "", ", ".join(f"{k} {v}" for k, v in stats.items())))
    with tempfile.TemporaryDirectory(prefix="kb-series-") as tmp:
        tmp = Path(tmp)
        scratch = tmp / "linux"
        subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(repo), str(scratch)], check=True)
        head = base
        texts = {}
        for i, (path, fn) in enumerate(SERIES):
            text = edit(git(scratch, "show", f"{head}:{path}"), fn)
            texts[path] = text
            head = commit_files(scratch, head, {path: text}, f"patch {i + 1}", tmp)
        t0, c0, l0 = time.perf_counter(), time.process_time(), load()
        kd = kn.open_db(str(scratch), head, cache)
        upd, updc = time.perf_counter() - t0, time.process_time() - c0
        assert kd is not None and kd.meta.get("parent"), "expected a delta"
        rows.append(("incremental update, 20-patch series (20 files)", f"{upd:.2f} s", "5 s",
                     f"delta of {len(kd.delta_facts)} files; CPU {updc:.2f} s (+ git); load {l0}"))
        # a review: the overlay of the series' post-images, then the queries
        t0, c0 = time.perf_counter(), time.process_time()
        view = kd.view(texts)
        ov, ovc = time.perf_counter() - t0, time.process_time() - c0
        rows.append(("overlay of the 20 post-images (once per review)", f"{ov:.2f} s", "",
                     f"fact extraction of 20 files; CPU {ovc:.2f} s"))
        def queries(view) -> int:
            nq = 0
            for path, fn in SERIES:
                view.may_sleep(fn, path)
                view.contexts(fn, path)
                taken = view.locks_taken(fn, path)
                view.held_by_callers(fn)
                nq += 4
                classes = [t["class"] for t in taken][:6]
                for x in classes:
                    for y in classes:
                        if x != y:
                            view.order_edge(x, y)
                            nq += 1
                d = view._def(fn, path)
                callees = {e[1] for e in d["fn"]["ev"] if type(e) is not str and e[0] == "c"} \
                    if d and "fn" in d else set()
                for c in sorted(callees)[:30]:
                    view.release_for(c)
                    view.release_on_failure(c)
                    nq += 2
            return nq

        t0, c0 = time.perf_counter(), time.process_time()
        nq = queries(view)
        qt, qc = time.perf_counter() - t0, time.process_time() - c0
        times = []
        for _ in range(3):          # a new view each time (nothing memoised), the DB's pages cached
            v2 = kd.view(texts)
            t0 = time.perf_counter()
            queries(v2)
            times.append(time.perf_counter() - t0)
        rows.append(("all of one review's queries (first review after opening)", f"{qt:.3f} s", "0.2 s",
                     f"{nq} queries, 20 functions; CPU {qc:.3f} s; load {load()}"))
        rows.append(("all of one review's queries (later reviews, best of 3)", f"{min(times):.3f} s", "0.2 s",
                     "a new View each time; SQLite pages in the page cache"))
        # answers, for the record
        sample = view.may_sleep("sk_setsockopt", "net/core/sock.c")
        rows.append(("sample: may_sleep(sk_setsockopt)", f"{len(sample or [])} steps", "",
                     (sample or ["-"])[-1][:100]))
    out = ["# Tree knowledge base: whole 6.1 tree",
           "", f"Run `python bench/bench_index.py --procs {a.procs}` on {time.strftime('%Y-%m-%d %H:%M')} "
           f"({os.cpu_count()} CPUs; load average at the start of each step in the notes: other "
           "agents' jobs share the machine).", "",
           "| what | measured | budget | notes |", "|---|---|---|---|"]
    out += [f"| {w} | {m} | {b} | {n} |" for w, m, b, n in rows]
    Path(a.out).write_text("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
