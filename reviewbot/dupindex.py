"""A MOSS-style index of a kernel tree's C functions, for finding duplicates.

Each function body is reduced to normalised tokens (identifiers -> one
token, literals -> one token; keywords, operators, the names of called
functions and of struct fields kept), hashed as k-grams, and winnowed
(Schleimer, Wilkerson, Aiken, SIGMOD 2003): any run of at least K+W-1
common tokens between two functions gives a common fingerprint.

The index is built from the git objects of one commit (`git ls-tree -r`
and `git cat-file --batch`, in worker processes), never from a checkout,
and is stored under ``$XDG_CACHE_HOME/reviewbot/index/<tree id>/``
(``~/.cache/...`` by default) as a few numpy arrays: fingerprints sorted by
hash (memory-mapped when queried), one row per function, and the paths with
their blob ids.  When HEAD moves, the index of the new tree is a *delta* on
a full one: only the blobs `git diff-tree` reports as changed since the full
index's commit are parsed again; the full index's functions in those paths
are masked.  Nothing is ever written into the repository.

Function boundaries come from kernel style (the body opens with ``{`` and
closes with ``}`` in column 0), which is what makes indexing the whole tree
fast; tree-sitter parses at ~3 MB/s, far too slow for 1.2 GB of C.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = 1
K = 8              # tokens per k-gram
W = 6              # winnowing window: common runs of >= K+W-1 tokens are found
MIN_TOKENS = 30    # shorter functions are not indexed
MAX_BLOB = 4 * 1024 * 1024
MAX_POSTINGS = 300  # fingerprints shared by more functions are boilerplate
SUFFIXES = (".c", ".h")
CHUNK = 300         # files per worker task

# -- tokens -------------------------------------------------------------------

_STRIP = re.compile(
    r"/\*.*?\*/|//[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|^[ \t]*#(?:[^\n\\]|\\.|\\\n)*",
    re.S | re.M)
_TOK = re.compile(
    r"(?:->|\.)[ \t]*[A-Za-z_]\w*"       # struct field, kept by name
    r"|[A-Za-z_]\w*(?:[ \t]*\()?"         # identifier, or a call "name("
    r"|\d[\w.]*"                          # number
    r"|<<=|>>=|\.\.\.|->|\+\+|--|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^]="
    r"|\S")
KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while bool true false NULL".split())
ID, LIT = "$", "#"


def _strip_repl(m: re.Match) -> str:
    s = m.group()
    c = s[0]
    if c == '"':
        return '""'
    if c == "'":
        return "0"
    return "\n" * s.count("\n")


def strip(text: str) -> str:
    """Comments, preprocessor lines out (newlines kept); strings and chars
    reduced to a literal."""
    return _STRIP.sub(_strip_repl, text)


def canonical(tok: str) -> str:
    """The normalised form of one raw token."""
    c = tok[0]
    if c.isalpha() or c == "_":
        if tok[-1] == "(":
            return tok[:-1].rstrip() + "("
        return tok if tok in KEYWORDS else ID
    if c.isdigit():
        return LIT
    if (c == "." or c == "-") and len(tok) > 2 and (tok[-1].isalnum() or tok[-1] == "_") and tok != "...":
        return ("->" if c == "-" else ".") + tok.lstrip("-.> \t")
    if tok == '""':
        return LIT
    return tok


class _Coder:
    """Raw token -> 32-bit code, memoised (codes are crc32 of the canonical
    form, so every process agrees)."""

    def __init__(self):
        self.memo: dict[str, int] = {}

    def code(self, tok: str) -> int:
        v = zlib.crc32(canonical(tok).encode())
        if len(self.memo) > 400_000:
            self.memo.clear()
        self.memo[tok] = v
        return v

    def codes(self, toks: list[str]) -> np.ndarray:
        get, code = self.memo.get, self.code
        return np.array([get(t) or code(t) for t in toks], dtype=np.uint32)


_CODER = _Coder()


def code_tokens(text: str) -> np.ndarray:
    """Codes of the tokens of TEXT (already stripped or not)."""
    return _CODER.codes(_TOK.findall(strip(text)))


def tokens_with_lines(text: str, first_line: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Codes and 1-based line numbers of the tokens of TEXT (for locating
    matches in small texts)."""
    s = strip(text)
    toks, lines = [], []
    line, pos = first_line, 0
    for m in _TOK.finditer(s):
        line += s.count("\n", pos, m.start())
        pos = m.start()
        toks.append(m.group())
        lines.append(line)
    return _CODER.codes(toks), np.array(lines, dtype=np.int64)


