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
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path

from reviewbot.analysis import facts as F
from reviewbot.analysis import kbseeds as S
from reviewbot.tree import dupindex as dx

VERSION = 4
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
CREATE INDEX edges_a ON edges(a, b);
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
    return dx.commit_and_tree(env, commit)


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
        from reviewbot.tree.kbglobal import run_global
        run_global(db, env, paths, blobs, wrappers, procs, progress)
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
    newest cached full base whose facts are of this version."""
    for p in sorted(cache.glob("knowledge-*.sqlite"), key=lambda x: x.stat().st_mtime, reverse=True):
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            m = _meta(conn)
            if m.get("parent") or m.get("facts") != str(F.VERSION):
                conn.close()
                continue
            got = {b: (z, w) for b, z, w in conn.execute("SELECT blob, facts, wrap FROM blobs") if b in wanted}
            conn.close()
            return got
        except sqlite3.Error:
            continue
    return {}


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
    if p.exists() and _current(p, cache):
        return Knowledge.load(p, cache)
    base = _best_base(env, cache, commit, max_delta)
    if base is not None:
        return Knowledge.load(build_delta(env, cache, commit, tree, *base), cache)
    if not build_missing:
        return None
    return Knowledge.load(build(repo, commit, cache, procs, progress), cache)


def _current(p: Path, cache: Path) -> bool:
    """Whether the cached knowledge file P (and the base a delta lays over)
    was written by this version of reviewbot: an older one is built anew."""
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        m = _meta(conn)
        conn.close()
    except sqlite3.Error:
        return False
    if m.get("version") != str(VERSION):
        return False
    if m.get("parent"):
        return _current(cache / m["parent"], cache)
    return m.get("facts") == str(F.VERSION)


def _best_base(env, cache: Path, commit: str, max_delta: int = MAX_DELTA):
    best = None
    for p in sorted(cache.glob("knowledge-*.sqlite"), key=lambda x: x.stat().st_mtime, reverse=True)[:5]:
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            m = _meta(conn)
            conn.close()
        except sqlite3.Error:
            continue
        if m.get("version") != str(VERSION) or m.get("parent") or m.get("facts") != str(F.VERSION):
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
    # one view per series, of the tree as the whole series leaves it: the
    # files' facts are extracted once (not once per patch for each state a
    # file goes through)
    patches = ctx.all_patches or [ctx]
    key = (id(kb), tuple(id(pc) for pc in patches))
    got = _VIEWS.get(key)
    if got is not None and got[0] is patches[0]:
        return got[1]
    texts: dict[str, str] = {}
    for pc in patches:
        for fv in pc.files:
            if fv.diff.is_c and fv.post is not None:
                texts[fv.path] = fv.post
            elif fv.diff.is_c and fv.diff.is_deleted:
                texts[fv.path] = ""
    view = kb.view(texts)
    _VIEWS.clear()          # the last series only (a watcher reviews one after another)
    _VIEWS[key] = (patches[0], view)
    return view


_VIEWS: dict = {}


from reviewbot.tree.kbquery import Knowledge, View  # noqa: E402
