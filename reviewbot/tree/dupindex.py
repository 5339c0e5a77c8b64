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

import atexit
import bisect
import json
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from pathlib import Path

import numpy as np

VERSION = 2
K = 8              # tokens per k-gram
W = 6              # winnowing window: common runs of >= K+W-1 tokens are found
MIN_TOKENS = 30    # shorter functions are not indexed
MAX_BLOB = 4 * 1024 * 1024
MAX_POSTINGS = 300  # fingerprints shared by more functions are boilerplate
SUFFIXES = (".c", ".h")
CHUNK = 300         # files per worker task

# -- tokens -------------------------------------------------------------------

_TOK = re.compile(
    r"[A-Za-z_]\w*+(?:[ \t]*\()?"                 # identifier, or a call "name("
    r"|(?:->|\.)[ \t]*[A-Za-z_]\w*+"               # struct field, kept by name
    r"|[(),;*=&{}\[\]]"
    r"|/\*.*?\*/|//[^\n]*"                         # comments (dropped)
    r"|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"  # literals
    r"|\#[ \t]*(?:if|ifdef|ifndef|else|elif|endif|define|undef|include|error|warning|pragma)\b"
    r"(?:[^\n\\]|\\.|\\\n)*"                       # preprocessor lines (dropped)
    r"|\d[\w.]*"
    r"|<<=|>>=|\.\.\.|->|\+\+|--|<<|>>|<=|>=|!=|\|\||[-+/%|^<>]="
    r"|\S", re.S)
KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while bool true false NULL".split())
ID, LIT = "$", "#"
SKIP = 1            # code of comments and preprocessor lines: dropped
NL = 4              # code of a newline (tokens_with_lines only; no crc code ends in 00)


def canonical(tok: str) -> str | None:
    """The normalised form of one raw token (None: not code)."""
    c = tok[0]
    if c.isalpha() or c == "_":
        if tok[-1] == "(":
            return tok[:-1].rstrip() + "("
        return tok if tok in KEYWORDS else ID
    if c.isdigit() or c == '"' or c == "'":
        return LIT
    if len(tok) > 1:
        if c == "/" and tok[1] in "/*":
            return None
        if c == "#":
            return None
        if c == "." and tok != "...":
            return "." + tok[1:].strip()
        if c == "-" and tok[1] == ">" and len(tok) > 2:
            return "->" + tok[2:].strip()
    return tok


class _Coder:
    """Raw token -> 32-bit code, memoised (codes are crc32 of the canonical
    form, so every process agrees)."""

    def __init__(self):
        self.memo: dict[str, int] = {"\n": NL}

    def code(self, tok: str) -> int:
        c = canonical(tok)
        if c is None:
            v = SKIP
        else:   # low bits: 3 for a call, 2 for anything else
            call = c[-1] == "(" and c[:-1] not in KEYWORDS
            v = (zlib.crc32(c.encode()) & ~3) | (3 if call else 2)
        self.memo[tok] = v
        return v

    def all_codes(self, toks: list[str]) -> np.ndarray:
        """The code of every token (SKIP ones included): new tokens are
        coded first, then one C-level pass maps them all."""
        memo = self.memo
        missing = set(toks).difference(memo)
        if missing:
            if len(memo) + len(missing) > 400_000:
                memo.clear()
                memo["\n"] = NL
                missing = set(toks)
            for t in missing:
                self.code(t)
        return np.fromiter(map(memo.__getitem__, toks), dtype=np.uint32, count=len(toks))

    def codes(self, toks: list[str]) -> np.ndarray:
        arr = self.all_codes(toks)
        return arr[arr != SKIP]


_CODER = _Coder()
_TOK_NL = re.compile(r"\n|" + _TOK.pattern, re.S)
_LIT_CODE = _CODER.code('""')


def code_tokens(text: str) -> np.ndarray:
    """Codes of the tokens of TEXT."""
    return _CODER.codes(_TOK.findall(text))