# -- fingerprints ---------------------------------------------------------------

_B = np.uint64(0x9E3779B97F4A7C15)
_POW = np.array([pow(0x9E3779B97F4A7C15, K - 1 - j, 1 << 64) for j in range(K)], dtype=np.uint64)


def kgram_hashes(codes: np.ndarray) -> np.ndarray:
    """32-bit hash of every k-gram of CODES (len(codes)-K+1 values)."""
    n = len(codes) - K + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint32)
    c = codes.astype(np.uint64)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(K):
            h += c[j:j + n] * _POW[j]
        h ^= h >> np.uint64(29)
        h *= _B
    return (h >> np.uint64(32)).astype(np.uint32)


def winnow(h: np.ndarray) -> np.ndarray:
    """Positions of the winnowed fingerprints of the hash sequence H."""
    if len(h) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(h) <= W:
        return np.array([int(np.argmin(h))])
    view = np.lib.stride_tricks.sliding_window_view(h, W)
    return np.unique(np.argmin(view, axis=1) + np.arange(len(h) - W + 1))


def fingerprints(codes: np.ndarray) -> np.ndarray:
    """The set of fingerprints (sorted unique uint32) of one token sequence."""
    h = kgram_hashes(codes)
    return np.unique(h[winnow(h)])


# -- functions in a file ----------------------------------------------------------

_BRACE = re.compile(r"^[{}]", re.M)
_NAME = re.compile(r"([A-Za-z_]\w*)\s*\(")
_NOT_NAMES = frozenset(("__attribute__", "__printf", "__aligned", "__section", "__acquires",
                        "__releases", "__must_hold", "__scanf", "__malloc", "__alloc_size",
                        "__diag_push", "__diag_ignore", "__no_sanitize_address", "__packed"))


@dataclass(frozen=True)
class Span:
    name: str
    start: int        # 1-based line of the header's first line
    end: int          # 1-based line of the closing brace
    body_off: int     # offset of the opening brace
    end_off: int      # offset just past the closing brace


def split_functions(text: str) -> list[Span]:
    """Function definitions in kernel style: body braces in column 0."""
    out = []
    line, pos = 1, 0
    open_off = open_line = None
    prev_end = 0
    for m in _BRACE.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        if m.group() == "{":
            open_off, open_line = m.start(), line
            continue
        if open_off is None:
            prev_end = m.end()
            continue
        span = _header(text, max(prev_end, open_off - 800), open_off, open_line)
        if span is not None:
            name, start = span
            out.append(Span(name, start, line, open_off, m.end()))
        open_off = None
        prev_end = m.end()
    return out


def _header(text: str, lo: int, open_off: int, open_line: int):
    head = text[lo:open_off]
    cut = max(head.rfind(";"), head.rfind("}"), head.rfind("*/"), head.rfind("\n\n"),
              head.rfind("\n#"))
    if cut >= 0:
        nl = head.find("\n", cut)
        head = head[nl + 1:] if nl >= 0 else ""
    h = head.strip()
    if not h.endswith(")") or "=" in h.split("(", 1)[0]:
        return None
    for m in _NAME.finditer(h):
        if m.group(1) not in _NOT_NAMES and m.group(1) not in KEYWORDS:
            start = open_line - head.rstrip("\n").count("\n") - 1
            lead = len(head) - len(head.lstrip())
            start += head[:lead].count("\n")
            return m.group(1), max(start, 1)
    return None


@dataclass(frozen=True)
class FuncPrint:
    name: str
    start: int
    end: int
    ntok: int
    fps: np.ndarray


def file_functions(text: str, min_tokens: int = MIN_TOKENS) -> list[FuncPrint]:
    """Every indexable function of one file, with its fingerprints."""
    out = []
    for sp in split_functions(text):
        codes = code_tokens(text[sp.body_off:sp.end_off])
        if len(codes) < min_tokens:
            continue
        out.append(FuncPrint(sp.name, sp.start, sp.end, len(codes), fingerprints(codes)))
    return out


# -- git plumbing (read-only) ----------------------------------------------------------

