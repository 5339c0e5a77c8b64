"""The tree knowledge base (issue 15): locks, sleeping, contexts, lock order
and release pairs of every function of a kernel tree.

Built at `reviewbot index` time from the git objects of one commit (never a
checkout), in two worker phases: (1) each .c/.h blob's facts
(reviewbot.analysis.facts.extract), keyed by blob id; (2) each file's
functions walked again with the lock wrappers of the whole tree.  The main
process then resolves calls, runs the fixpoints (may-sleep with one witness
chain per function, lock order through callees, contexts, mined release
pairs) and writes one SQLite file per tree object,
``<cache>/knowledge-<tree>.sqlite`` beside the duplicate index.

When HEAD moves, ``open(..., build=True)`` makes a *delta*: a small SQLite
file holding the facts of the blobs that changed since a cached full base,
which queries lay over the base (as they lay the post-images of a series'
files over it at review time): the overlay's functions replace the base's
functions of the same files, and answers about them are worked out at
query time from their facts.

Rules read it through ``PatchContext.knowledge`` (None without an index).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import sqlite3
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

from reviewbot.analysis import facts as F
from reviewbot.analysis import kbseeds as S
from reviewbot.tree import dupindex as dx

VERSION = 1
MAX_BLOB = 3 * 1024 * 1024
CHUNK = 200
MAX_DELTA = 3000          # changed files a delta may hold (`reviewbot index`)
REVIEW_MAX_DELTA = 300    # ... when made during a review (else: no knowledge)
TRANS_DEPTH = 3
TRANS_CAP = 120
ATOMIC = set(S.ATOMIC_KINDS)


# -- worker side ---------------------------------------------------------------------

_READER = None
_WRAP: dict = {}


def _init(env: dict, wrappers: dict | None = None) -> None:
    global _READER, _WRAP
    dx._worker_init(env)
    _READER = dx._WORKER_READER
    if wrappers is not None:
        _WRAP = wrappers


def _worth(path: str, data: bytes) -> bool:
    if len(data) > MAX_BLOB:
        return False
    if path.endswith(".h"):
        return b"\n{" in data or b"lock(" in data or b"DEFINE_" in data
    return True


def extract_bytes(path: str, data: bytes) -> dict:
    if not _worth(path, data):
        return {"v": F.VERSION, "funcs": [], "wrap": {}, "ops": [], "top": [], "dfree": [], "dguard": []}
    return F.extract(data.decode("utf-8", errors="replace"), path)


def _phase1(entries):
    """(blob, path) -> [(blob, compressed facts, local wrappers)]."""
    out = []
    for (blob, path), (_, data) in zip(entries, _READER.read_many([b for b, _ in entries])):
        f = extract_bytes(path, data or b"")
        out.append((blob, zlib.compress(json.dumps(f, separators=(",", ":")).encode(), 1), f["wrap"]))
    return out


_META_KEYS = ("n", "l", "e", "f", "seed", "reg", "asg", "pairs", "fail", "free")


def _phase2(items):
    """[(file no, path, compressed facts)] -> [(file no, the file's facts
    without events, per function walk results)]."""
    out = []
    for i, path, z in items:
        ff = json.loads(zlib.decompress(z))
        walked = walk_file(path, ff, _WRAP)
        ff["funcs"] = [{k: fn.get(k) for k in _META_KEYS} for fn in ff["funcs"]]
        ff.pop("wrap", None)
        out.append((i, ff, walked))
    return out


def walk_file(path: str, ff: dict, wrappers: dict) -> list:
    """Each function of a file walked with WRAPPERS (the tree's) and the
    file's own: [(calls, acquires, order, wrapper ops)]."""
    local = dict(wrappers)
    local.update(ff.get("wrap", {}))
    out = []
    for _ in range(2):
        out = []
        changed = False
        for fn in ff["funcs"]:
            calls, acq, order, exits, unmatched = F.simulate(fn["ev"], local, fn["t"], fn["p"])
            w = F.wrapper_ops(fn["n"], acq, exits, unmatched)
            if w and fn["n"] not in local and fn["n"] not in F.ACQ and fn["n"] not in F.REL:
                local[fn["n"]] = w
                changed = True
            out.append((calls, acq, order, w))
        if not changed:
            break
    return out


# -- building -------------------------------------------------------------------------

def db_path(cache: Path, tree: str) -> Path:
    return cache / f"knowledge-{tree}.sqlite"


SCHEMA = """
CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE files(path TEXT PRIMARY KEY, blob TEXT);
CREATE TABLE blobs(blob TEXT PRIMARY KEY, facts BLOB, wrap TEXT);
CREATE TABLE funcs(id INTEGER PRIMARY KEY, name TEXT, path TEXT, line INT, end INT, flags INT, ncalls INT);
CREATE TABLE calls(caller INT, callee TEXT, line INT, held TEXT);
CREATE TABLE sleep(id INTEGER PRIMARY KEY, chain TEXT);
CREATE TABLE taken(id INT, class TEXT, kind TEXT, line INT, via TEXT);
CREATE TABLE wrappers(name TEXT, ops TEXT);
CREATE TABLE ctx(id INT, ctx TEXT, witness TEXT, src TEXT);
CREATE TABLE edges(a TEXT, b TEXT, witness TEXT, src TEXT, direct INT);
CREATE TABLE pairs(acquire TEXT, release TEXT, support INT, total INT, source TEXT);
CREATE TABLE failrel(acquire TEXT, release TEXT, support INT, total INT);
"""
INDEXES = """
CREATE INDEX funcs_name ON funcs(name);
CREATE INDEX calls_callee ON calls(callee);
CREATE INDEX calls_caller ON calls(caller);
CREATE INDEX taken_id ON taken(id);
CREATE INDEX wrappers_name ON wrappers(name);
CREATE INDEX ctx_id ON ctx(id);
CREATE INDEX edges_a ON edges(a);
CREATE INDEX edges_b ON edges(b);
CREATE INDEX pairs_acquire ON pairs(acquire);
CREATE INDEX pairs_release ON pairs(release);
CREATE INDEX failrel_acquire ON failrel(acquire);
"""


def _pool(procs: int, env: dict, wrappers=None):
    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(procs, initializer=_init, initargs=(env, wrappers))


def _run(procs, env, fn, tasks, wrappers=None):
    if procs > 1 and len(tasks) > 1:
        with _pool(procs, env, wrappers) as pool:
            yield from pool.imap(fn, tasks)
    else:
        _init(env, wrappers)
        try:
            for t in tasks:
                yield fn(t)
        finally:
            dx._WORKER_READER.close()


def _rev(env, commit):
    commit = dx._git(env, "rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
    tree = dx._git(env, "rev-parse", f"{commit}^{{tree}}").decode().strip()
    return commit, tree


def build(repo: str, commit: str = "HEAD", cache_dir=None, procs: int = 2, progress=None) -> Path:
    """Build the full knowledge base of COMMIT; returns its file."""
    env = dx.git_env(repo)
    commit, tree = _rev(env, commit)
    cache = Path(cache_dir) if cache_dir else dx.default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    paths = dx.ls_tree(env, commit)
    t0 = time.perf_counter()
    # phase 1: facts per blob (each distinct blob once)
    todo, seen = [], set()
    for b, p in paths:
        if b not in seen:
            seen.add(b)
            todo.append((b, p))
    blobs: dict[str, bytes] = {}
    wraps: dict[str, str] = {}
    wrappers: dict = {}
    # facts are keyed by blob: those of an earlier full base are reused
    reused = _reuse_blobs(cache, {b for b, _ in todo})
    for blob, (z, w) in reused.items():
        blobs[blob] = z
        wraps[blob] = w
        for k, v in json.loads(w).items():
            wrappers.setdefault(k, v)
    todo = [(b, p) for b, p in todo if b not in reused]
    chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
    for res in _run(procs, env, _phase1, chunks):
        for blob, z, w in res:
            blobs[blob] = z
            wraps[blob] = json.dumps(w)
            for k, v in w.items():
                wrappers.setdefault(k, v)
    if progress:
        progress(f"facts extracted in {time.perf_counter() - t0:.0f} s ({len(todo)} blobs; "
                 f"{len(reused)} reused from a cached base)")
    tmp = Path(tempfile.mkstemp(dir=cache, prefix=".knowledge-", suffix=".tmp")[1])
    try:
        db = sqlite3.connect(tmp)
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        db.executemany("INSERT INTO files VALUES (?,?)", [(p, b) for b, p in paths])
        db.executemany("INSERT INTO blobs VALUES (?,?,?)", ((b, z, wraps[b]) for b, z in blobs.items()))
        _global(db, env, paths, blobs, wrappers, procs, progress)
        meta = {"version": VERSION, "facts": F.VERSION, "tree": tree, "commit": commit, "parent": "",
                "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        db.executemany("INSERT INTO meta VALUES (?,?)", [(k, str(v)) for k, v in meta.items()])
        db.executescript(INDEXES)
        db.commit()
        db.close()
        out = db_path(cache, tree)
        os.replace(tmp, out)
        return out
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reuse_blobs(cache: Path, wanted: set) -> dict:
    """{blob: (compressed facts, wrappers json)} of WANTED blobs found in the
    newest cached full base of this version."""
    for p in sorted(cache.glob("knowledge-*.sqlite"), key=lambda x: x.stat().st_mtime, reverse=True):
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            m = _meta(conn)
            if m.get("version") != str(VERSION) or m.get("parent") or m.get("facts") != str(F.VERSION):
                conn.close()
                continue
            got = {b: (z, w) for b, z, w in conn.execute("SELECT blob, facts, wrap FROM blobs") if b in wanted}
            conn.close()
            return got
        except sqlite3.Error:
            continue
    return {}


def _global(db, env, paths, blobs, wrappers, procs, progress=None):
    """Phase 2 and the fixpoints, written into DB."""
    t0 = time.perf_counter()
    files = [(i, p, blobs[b]) for i, (b, p) in enumerate(paths) if b in blobs]
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    wrappers = {k: v for k, v in wrappers.items() if k not in F.ACQ and k not in F.REL}
    fid = 0
    funcs = []            # (name, path, line, end, flags, ncalls)
    by_file: dict[int, list] = {}
    seeds: dict[int, tuple] = {}
    regs = []             # (ctx, callback, via, line, registering fid, path)
    ops = []              # (struct, var, path, line, members)
    mined_asg = defaultdict(int)
    mined_pair = defaultdict(int)
    fail_total = defaultdict(int)
    fail_rel = defaultdict(int)
    frees = defaultdict(int)
    dfree = []
    dguard = []
    held_calls = []       # (fid, callee, line, held)
    callees_of: list = []  # fid -> {callee: line}
    acquires: dict[int, list] = {}
    direct_edges = {}
    new_wrappers = {}
    call_rows = []
    for res in _run(procs, env, _phase2, chunks, wrappers):
        for i, ff, walked in res:
            path = paths[i][1]
            for fn, (calls, acq, order, w) in zip(ff["funcs"], walked):
                me = fid
                fid += 1
                funcs.append((me, fn["n"], path, fn["l"], fn["e"], fn["f"], len(calls)))
                cl = {}
                for callee, line, held in calls:
                    cl.setdefault(callee, line)
                    if held:
                        held_calls.append((me, callee, line, held))
                        call_rows.append((me, callee, line, json.dumps(held, separators=(",", ":"))))
                    else:
                        call_rows.append((me, callee, line, None))
                callees_of.append(cl)
                if acq:
                    acquires[me] = acq
                for a, b, line, via in order:
                    direct_edges.setdefault((a, b), (me, line, via, path))
                if w and fn["n"] not in wrappers:
                    new_wrappers.setdefault(fn["n"], w)
                if fn["seed"]:
                    seeds[me] = tuple(fn["seed"][0])
                for r in fn["reg"]:
                    regs.append((r[0], r[1], r[2], r[3], me, path))
                for x in fn.get("asg") or ():
                    mined_asg[x] += 1
                for x, y in fn.get("pairs") or ():
                    mined_pair[(x, y)] += 1
                seen_fail = set()
                for x, rel in fn.get("fail") or ():
                    if x in seen_fail:
                        continue
                    seen_fail.add(x)
                    fail_total[x] += 1
                    for y in rel:
                        fail_rel[(x, y)] += 1
                for x, y in fn.get("free") or ():
                    frees[(x, y)] += 1
            for r in ff.get("top", ()):
                regs.append((r[0], r[1], r[2], r[3], -1, path))
            for st, var, line, members in ff.get("ops", ()):
                ops.append((st, var, path, line, members))
            dfree.extend(ff.get("dfree", ()))
            dguard.extend(ff.get("dguard", ()))
            if len(call_rows) > 200000:
                db.executemany("INSERT INTO calls VALUES (?,?,?,?)", call_rows)
                call_rows = []
    db.executemany("INSERT INTO calls VALUES (?,?,?,?)", call_rows)
    call_rows = None
    db.executemany("INSERT INTO funcs VALUES (?,?,?,?,?,?,?)", funcs)
    allw = dict(wrappers)
    allw.update(new_wrappers)
    db.executemany("INSERT INTO wrappers VALUES (?,?)", [(k, json.dumps(v)) for k, v in allw.items()])
    if progress:
        progress(f"functions walked in {time.perf_counter() - t0:.0f} s ({len(funcs)} functions)")
    res = Resolver([(f[0], f[1], f[2], f[5], f[6]) for f in funcs])
    name_of = [f[1] for f in funcs]
    path_of = [f[2] for f in funcs]
    line_of = [f[3] for f in funcs]
    # taken (direct, and through wrappers)
    db.executemany("INSERT INTO taken VALUES (?,?,?,?,?)",
                   [(me, c, k, ln, via) for me, acq in acquires.items() for c, k, ln, via in acq if c])
    # -- may-sleep: backward search from the seeds
    callers = defaultdict(list)
    for me, cl in enumerate(callees_of):
        p = path_of[me]
        for callee, line in cl.items():
            t = res.resolve(callee, p)
            if t is not None and t != me:
                callers[t].append((me, line))
    parent: dict[int, tuple] = {}
    frontier = list(seeds)
    for s in frontier:
        parent[s] = None
    while frontier:
        nxt = []
        for t in frontier:
            for c, line in callers.get(t, ()):
                if c not in parent:
                    parent[c] = (t, line)
                    nxt.append(c)
        frontier = nxt

    def chain(me):
        out = []
        cur = me
        for _ in range(30):
            step = parent.get(cur)
            if step is None:
                sd = seeds[cur]
                out.append(f"{name_of[cur]} ({path_of[cur]}:{line_of[cur]}) calls {sd[0]}() at line {sd[1]}"
                           f" ({sd[2]})")
                break
            t, line = step
            out.append(f"{name_of[cur]} ({path_of[cur]}:{line_of[cur]}) calls {name_of[t]}() at line {line}")
            cur = t
        return json.dumps(out)

    db.executemany("INSERT INTO sleep VALUES (?,?)", ((me, chain(me)) for me in parent))
    if progress:
        progress(f"may-sleep: {len(parent)} functions")
    # -- lock order through callees
    memo: dict[int, dict] = {}

    def trans(me, depth):
        got = memo.get(me)
        if got is not None:
            return got
        memo[me] = {}
        out = {}
        for c, k, ln, via in acquires.get(me, ()):
            if c and k not in ("rcu", "irq", "bh", "preempt") and not c.startswith("@"):
                out.setdefault(c, [f"{name_of[me]} ({path_of[me]}:{ln}) takes it with {via}()"])
        if depth > 0:
            for callee, line in callees_of[me].items():
                if len(out) >= TRANS_CAP:
                    break
                t = res.resolve(callee, path_of[me])
                if t is None or t == me:
                    continue
                for c, wit in trans(t, depth - 1).items():
                    if c not in out:
                        out[c] = [f"{name_of[me]} ({path_of[me]}:{line}) calls {callee}()"] + wit
        memo[me] = out
        return out

    edges = {}
    for (a, b), (me, line, via, path) in direct_edges.items():
        edges[(a, b)] = (json.dumps([f"{name_of[me]} ({path}:{line}) takes {b} with {via}() while holding {a}"]),
                         path, 1)
    for me, callee, line, held in held_calls:
        t = res.resolve(callee, path_of[me])
        if t is None or t == me:
            continue
        hs = [h[0] for h in held if h[1] not in ("rcu", "irq", "bh", "preempt") and not h[0].startswith("@")]
        if not hs:
            continue
        for c, wit in trans(t, TRANS_DEPTH - 1).items():
            for a in hs:
                if a != c and (a, c) not in edges:
                    edges[(a, c)] = (json.dumps([f"{name_of[me]} ({path_of[me]}:{line}) holds {a} and calls "
                                                 f"{callee}()"] + wit), path_of[me], 0)
    db.executemany("INSERT INTO edges VALUES (?,?,?,?,?)", ((a, b, w, s, d) for (a, b), (w, s, d) in edges.items()))
    if progress:
        progress(f"lock order: {len(edges)} edges")
    # -- contexts
    ctx_rows = []
    for kind, cb, via, line, reg_fid, path in regs:
        t = res.resolve(cb, path)
        if t is None:
            continue
        where = f"{name_of[reg_fid]} ({path}:{line})" if reg_fid >= 0 else f"{path}:{line}"
        what = S.FUNCTION_MEMBER_CONTEXT[1] if via == "hrtimer .function" else S.REG_WHAT.get(kind, kind)
        ctx_rows.append((t, kind, f"{what}: registered with {via}() in {where}", path))
    for st, var, path, line, members in ops:
        for member, value in members:
            for kind, why in S.OPS_CONTEXTS.get((st, member), ()):
                t = res.resolve(value, path)
                if t is not None:
                    ctx_rows.append((t, kind, f".{member} of struct {st} {var} ({path}:{line}): {why}", path))
    # under a lock at every call site (>= 2 callers)
    sites = defaultdict(list)
    for me, callee, line, held in held_calls:
        t = res.resolve(callee, path_of[me])
        if t is not None:
            sites[t].append((me, line, held))
    for t, lst in sites.items():
        ncallers = len(callers.get(t, ()))
        if ncallers < 2:
            continue
        locked_callers = {me for me, _, _ in lst}
        if len(locked_callers) < ncallers:
            continue
        common = None
        for me, line, held in lst:
            cls = {(h[0], h[1]) for h in held}
            common = cls if common is None else common & cls
        me, line, held = lst[0]
        for c, k in sorted(common or ()):
            if c == "rtnl_mutex":
                ctx_rows.append((t, "rtnl", f"every caller ({ncallers}) holds rtnl_lock, e.g. "
                                 f"{name_of[me]} ({path_of[me]}:{line})", path_of[me]))
            elif k in ATOMIC:
                ctx_rows.append((t, "atomic", f"every caller ({ncallers}) holds {c} ({k}), e.g. "
                                 f"{name_of[me]} ({path_of[me]}:{line})", path_of[me]))
            else:
                ctx_rows.append((t, "locked", f"every caller ({ncallers}) holds {c} ({k}), e.g. "
                                 f"{name_of[me]} ({path_of[me]}:{line})", path_of[me]))
    db.executemany("INSERT INTO ctx VALUES (?,?,?,?)", ctx_rows)
    # -- release pairs
    names = set(name_of)
    for cl in callees_of:
        names.update(cl)
    pair_rows = []
    for (x, y), n in mined_pair.items():
        if n >= 2:
            pair_rows.append((x, y, n, mined_asg.get(x, n), "mined"))
    mined = {(r[0], r[1]) for r in pair_rows}
    for x in names:
        for pat, rels in _NAME_PAIRS:
            m = pat.match(x)
            if not m:
                continue
            for tmpl in rels:
                y = tmpl.format(m.group(1))
                if y in names and (x, y) not in mined:
                    pair_rows.append((x, y, mined_pair.get((x, y), 0), mined_asg.get(x, 0), "naming"))
    for name, rel in dfree:
        pair_rows.append((f"__free({name})", rel, 0, 0, "DEFINE_FREE"))
    for name, lock, unlock in dguard:
        pair_rows.append((lock, unlock, 0, 0, "DEFINE_GUARD"))
        pair_rows.append((f"guard({name})", unlock, 0, 0, "DEFINE_GUARD"))
    for (x, y), n in frees.items():
        pair_rows.append((x, f"__free({y})", n, mined_asg.get(x, n), "__free"))
    from reviewbot.analysis.rulekit import RELEASE_PAIRS
    for x, ys in RELEASE_PAIRS.items():
        for y in ys:
            pair_rows.append((x, y, mined_pair.get((x, y), 0), mined_asg.get(x, 0), "rulekit"))
    db.executemany("INSERT INTO pairs VALUES (?,?,?,?,?)", pair_rows)
    db.executemany("INSERT INTO failrel VALUES (?,?,?,?)",
                   [(x, y, n, fail_total[x]) for (x, y), n in fail_rel.items() if n >= 2])
    if progress:
        progress(f"global phase done in {time.perf_counter() - t0:.0f} s")


_NAME_PAIRS = tuple((re.compile(p), r) for p, r in S.NAME_PAIRS)


class Resolver:
    """Which definition a call of NAME from a file reaches: the file's own,
    else the tree's real one (not a stub, .c before .h, most calls)."""

    def __init__(self, rows):
        self.local: dict[tuple, int] = {}
        best: dict[str, tuple] = {}
        for fid, name, path, flags, ncalls in rows:
            self.local.setdefault((path, name), fid)
            if flags & 1 and not path.endswith(".h"):
                continue          # static in a .c file: that file only
            rank = (not (flags & 4), not path.endswith(".h"), ncalls)
            if name not in best or rank > best[name][0]:
                best[name] = (rank, fid)
        self.glob = {n: v[1] for n, v in best.items()}

    def resolve(self, name: str, path: str):
        got = self.local.get((path, name))
        return got if got is not None else self.glob.get(name)


# -- opening, deltas ------------------------------------------------------------------------

def _meta(conn) -> dict:
    return dict(conn.execute("SELECT k, v FROM meta").fetchall())


def open_db(repo: str, commit: str = "HEAD", cache_dir=None, build_missing: bool = False, procs: int = 2,
            progress=None, max_delta: int = MAX_DELTA) -> "Knowledge | None":
    """The knowledge of COMMIT: the cached file of its tree; else a delta
    on the closest cached full base (built now); else a full build when
    BUILD_MISSING; else None."""
    env = dx.git_env(repo)
    commit, tree = _rev(env, commit)
    cache = Path(cache_dir) if cache_dir else dx.default_cache_dir()
    p = db_path(cache, tree)
    if p.exists():
        return Knowledge.load(p, cache)
    base = _best_base(env, cache, commit, max_delta)
    if base is not None:
        return Knowledge.load(build_delta(env, cache, commit, tree, *base), cache)
    if not build_missing:
        return None
    return Knowledge.load(build(repo, commit, cache, procs, progress), cache)


def _best_base(env, cache: Path, commit: str, max_delta: int = MAX_DELTA):
    best = None
    for p in sorted(cache.glob("knowledge-*.sqlite"), key=lambda x: x.stat().st_mtime, reverse=True)[:5]:
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            m = _meta(conn)
            conn.close()
        except sqlite3.Error:
            continue
        if m.get("version") != str(VERSION) or m.get("parent"):
            continue
        import subprocess
        proc = subprocess.run(["git", "diff-tree", "-r", "-z", "--no-renames", m["commit"], commit],
                              env=env, capture_output=True)
        if proc.returncode != 0:
            continue
        changes = [(b, pth) for b, pth in dx._parse_diff_tree(proc.stdout) if dx._indexable(pth)]
        if len(changes) <= max_delta and (best is None or len(changes) < len(best[1])):
            best = (p, changes)
    return best


def build_delta(env, cache: Path, commit: str, tree: str, base: Path, changes) -> Path:
    """A delta knowledge file: the facts of the changed blobs."""
    reader = dx.BlobReader(env)
    rows = []
    try:
        new = [(b, p) for b, p in changes if b is not None]
        for (b, p), (_, data) in zip(new, reader.read_many([b for b, _ in new])):
            f = extract_bytes(p, data or b"")
            rows.append((b, zlib.compress(json.dumps(f, separators=(",", ":")).encode(), 1), json.dumps(f["wrap"])))
    finally:
        reader.close()
    tmp = Path(tempfile.mkstemp(dir=cache, prefix=".knowledge-", suffix=".tmp")[1])
    try:
        db = sqlite3.connect(tmp)
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        db.executemany("INSERT INTO files VALUES (?,?)", [(p, b or "") for b, p in changes])
        db.executemany("INSERT INTO blobs VALUES (?,?,?)", rows)
        meta = {"version": VERSION, "tree": tree, "commit": commit, "parent": base.name}
        db.executemany("INSERT INTO meta VALUES (?,?)", [(k, str(v)) for k, v in meta.items()])
        db.commit()
        db.close()
        out = db_path(cache, tree)
        os.replace(tmp, out)
        return out
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_LOADED: dict = {}


def for_tree(tree: str | None, base: str | None) -> "Knowledge | None":
    """The cached knowledge of BASE in TREE (a delta is made when a full
    base is cached), or None.  REVIEWBOT_KNOWLEDGE=off disables it."""
    if not tree or not base or os.environ.get("REVIEWBOT_KNOWLEDGE") == "off":
        return None
    key = (tree, base, str(dx.default_cache_dir()))
    if key not in _LOADED:
        try:
            _LOADED[key] = open_db(tree, base, max_delta=REVIEW_MAX_DELTA)
        except (RuntimeError, OSError, ValueError, sqlite3.Error):
            _LOADED[key] = None
    return _LOADED[key]


def for_context(ctx) -> "View | None":
    """The knowledge a rule sees for one patch: the base's, with the
    post-images of the files the series touched so far laid over it."""
    kb = for_tree(getattr(ctx, "tree_path", None), getattr(ctx, "base", None))
    if kb is None:
        return None
    texts: dict[str, str] = {}
    for pc in (ctx.all_patches or [ctx]):
        for fv in pc.files:
            if fv.diff.is_c and fv.post is not None:
                texts[fv.path] = fv.post
            elif fv.diff.is_c and fv.diff.is_deleted:
                texts[fv.path] = ""
        if pc is ctx:
            break
    return kb.view(texts)


from reviewbot.tree.kbquery import Knowledge, View  # noqa: E402