def tokens_with_lines(text: str, first_line: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Codes and 1-based line numbers of the tokens of TEXT (for locating
    matches in small texts).  Newlines are tokens of their own here, so
    that one findall() (C speed) gives both; a token spanning lines (a
    comment, a continued preprocessor line or literal) adds its own."""
    toks = _TOK_NL.findall(text)
    arr = _CODER.all_codes(toks)
    inc = (arr == NL).astype(np.int64)
    multi = np.flatnonzero((arr == SKIP) | (arr == _LIT_CODE))
    if len(multi):
        inc[multi] += np.fromiter(map(str.count, map(toks.__getitem__, multi.tolist()), repeat("\n")),
                                  dtype=np.int64, count=len(multi))
    lines = np.cumsum(inc)
    lines -= inc                    # newlines before each token's start
    lines += first_line
    keep = (arr != SKIP) & (arr != NL)
    return arr[keep], lines[keep]


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
    pos = np.argmin(view, axis=1) + np.arange(len(h) - W + 1)
    keep = np.empty(len(pos), dtype=bool)   # already sorted: positions never decrease
    keep[0] = True
    np.not_equal(pos[1:], pos[:-1], out=keep[1:])
    return pos[keep]


def fingerprints(codes: np.ndarray) -> np.ndarray:
    """The set of fingerprints (sorted unique uint32) of one token sequence."""
    h = kgram_hashes(codes)
    return _sorted_unique(h[winnow(h)])


def fingerprints_many(seqs: list[np.ndarray]) -> list[np.ndarray]:
    """[fingerprints(c) for c in SEQS], computed together: the same
    k-grams, windows and minima, with the numpy calls made once for all
    (a big patch has hundreds of functions)."""
    lens = np.array([len(c) for c in seqs], dtype=np.int64)
    if not len(seqs) or not lens.sum():
        return [np.zeros(0, dtype=np.uint32) for _ in seqs]
    allc = np.concatenate(seqs)
    starts = np.cumsum(lens) - lens
    # every k-gram of the concatenation, then only those inside one sequence
    hall = kgram_hashes(allc)
    nh = np.maximum(lens - K + 1, 0)            # k-grams per sequence
    hstart = np.cumsum(nh) - nh                 # where each one's run starts in h
    seq_h = np.repeat(np.arange(len(seqs)), nh)
    h = hall[np.arange(len(seq_h)) - hstart[seq_h] + starts[seq_h]]
    # windows of W hashes that lie inside one sequence; a sequence with
    # W hashes or fewer has one window: all of them
    nwin = np.where(nh > W, nh - W + 1, np.minimum(nh, 1))
    out_pos = []
    if len(h) >= W:
        view = np.lib.stride_tricks.sliding_window_view(h, W)
        seq_w = np.repeat(np.arange(len(seqs)), np.where(nh > W, nwin, 0))
        wstart = np.cumsum(np.where(nh > W, nwin, 0)) - np.where(nh > W, nwin, 0)
        first = np.arange(len(seq_w)) - wstart[seq_w] + hstart[seq_w]
        pos = np.argmin(view[first], axis=1) + first
        out_pos.append((seq_w, pos))
    small = np.flatnonzero((nh > 0) & (nh <= W))
    if len(small):
        pos = np.array([int(np.argmin(h[hstart[i]:hstart[i] + nh[i]])) + hstart[i] for i in small.tolist()],
                       dtype=np.int64)
        out_pos.append((small, pos))
    if not out_pos:
        return [np.zeros(0, dtype=np.uint32) for _ in seqs]
    seq = np.concatenate([s for s, _ in out_pos])
    pos = np.concatenate([p for _, p in out_pos])
    keys = _sorted_unique((seq.astype(np.uint64) << np.uint64(32)) | h[pos].astype(np.uint64))
    kseq = (keys >> np.uint64(32)).astype(np.int64)
    vals = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    cut = np.searchsorted(kseq, np.arange(len(seqs) + 1))
    return [vals[cut[i]:cut[i + 1]] for i in range(len(seqs))]


# -- functions in a file ----------------------------------------------------------

_BRACE = re.compile(r"\n[{}]")
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
    text_count = text.count
    line, pos = 1, 0
    open_off = open_line = None
    prev_end = 0
    for m in _BRACE.finditer(text):
        at = m.start() + 1
        line += text_count("\n", pos, at)
        pos = at
        if text[at] == "{":
            open_off, open_line = at, line
            continue
        if open_off is not None:
            span = _header(text, max(prev_end, open_off - 600), open_off, open_line)
            if span is not None:
                out.append(Span(span[0], span[1], line, open_off, at + 1))
            open_off = None
        prev_end = at + 1
    return out


def _header(text: str, lo: int, open_off: int, open_line: int):
    cut = max(text.rfind(";", lo, open_off), text.rfind("}", lo, open_off),
              text.rfind("*/", lo, open_off), text.rfind("\n\n", lo, open_off),
              text.rfind("\n#", lo, open_off))
    if cut >= 0:
        nl = text.find("\n", cut, open_off)
        lo = nl + 1 if nl >= 0 else open_off
    head = text[lo:open_off]
    h = head.strip()
    if not h.endswith(")"):
        return None
    paren = h.find("(")
    if "=" in h[:paren]:
        return None
    for m in _NAME.finditer(h):
        name = m.group(1)
        if name not in _NOT_NAMES and name not in KEYWORDS:
            lead = len(head) - len(head.lstrip())
            start = open_line - head.count("\n") + head[:lead].count("\n")
            return name, max(start, 1)
    return None


# -- git plumbing (read-only) ----------------------------------------------------------

def git_env(repo: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_DIR=_git_dir(repo), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


def _git_dir(repo: str) -> str:
    p = Path(repo)
    if (p / ".git").is_dir():
        return str((p / ".git").resolve())      # a plain checkout: its own .git is the common dir
    if (p / ".git").exists():
        out = subprocess.run(["git", "-C", str(p), "rev-parse", "--git-common-dir"],
                             capture_output=True, text=True)
        d = out.stdout.strip()
        return str((p / d).resolve()) if d else str(p / ".git")
    return str(p)


_HEX40 = re.compile(r"[0-9a-f]{40}")
_COMMIT_TREE: dict[tuple[str, str], tuple[str, str]] = {}


def commit_and_tree(repo_env: dict, commit: str) -> tuple[str, str]:
    """(commit id, tree id) of revision COMMIT, in one git call; a full
    commit id's answer is kept (it cannot change), so the duplicate index
    and the knowledge base of one review share it."""
    key = (repo_env.get("GIT_DIR", ""), commit)
    got = _COMMIT_TREE.get(key)
    if got is None:
        if commit.startswith("-"):
            raise RuntimeError(f"git rev-parse: {commit!r} is not a revision")
        out = _git(repo_env, "rev-parse", f"{commit}^{{commit}}", f"{commit}^{{tree}}").decode().split()
        if len(out) != 2:
            raise RuntimeError(f"git rev-parse: {commit}: unexpected answer")
        got = (out[0], out[1])
        if _HEX40.fullmatch(commit):
            _COMMIT_TREE[key] = got
    return got


def _git(repo_env: dict, *args: str) -> bytes:
    proc = subprocess.run(["git", *args], env=repo_env, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {args[0]}: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return proc.stdout


def _indexable(path: str) -> bool:
    return path.endswith(SUFFIXES)


def _ls_tree_blobs(out: bytes):
    """(mode, sha, name) of the blob records of `git ls-tree -z` output."""
    for rec in out.split(b"\0"):
        if not rec:
            continue
        meta, _, name = rec.partition(b"\t")
        mode, typ, sha = meta.split()
        if typ == b"blob":
            yield mode, sha.decode(), name.decode(errors="replace")


def ls_tree(env: dict, commit: str) -> list[tuple[str, str]]:
    """(blob, path) of the C files of COMMIT, sorted by path."""
    out = _git(env, "ls-tree", "-r", "-z", "--full-tree", commit)
    res = [(sha, p) for mode, sha, p in _ls_tree_blobs(out) if mode != b"120000" and _indexable(p)]
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
    if multiprocessing.current_process().name != "MainProcess":
        # A pool worker: the parent handles ^C and stops the pool with
        # SIGTERM, which must end the worker quietly (the handler
        # inherited from the CLI would raise and print a traceback).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_READER = BlobReader(env)


def _index_chunk(entries: list[tuple[int, str, str]]):
    """Worker: (path index, blob, path) -> function rows, names and
    fingerprint keys (hash << 32 | local function number)."""
    rows, names, codes = [], [], []
    blobs = [b for _, b, _ in entries]
    for (pidx, _, _), (_, data) in zip(entries, _WORKER_READER.read_many(blobs)):
        if not data or len(data) > MAX_BLOB or b"\n{" not in data:
            continue
        text = data.decode("utf-8", errors="replace")
        for sp in split_functions(text):
            c = code_tokens(text[sp.body_off:sp.end_off])
            if len(c) < MIN_TOKENS:
                continue
            rows.append((pidx, sp.start, sp.end, len(c), 0))
            names.append(sp.name)
            codes.append(c)
    if not rows:
        return np.zeros((0, 5), dtype=np.uint32), [], np.zeros(0, dtype=np.uint64)
    keys = batch_fingerprints(codes)
    rows = np.array(rows, dtype=np.uint32)
    rows[:, 4] = np.bincount((keys & np.uint64(0xFFFFFFFF)).astype(np.int64), minlength=len(rows))
    return rows, names, keys


def batch_fingerprints(codes: list[np.ndarray]) -> np.ndarray:
    """Fingerprints of many token sequences at once: unique keys
    (hash << 32 | sequence number)."""
    lens = np.array([len(c) for c in codes], dtype=np.int64)
    ends = np.cumsum(lens)
    allc = np.concatenate(codes)
    h = kgram_hashes(allc)
    # a k-gram is valid when it ends inside the sequence it starts in
    seq = np.repeat(np.arange(len(codes)), lens)[:len(h)]
    valid = np.arange(len(h)) + K <= ends[seq]
    h = np.where(valid, h, np.uint32(0xFFFFFFFF))
    pos = winnow(h)
    pos = pos[valid[pos]]
    keys = (h[pos].astype(np.uint64) << np.uint64(32)) | seq[pos].astype(np.uint64)
    return _sorted_unique(keys)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's hash-based unique is slow on uint64)."""
    a = np.sort(a)
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


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
        ctx = multiprocessing.get_context("spawn")   # index time only; workers start clean
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
    all_keys.clear()     # free the parts before sorting
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
        blob = ("\n".join(names) + "\n").encode("utf-8", errors="replace")
        (tmp / "names.txt").write_bytes(blob)
        np.save(tmp / "names_end.npy", _line_ends(blob))
        blob = "".join(f"{b} {p}\n" for b, p in paths).encode("utf-8", errors="replace")
        (tmp / "paths.txt").write_bytes(blob)
        np.save(tmp / "paths_end.npy", _line_ends(blob))
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


class _Lines:
    """The lines of a text file by number, without splitting all of them
    (a review looks up a few of the tree's 55k paths and 450k names)."""

    def __init__(self, data, ends: np.ndarray | None = None):
        self._data = data           # bytes, or a read-only mmap of the file
        self._ends = ends if ends is not None else _line_ends(data)

    def __len__(self) -> int:
        return len(self._ends) + (1 if len(self._data) and self._data[-1:] != b"\n" else 0)

    def line(self, i: int) -> str:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        lo = int(self._ends[i - 1]) + 1 if i > 0 else 0
        hi = int(self._ends[i]) if i < len(self._ends) else len(self._data)
        return self._data[lo:hi].decode("utf-8", errors="replace")


class _PathTable(_Lines):
    """paths.txt: "blob path" per line."""

    def __getitem__(self, i: int) -> list[str]:
        return self.line(i).split(" ", 1)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class _NameTable(_Lines):
    """names.txt: a function name per line."""

    def __getitem__(self, i: int) -> str:
        return self.line(i)


def _mapped(path: Path):
    """The bytes of PATH, mapped (read-only) rather than read."""
    with open(path, "rb") as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:          # an empty file cannot be mapped
            return f.read()


def _line_ends(data: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10).astype(np.uint64)


_SEGMENTS: dict[tuple, "_Segment"] = {}


def _segment(d: Path) -> "_Segment":
    """_Segment(d), loaded once per process (and again when rebuilt)."""
    key = (str(d), (d / "meta.json").stat().st_mtime_ns)
    seg = _SEGMENTS.get(key)
    if seg is None:
        seg = _SEGMENTS[key] = _Segment(d)
        if len(_SEGMENTS) > 8:
            _SEGMENTS.pop(next(iter(_SEGMENTS)))
    return seg


def _cached_segments(cache: Path, tree: str) -> "tuple[_Segment, _Segment | None] | None":
    """(full segment, delta or None) of the index cached for the git tree
    object TREE, when there is a usable one."""
    here = cache / tree
    if not (here / "meta.json").exists():
        return None
    seg = _segment(here)
    if seg.meta.get("version") != VERSION:
        return None
    if not seg.meta.get("parent"):
        return seg, None
    base = cache / seg.meta["parent"]
    if not (base / "meta.json").exists():
        return None
    return _segment(base), seg


class _Segment:
    """One stored fingerprint table (a full index, or a delta)."""

    def __init__(self, d: Path):
        self.dir = d
        self.meta = json.loads((d / "meta.json").read_text())
        # mapped, not read (hundreds of MB); plain ndarray views index faster
        self.hash = np.load(d / "fp_hash.npy", mmap_mode="r").view(np.ndarray)
        self.fid = np.load(d / "fp_fid.npy", mmap_mode="r").view(np.ndarray)
        self.funcs = np.load(d / "funcs.npy", mmap_mode="r").view(np.ndarray)
        ends = d / "paths_end.npy"
        self.paths = _PathTable(_mapped(d / "paths.txt"),
                                np.load(ends, mmap_mode="r") if ends.exists() else None)
        self.dead = np.load(d / "dead.npy") if (d / "dead.npy").exists() else np.zeros(0, np.uint32)
        self._names = None

    @property
    def names(self) -> "_NameTable":
        if self._names is None:
            ends = self.dir / "names_end.npy"
            self._names = _NameTable(_mapped(self.dir / "names.txt"),
                                     np.load(ends, mmap_mode="r") if ends.exists() else None)
        return self._names

    def lookup_keyed(self, fps: np.ndarray, qof: np.ndarray, max_postings: int) -> np.ndarray:
        """The functions sharing fingerprints with many queries at once:
        FPS holds them all, QOF the query of each fingerprint; gives
        (query << 32 | function id), one per shared fingerprint."""
        if len(self.hash) == 0 or len(fps) == 0:
            return np.zeros(0, dtype=np.uint64)
        order = np.argsort(fps, kind="stable")     # sorted keys: numpy's search goes faster
        fps, qof = fps[order], qof[order]
        lo = np.searchsorted(self.hash, fps, "left")
        hi = np.searchsorted(self.hash, fps, "right")
        n = hi - lo
        keep = (n > 0) & (n <= max_postings)
        lo, n, qof = lo[keep], n[keep], qof[keep]
        if not len(lo):
            return np.zeros(0, dtype=np.uint64)
        idx = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
        return (np.repeat(qof, n) << np.uint64(32)) | np.asarray(self.fid[idx]).astype(np.uint64)


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
        self._fetched: dict[str, str | None] = {}
        self._asked: dict = {}
        self._dead = set(int(x) for x in delta.dead) if delta is not None else set()

    # -- opening / building
    @classmethod
    def open(cls, repo: str, commit: str = "HEAD", cache_dir: str | Path | None = None,
             build: bool = True, procs: int = 2, max_delta: int = 5000) -> "DupIndex | None":
        """The index of COMMIT's tree: loaded from the cache, else made as a
        delta on a cached full index (<= MAX_DELTA changed files), else
        built from scratch when BUILD (None otherwise)."""
        env = git_env(repo)
        commit, tree = commit_and_tree(env, commit)
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        got = _cached_segments(cache, tree)
        if got is not None:
            return cls(repo, *got)
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
        fps = _sorted_unique(np.asarray(fps, dtype=np.uint32))
        return self.query_many([fps], [min_shared], len(self), max_postings)[0]

    def query_many(self, fps_list: list[np.ndarray], min_shared: list[int], limit: int,
                   max_postings: int = MAX_POSTINGS) -> list[list[tuple[Func, int]]]:
        """[query(fps, m)[:LIMIT] for fps, m in zip(FPS_LIST, MIN_SHARED)],
        with one search of the tables for all (FPS: sorted unique)."""
        nq = len(fps_list)
        if not nq:
            return []
        lens = np.array([len(f) for f in fps_list], dtype=np.int64)
        # the same question twice (asked ahead from the raw mail, then by
        # the review): answered once
        key = (lens.tobytes(), b"".join(np.asarray(f, dtype=np.uint32).tobytes() for f in fps_list),
               tuple(min_shared), limit, max_postings)
        if key in self._asked:
            return [list(x) for x in self._asked[key]]
        allf = np.concatenate(fps_list).astype(np.uint32) if lens.sum() else np.zeros(0, np.uint32)
        qof = np.repeat(np.arange(nq, dtype=np.uint64), lens)
        keys = [seg.lookup_keyed(allf, qof, max_postings)
                for seg in ((self.base,) if self.delta is None else (self.base, self.delta))]
        allk = np.sort(np.concatenate(keys))
        out: list[list[tuple[Func, int]]] = [[] for _ in range(nq)]
        if not len(allk):
            return out
        edge = np.flatnonzero(np.diff(allk)) + 1
        starts = np.concatenate(([0], edge))
        uk = allk[starts]
        counts = np.diff(np.concatenate((starts, [len(allk)])))
        q = (uk >> np.uint64(32)).astype(np.int64)
        fid = (uk & np.uint64(0xFFFFFFFF)).astype(np.int64)
        # per query: most shared first, then by function id (query()'s order)
        order = np.lexsort((fid, -counts, q))
        need = np.array(min_shared, dtype=np.int64)
        ok = counts[order] >= need[q[order]]
        for i, f, n in zip(q[order][ok].tolist(), fid[order][ok].tolist(), counts[order][ok].tolist()):
            got = out[i]
            if len(got) >= limit or f in self._dead:
                continue
            got.append((self.func(f), n))
        self._asked = {key: out}
        return [list(x) for x in out]

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
        if blob in self._fetched:
            return self._fetched[blob]
        data = self._blob_reader().read(blob)
        return None if data is None else data.decode("utf-8", errors="replace")

    def prefetch(self, blobs: list[str]) -> None:
        """Read BLOBS in one exchange with git (those not read by the last
        prefetch); read_blob() takes them from here until the next one."""
        have = self._fetched
        todo = [b for b in blobs if b not in have]
        got = {b: have[b] for b in blobs if b in have}
        if todo:
            got.update((b, None if data is None else data.decode("utf-8", errors="replace"))
                       for b, data in self._blob_reader().read_many(todo))
        self._fetched = got

    def _blob_reader(self) -> BlobReader:
        if self._reader is None:
            self._reader = BlobReader(self.env)
            atexit.register(self.close)
        return self._reader

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


# -- query side: what a series adds, and how alike two pieces of code are -------------------

TRIVIAL_LINES = frozenset(("", "{", "}", "};", "else", "} else {", "break;", "return;", "return 0;",
                           "default:", "out:", "err:", "unlock:"))


def nontrivial(line: str) -> bool:
    s = line.strip()
    return s not in TRIVIAL_LINES and not s.startswith(("/*", "*", "//", "#"))


@dataclass
class Unit:
    """A piece of added code worth comparing: a new function, or a run of
    added lines inside an existing one."""
    path: str
    func: str          # the enclosing function's name
    start: int         # lines in the post-image
    end: int
    whole: bool        # a whole added function
    codes: np.ndarray
    lines: np.ndarray  # line of each token
    nlines: int        # non-trivial lines


def added_units(path: str, post_text: str, added: set[int], min_tokens: int = 40,
                min_lines: int = 6) -> list[Unit]:
    """Units of the added lines ADDED of a post-image (the last few
    answers are kept: the rule process works out those of the files a
    series adds whole ahead, from the raw mail; treat them as read-only)."""
    key = (path, len(post_text), hash(post_text), len(added), min_tokens, min_lines)
    got = _UNITS.get(key)
    if got is not None and got[0] == post_text and got[1] == added:
        return list(got[2])
    units = _added_units(path, post_text, added, min_tokens, min_lines)
    if len(_UNITS) >= 16:
        del _UNITS[next(iter(_UNITS))]
    _UNITS[key] = (post_text, frozenset(added), tuple(units))
    return units


_UNITS: dict[tuple, tuple[str, frozenset, tuple]] = {}


def _added_units(path: str, post_text: str, added: set[int], min_tokens: int,
                 min_lines: int) -> list[Unit]:
    lines = post_text.split("\n")
    out = []
    marks = sorted(added)
    line, pos = 1, 0            # line number at offset pos (the spans come in order)
    for sp in _split_cached(post_text):
        i = bisect.bisect_left(marks, sp.start)
        if i == len(marks) or marks[i] > sp.end:
            continue            # no added line in this function: no unit
        body = range(sp.start, sp.end + 1)
        real = [n for n in body if n - 1 < len(lines) and nontrivial(lines[n - 1])]
        if not real:
            continue
        new = [n for n in real if n in added]
        if len(new) >= 0.9 * len(real) and (sp.end in added or sp.start in added):
            runs = [(sp.start, sp.end, True)]
        else:
            runs, cur = [], []
            for n in body:
                if n in added or (cur and n - 1 < len(lines) and not lines[n - 1].strip()):
                    cur.append(n)
                elif cur:
                    runs.append((cur[0], cur[-1], False))
                    cur = []
            if cur:
                runs.append((cur[0], cur[-1], False))
        for a, b, whole in runs:
            if whole:
                nl = len(real)
            else:
                nl = sum(1 for n in range(a, b + 1) if n - 1 < len(lines) and nontrivial(lines[n - 1]))
            if nl < min_lines:
                continue
            if whole:
                # the body, tokenised once for this and function_codes()
                codes, rel = _body_tokens(post_text[sp.body_off:sp.end_off])
                line += post_text.count("\n", pos, sp.body_off)
                pos = sp.body_off
                tl = rel + line
            else:
                codes, tl = tokens_with_lines("\n".join(lines[a - 1:b]), a)
            if len(codes) < min_tokens:
                continue
            out.append(Unit(path, sp.name, a, b, whole, codes, tl, nl))
    return out


@dataclass(frozen=True)
class Likeness:
    coverage: float      # share of the query's tokens found, in order, in the other code
    other_first: int     # token index range in the other code that matched
    other_last: int


def likeness(query: np.ndarray, other: np.ndarray, min_block: int = 4) -> Likeness:
    """How much of QUERY appears (in order, in blocks of >= MIN_BLOCK
    tokens) in OTHER."""
    import difflib
    if not len(query) or not len(other):
        return Likeness(0.0, 0, 0)
    sm = difflib.SequenceMatcher(None, other.tolist(), query.tolist(), autojunk=False)
    blocks = [b for b in sm.get_matching_blocks() if b.size >= min_block]
    if not blocks:
        return Likeness(0.0, 0, 0)
    got = sum(b.size for b in blocks)
    return Likeness(got / len(query), blocks[0].a, blocks[-1].a + blocks[-1].size - 1)


def calls_shared(query: np.ndarray, other: np.ndarray) -> float:
    """Share of the calls QUERY makes that OTHER makes too (1.0 without calls)."""
    qc = query[(query & 3) == 3]
    if not len(qc):
        return 1.0
    oc = set(other[(other & 3) == 3].tolist())
    return sum(1 for c in qc.tolist() if c in oc) / len(qc)


@lru_cache(maxsize=128)
def function_codes(text: str) -> list[tuple[Span, np.ndarray, np.ndarray]]:
    """(span, token codes, token lines) of every function of TEXT (cached:
    treat the result as read-only).  Function bodies are tokenised once per
    distinct body text (a series shows the same functions again and again)."""
    return _span_codes(text, _split_cached(text))


def named_function_codes(text: str, name: str) -> list[tuple[Span, np.ndarray, np.ndarray]]:
    """function_codes(TEXT) of the functions called NAME only (a candidate
    the index names: the rest of its file is not tokenised)."""
    return _span_codes(text, [sp for sp in _split_cached(text) if sp.name == name])


def indexed_function_codes(text: str, name: str, start: int, end: int
                           ) -> list[tuple[Span, np.ndarray, np.ndarray]]:
    """named_function_codes(TEXT, NAME) for the one function the index has
    at lines START..END of TEXT: only those lines are split and tokenised.
    (The whole file is split when they do not hold that function.)"""
    lines = _lines_of(text)
    if 1 <= start <= end <= len(lines):
        region = "\n".join(lines[start - 1:end])
        spans = split_functions(region)
        if len(spans) == 1 and spans[0].name == name and spans[0].start == 1 \
                and spans[0].end == end - start + 1:
            sp, codes, rel = _span_codes(region, spans)[0]
            return [(sp, codes, rel + (start - 1))]
    return named_function_codes(text, name)


@lru_cache(maxsize=64)
def _lines_of(text: str) -> list[str]:
    return text.split("\n")


def _span_codes(text: str, spans) -> list[tuple[Span, np.ndarray, np.ndarray]]:
    """(span, codes, lines) for SPANS of TEXT, in order."""
    out = []
    line, pos = 1, 0
    for sp in spans:
        line += text.count("\n", pos, sp.body_off)
        pos = sp.body_off
        codes, rel = _body_tokens(text[sp.body_off:sp.end_off])
        out.append((sp, codes, rel + line))
    return out


@lru_cache(maxsize=64)
def _split_cached(text: str) -> tuple[Span, ...]:
    return tuple(split_functions(text))


@lru_cache(maxsize=16384)
def _body_tokens(body: str) -> tuple[np.ndarray, np.ndarray]:
    """tokens_with_lines(body, 0), cached (read-only arrays)."""
    codes, lines = tokens_with_lines(body, 0)
    codes.flags.writeable = False
    lines.flags.writeable = False
    return codes, lines


_OPEN: dict[tuple, "DupIndex | None"] = {}


def _drop_readers_after_fork() -> None:
    """A forked process must not talk to its parent's `git cat-file`
    helpers (their pipes are shared): it drops them, and new ones start on
    demand."""
    for idx in _OPEN.values():
        if idx is not None:
            idx._reader = None


os.register_at_fork(after_in_child=_drop_readers_after_fork)


def index_for(tree: str | None, base: str | None) -> "DupIndex | None":
    """The cached index of BASE in TREE, when one can be had cheaply.

    ``REVIEWBOT_DUPINDEX``: ``auto`` (default) uses an index already in the
    cache, or a delta on one; ``build`` also builds a missing one (about a
    minute for a whole tree); ``off`` never uses one."""
    if not tree or not base:
        return None
    mode = os.environ.get("REVIEWBOT_DUPINDEX", "auto")
    if mode == "off":
        return None
    key = (tree, base, mode, str(default_cache_dir()))
    if key not in _OPEN:
        try:
            _OPEN[key] = DupIndex.open(tree, base, build=(mode == "build"))
        except (RuntimeError, OSError, ValueError):
            _OPEN[key] = None
    return _OPEN[key]


def directory_functions(tree: str, commit: str, directory: str, skip: set[str],
                        max_files: int = 40, max_bytes: int = 3_000_000):
    """(path, span, codes, lines) of the functions of the C files of one
    directory at COMMIT (small scan when no index is at hand)."""
    res = []
    for p, text in directory_texts(tree, commit, directory, skip, max_files, max_bytes):
        for sp, codes, lines in function_codes(text):
            res.append((p, sp, codes, lines))
    return res


def directory_texts(tree: str, commit: str, directory: str, skip: set[str],
                    max_files: int = 40, max_bytes: int = 3_000_000) -> list[tuple[str, str]]:
    """(path, text) of the C files directory_functions() scans, in its order."""
    env = git_env(tree)
    try:
        out = _git(env, "ls-tree", "-z", f"{commit}:{directory}" if directory else commit)
    except RuntimeError:
        return []
    ents = []
    for _, sha, name in _ls_tree_blobs(out):
        p = f"{directory}/{name}" if directory else name
        if p.endswith(".c") and p not in skip:
            ents.append((sha, p))
    ents = ents[:max_files]
    res, total = [], 0
    reader = BlobReader(env)
    try:
        for (sha, p), (_, data) in zip(ents, reader.read_many([s for s, _ in ents])):
            if not data or total + len(data) > max_bytes:
                continue
            total += len(data)
            res.append((p, data.decode("utf-8", errors="replace")))
    finally:
        reader.close()
    return res


# `name(` where _TOK can start a token: never right after an ASCII word
# character (identifiers, fields and numbers swallow those)
_CALL_NAME = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z_]\w*+[ \t]*+\(")


def call_code_superset(text: str) -> frozenset[int]:
    """A superset of the call codes (see calls_shared) of every function of
    TEXT: every `name(` of the text, also in comments and strings, and the
    code of a bare `(` (canonical "(" counts as a call)."""
    names = {m[:-1].rstrip() for m in _CALL_NAME.findall(text)}
    names.add("")          # a bare "(" counts as a call too
    return frozenset((zlib.crc32((n + "(").encode()) & ~3) | 3 for n in names if n not in KEYWORDS)