def git_env(repo: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_DIR=_git_dir(repo), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


def _git_dir(repo: str) -> str:
    p = Path(repo)
    if (p / ".git").exists():
        out = subprocess.run(["git", "-C", str(p), "rev-parse", "--git-common-dir"],
                             capture_output=True, text=True)
        d = out.stdout.strip()
        return str((p / d).resolve()) if d else str(p / ".git")
    return str(p)


def _git(repo_env: dict, *args: str) -> bytes:
    proc = subprocess.run(["git", *args], env=repo_env, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]}: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc.stdout


def _indexable(path: str) -> bool:
    return path.endswith(SUFFIXES)


def ls_tree(env: dict, commit: str) -> list[tuple[str, str]]:
    """(blob, path) of the C files of COMMIT, sorted by path."""
    out = _git(env, "ls-tree", "-r", "-z", "--full-tree", commit)
    res = []
    for rec in out.split(b"\0"):
        if not rec:
            continue
        meta, _, path = rec.partition(b"\t")
        mode, typ, sha = meta.split()
        p = path.decode(errors="replace")
        if typ == b"blob" and mode != b"120000" and _indexable(p):
            res.append((sha.decode(), p))
    res.sort(key=lambda e: e[1])
    return res


class BlobReader:
    """A `git cat-file --batch` of one repository."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen(["git", "cat-file", "--batch"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def read_many(self, names: list[str]):
        """Yield (name, bytes or None) for each object name (batched)."""
        for i in range(0, len(names), 500):
            part = names[i:i + 500]
            self.proc.stdin.write("".join(n + "\n" for n in part).encode())
            self.proc.stdin.flush()
            for n in part:
                header = self.proc.stdout.readline().split()
                if len(header) != 3:
                    yield n, None
                    continue
                data = self.proc.stdout.read(int(header[2]) + 1)[:-1]
                yield n, data if header[1] == b"blob" else None

    def read(self, name: str) -> bytes | None:
        return next(self.read_many([name]))[1]

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()


# -- building ---------------------------------------------------------------------------

_WORKER_READER: BlobReader | None = None


def _worker_init(env: dict) -> None:
    global _WORKER_READER
    _WORKER_READER = BlobReader(env)


def _index_chunk(entries: list[tuple[int, str, str]]):
    """Worker: (path index, blob, path) -> function rows and fingerprint keys
    (local function numbers)."""
    rows, names, keys = [], [], []
    blobs = [b for _, b, _ in entries]
    for (pidx, _, _), (_, data) in zip(entries, _WORKER_READER.read_many(blobs)):
        if not data or len(data) > MAX_BLOB or b"\n{" not in data:
            continue
        text = data.decode("utf-8", errors="replace")
        for f in file_functions(text):
            local = len(rows)
            rows.append((pidx, f.start, f.end, f.ntok, len(f.fps)))
            names.append(f.name)
            keys.append((f.fps.astype(np.uint64) << np.uint64(32)) | np.uint64(local))
    keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    return np.array(rows, dtype=np.uint32).reshape(-1, 5), names, keys


def _index_entries(env: dict, entries: list[tuple[int, str, str]], procs: int):
    """Index (path index, blob, path) entries; returns (rows, names, sorted keys)."""
    chunks = [entries[i:i + CHUNK] for i in range(0, len(entries), CHUNK)]
    all_rows, all_names, all_keys = [], [], []
    nfun = 0

    def collect(result):
        nonlocal nfun
        rows, names, keys = result
        if len(rows):
            keys = keys + np.uint64(nfun)   # local -> global function ids (low 32 bits)
            all_rows.append(rows)
            all_names.extend(names)
            all_keys.append(keys)
            nfun += len(rows)

    if procs > 1 and len(chunks) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(procs, initializer=_worker_init, initargs=(env,)) as pool:
            for res in pool.imap(_index_chunk, chunks):
                collect(res)
    else:
        _worker_init(env)
        try:
            for ch in chunks:
                collect(_index_chunk(ch))
        finally:
            _WORKER_READER.close()
    rows = np.concatenate(all_rows) if all_rows else np.zeros((0, 5), dtype=np.uint32)
    keys = np.concatenate(all_keys) if all_keys else np.zeros(0, dtype=np.uint64)
    del all_keys
    keys.sort()
    return rows, all_names, keys


def default_cache_dir() -> Path:
    env = os.environ.get("REVIEWBOT_INDEX_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reviewbot" / "index"


def _write(dirpath: Path, meta: dict, paths: list[tuple[str, str]], rows, names, keys,
           dead: np.ndarray | None = None) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dirpath.parent, prefix=f".{dirpath.name}-"))
    try:
        np.save(tmp / "fp_hash.npy", (keys >> np.uint64(32)).astype(np.uint32))
        np.save(tmp / "fp_fid.npy", (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        np.save(tmp / "funcs.npy", rows)
        if dead is not None:
            np.save(tmp / "dead.npy", dead)
        (tmp / "names.txt").write_text("\n".join(names) + "\n")
        (tmp / "paths.txt").write_text("".join(f"{b} {p}\n" for b, p in paths))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if dirpath.exists():
            shutil.rmtree(dirpath)
        os.replace(tmp, dirpath)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- the index ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Func:
    fid: int
    path: str
    name: str
    start: int
    end: int
    ntok: int
    nfp: int
    blob: str


class _Segment:
    """One stored fingerprint table (a full index, or a delta)."""

    def __init__(self, d: Path):
        self.dir = d
        self.meta = json.loads((d / "meta.json").read_text())
        self.hash = np.load(d / "fp_hash.npy", mmap_mode="r")
        self.fid = np.load(d / "fp_fid.npy", mmap_mode="r")
        self.funcs = np.load(d / "funcs.npy")
        self.paths = [ln.split(" ", 1) for ln in (d / "paths.txt").read_text().splitlines()]
        self.dead = np.load(d / "dead.npy") if (d / "dead.npy").exists() else np.zeros(0, np.uint32)
        self._names = None

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._names = (self.dir / "names.txt").read_text().split("\n")
        return self._names

    def lookup(self, fps: np.ndarray, max_postings: int) -> np.ndarray:
        """Function ids (with repeats, one per shared fingerprint)."""
        if len(self.hash) == 0 or len(fps) == 0:
            return np.zeros(0, dtype=np.uint32)
        lo = np.searchsorted(self.hash, fps, "left")
        hi = np.searchsorted(self.hash, fps, "right")
        n = hi - lo
        keep = (n > 0) & (n <= max_postings)
        lo, n = lo[keep], n[keep]
        if not len(lo):
            return np.zeros(0, dtype=np.uint32)
        idx = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
        return np.asarray(self.fid[idx])


class DupIndex:
    """The function index of one tree: a full segment, plus a delta segment
    when it was updated incrementally."""

    def __init__(self, repo: str, base: _Segment, delta: _Segment | None = None):
        self.repo = repo
        self.env = git_env(repo)
        self.base = base
        self.delta = delta
        self.meta = (delta or base).meta
        self._reader: BlobReader | None = None
        self._dead = set(int(x) for x in delta.dead) if delta is not None else set()

    # -- opening / building
    @classmethod
    def open(cls, repo: str, commit: str = "HEAD", cache_dir: str | Path | None = None,
             build: bool = True, procs: int = 2, max_delta: int = 5000) -> "DupIndex | None":
        """The index of COMMIT's tree: loaded from the cache, else made as a
        delta on a cached full index (<= MAX_DELTA changed files), else
        built from scratch when BUILD (None otherwise)."""
        env = git_env(repo)
        commit = _git(env, "rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
        tree = _git(env, "rev-parse", f"{commit}^{{tree}}").decode().strip()
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        here = cache / tree
        if (here / "meta.json").exists():
            seg = _Segment(here)
            if seg.meta.get("version") == VERSION:
                if seg.meta.get("parent"):
                    base = cache / seg.meta["parent"]
                    if (base / "meta.json").exists():
                        return cls(repo, _Segment(base), seg)
                else:
                    return cls(repo, seg)
        found = _best_base(env, cache, commit, max_delta)
        if found is not None:
            base_dir, changes = found
            return cls._build_delta(repo, env, cache, commit, tree, _Segment(base_dir), changes, procs)
        if not build:
            return None
        return cls.build(repo, commit, cache, procs)

    @classmethod
    def build(cls, repo: str, commit: str, cache_dir: str | Path | None = None, procs: int = 2) -> "DupIndex":
        env = git_env(repo)
        commit = _git(env, "rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
        tree = _git(env, "rev-parse", f"{commit}^{{tree}}").decode().strip()
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        paths = ls_tree(env, commit)
        entries = [(i, b, p) for i, (b, p) in enumerate(paths)]
        rows, names, keys = _index_entries(env, entries, procs)
        meta = {"version": VERSION, "k": K, "w": W, "tree": tree, "commit": commit, "parent": None,
                "nfuncs": len(rows), "fid_base": 0}
        _write(cache / tree, meta, paths, rows, names, keys)
        return cls(repo, _Segment(cache / tree))

    @classmethod
    def _build_delta(cls, repo, env, cache: Path, commit: str, tree: str, base: _Segment,
                     changes: list[tuple[str, str]], procs: int) -> "DupIndex":
        """CHANGES: (new blob or None, path) since the full index's commit."""
        pos = {p: i for i, (_, p) in enumerate(base.paths)}
        starts = np.searchsorted(base.funcs[:, 0], np.arange(len(base.paths) + 1), "left")
        dead = []
        for _, p in changes:
            i = pos.get(p)
            if i is not None:
                dead.extend(range(int(starts[i]), int(starts[i + 1])))
        new = [(b, p) for b, p in changes if b is not None and _indexable(p)]
        entries = [(i, b, p) for i, (b, p) in enumerate(new)]
        rows, names, keys = _index_entries(env, entries, procs if len(entries) > 4 * CHUNK else 1)
        fid_base = len(base.funcs)
        keys = keys + np.uint64(fid_base)
        meta = {"version": VERSION, "k": K, "w": W, "tree": tree, "commit": commit,
                "parent": base.meta["tree"], "nfuncs": len(rows), "fid_base": fid_base,
                "changed": len(changes)}
        _write(cache / tree, meta, new, rows, names, keys, np.array(sorted(dead), dtype=np.uint32))
        return cls(repo, base, _Segment(cache / tree))

    # -- querying
    def query(self, fps: np.ndarray, min_shared: int = 1, max_postings: int = MAX_POSTINGS
              ) -> list[tuple[Func, int]]:
        """Functions sharing at least MIN_SHARED fingerprints with FPS,
        most shared first."""
        fps = np.unique(np.asarray(fps, dtype=np.uint32))
        hits = [self.base.lookup(fps, max_postings)]
        if self.delta is not None:
            hits.append(self.delta.lookup(fps, max_postings))
        allh = np.concatenate(hits)
        if not len(allh):
            return []
        ids, counts = np.unique(allh, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        out = []
        for i in order:
            if counts[i] < min_shared:
                break
            fid = int(ids[i])
            if fid in self._dead:
                continue
            out.append((self.func(fid), int(counts[i])))
        return out

    def func(self, fid: int) -> Func:
        seg = self.base
        local = fid
        if self.delta is not None and fid >= self.delta.meta["fid_base"]:
            seg, local = self.delta, fid - self.delta.meta["fid_base"]
        pidx, start, end, ntok, nfp = (int(x) for x in seg.funcs[local])
        blob, path = seg.paths[pidx]
        return Func(fid, path, seg.names[local], start, end, ntok, nfp, blob)

    def __len__(self) -> int:
        n = len(self.base.funcs) - len(self._dead)
        return n + (len(self.delta.funcs) if self.delta is not None else 0)

    def read_blob(self, blob: str) -> str | None:
        if self._reader is None:
            self._reader = BlobReader(self.env)
        data = self._reader.read(blob)
        return None if data is None else data.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def commit(self) -> str:
        return self.meta["commit"]


def _best_base(env: dict, cache: Path, commit: str, max_delta: int):
    """A cached full index whose commit is in this repo and closest to
    COMMIT: (its dir, [(new blob or None, path)])."""
    best = None
    metas = []
    for d in cache.iterdir() if cache.exists() else []:
        try:
            m = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if m.get("version") == VERSION and not m.get("parent"):
            metas.append((d.stat().st_mtime, d, m))
    for _, d, m in sorted(metas, key=lambda t: t[0], reverse=True)[:5]:
        proc = subprocess.run(["git", "diff-tree", "-r", "-z", "--no-renames", m["commit"], commit],
                              env=env, capture_output=True)
        if proc.returncode != 0:
            continue
        changes = _parse_diff_tree(proc.stdout)
        if len(changes) <= max_delta and (best is None or len(changes) < len(best[1])):
            best = (d, changes)
    return best


def _parse_diff_tree(out: bytes) -> list[tuple[str | None, str]]:
    parts = out.split(b"\0")
    res = []
    i = 0
    while i + 1 < len(parts):
        meta = parts[i].decode()
        path = parts[i + 1].decode(errors="replace")
        i += 2
        if not meta.startswith(":"):
            continue
        f = meta[1:].split()
        new_mode, new_sha, status = f[1], f[3], f[4]
        if new_mode == "120000":
            continue
        res.append((None if status.startswith("D") else new_sha, path))
    return res
