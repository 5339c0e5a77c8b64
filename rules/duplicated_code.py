"""duplicated-code (DUP001): added code that already exists elsewhere."""
from __future__ import annotations

import os
import re
from collections import OrderedDict

from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyModule

np = LazyModule("numpy")
dx = LazyModule("reviewbot.tree.dupindex")

NEAR = 0.85          # share of the added code found in a twin in the same directory
FAR = 0.92           # ... in a twin elsewhere in the tree
MIN_TOKENS = 60      # smaller pieces are not worth a helper
FAR_MIN_TOKENS = 90  # far twins only for bigger pieces
CALLS = 0.9          # share of the added code's calls the twin must make too
SKIP_PREFIXES = ("tools/", "samples/", "scripts/", "Documentation/")


class DuplicatedCode(Rule):
    """Flags added functions and blocks that repeat code found elsewhere in
    the series or already in the tree.

    ## What it does
    Takes every added function, and every run of at least six non-trivial
    added lines, normalises it (identifiers and literals made anonymous;
    keywords, operators, called functions and struct fields kept) and looks
    for a twin: other code the series adds, the same file's post-image, and
    with a tree, the tree's functions (through the cached function index
    when there is one, else the same directory).  A twin counts when at
    least 85% of the added code is found in it, in order (92% and a bigger
    piece when the twin is in another directory).  Code under tools/ and
    samples/ is left alone: selftests copy on purpose.

    ## Why is this bad?
    Two copies drift: a fix lands in one and not the other.  Reviewers
    routinely ask for a helper ("please factor this out instead of
    copy-pasting"), and a helper that already exists should be called, not
    re-implemented.

    ## Example
        +static int sk_lookup_prog_detach(struct net *net)
        +{
        +	struct bpf_prog *attached;
        +
        +	mutex_lock(&sk_lookup_mutex);
        +	attached = rcu_dereference_protected(net->sk_lookup_prog,
        +					     lockdep_is_held(&sk_lookup_mutex));
        ...   (the body of skb_flow_dissector_bpf_prog_detach() again)

    ## Use instead
    Move the common part into a helper both callers use, as
    "flow_dissector: Extract attach/detach/query helpers" did, or call the
    helper that already exists.

    Two functions whose names differ only by a word of an opposite pair
    (read/write, get/set, start/stop, enable/disable, lock/unlock, rx/tx,
    suspend/resume, alloc/free, show/store, ...) share a shape while doing
    opposite jobs: they are not reported as copies of each other.
    """

    code = "DUP001"
    name = "duplicated-code"
    family = "duplicated-helper"
    severity = "info"
    confidence = "medium"
    def __init__(self):
        self._units: dict[int, list[tuple[object, dx.Unit]]] = {}
        self._postings = None
        self._old_funcs = None

    def check_patch(self, ctx: PatchContext):
        series_units = self._series_units(ctx)
        mine = [u for c, u in series_units if c is ctx]
        if not mine:
            return
        idx = dx.index_for(ctx.tree_path, ctx.base)
        dir_cache: dict[str, list] = {}
        touched = _final_images(ctx)
        cands = self._tree_candidates(mine, idx, touched) if idx is not None else {}
        for unit in mine:
            twin = self._in_series(ctx, unit, series_units) or self._in_file(ctx, unit)
            if twin is None and ctx.tree_path and ctx.base:
                twin = self._in_tree(ctx, unit, idx, dir_cache, cands.get(id(unit), ()), touched)
            if twin is None:
                continue
            where, path, line, end, func, cov, same_dir = twin
            if opposite_jobs(unit.func, func):
                continue        # a read and a write accessor share a shape, not a job
            yield self._report(unit, where, path, line, end, func, cov, same_dir)

    # -- the units of the whole series, computed once
    def _series_units(self, ctx):
        # Keyed by the series object itself (kept alive in the entry), so a
        # later series that happens to get the same id() is not confused
        # with it in a long-running process such as the watcher.
        key = id(ctx.series)
        if key not in self._units or self._units[key][0] is not ctx.series:
            units = []
            for c in ctx.all_patches or [ctx]:
                for fv in c.c_files():
                    if fv.path.startswith(SKIP_PREFIXES) or not fv.added_lines:
                        continue
                    for u in dx.added_units(fv.path, fv.post_text, fv.added_lines, MIN_TOKENS):
                        units.append((c, u))
            _prime_fps([u.codes for _, u in units])
            self._units = {key: (ctx.series, units)}
        return self._units[key][1]

    def _in_series(self, ctx, unit, series_units):
        """A twin added earlier in the series (or earlier in this patch)."""
        order, posting = self._series_postings(ctx, series_units)
        got = _series_twin(unit, series_units, order, posting)
        if got is None:
            return None
        c, u, lk, same_dir = got
        label = f"patch {c.patch.label}" if c is not ctx else "this patch"
        return (label, u.path, int(u.lines[lk.other_first]), int(u.lines[lk.other_last]),
                u.func, lk.coverage, same_dir)

    def _series_postings(self, ctx, series_units):
        """(order key of each unit by id, fingerprint -> units holding it),
        computed once per series."""
        got = self._postings
        if got is not None and got[0] is series_units:
            return got[1], got[2]
        patches = {id(c): i for i, c in enumerate(ctx.all_patches or [ctx])}
        order = {id(u): (patches.get(id(c), -1), u.path, u.start) for c, u in series_units}
        posting = _posting(series_units)
        self._postings = (series_units, order, posting)
        return order, posting

    def _in_file(self, ctx, unit):
        """A twin in the same file's post-image (code that was there before)."""
        fv = next(f for f in ctx.c_files() if f.path == unit.path)
        if not fv.has_full_image:
            return None
        for sp, codes, lines in self._old_functions(fv):
            if sp.start <= unit.start <= sp.end or sp.start <= unit.end <= sp.end:
                continue
            lk = _twin_likeness(unit.codes, codes, True)
            if lk is not None:
                return ("this file", unit.path, int(lines[lk.other_first]), int(lines[lk.other_last]),
                        sp.name, lk.coverage, True)
        return None

    def _old_functions(self, fv):
        """The functions of a post-image that the patch does not add (new
        ones are the series check's)."""
        if fv.diff.is_new:
            return []               # a new file has none
        got = self._old_funcs
        if got is None or got[0] is not fv:
            added = fv.added_lines
            funcs = [(sp, codes, lines) for sp, codes, lines in dx.function_codes(fv.post_text)
                     if sp.start not in added and sp.end not in added]
            got = self._old_funcs = (fv, funcs)
        return got[1]

    def _tree_candidates(self, units, idx, touched: dict[str, str]) -> dict[int, list]:
        """id(unit) -> the index's candidate twins of each unit (the 25
        functions sharing the most fingerprints with it, at least a
        quarter of its own), looked up for all units at once; the files
        holding them are read in one go too."""
        fps = [_fps(u.codes) for u in units]
        found = idx.query_many(fps, [max(3, len(f) // 4) for f in fps], 25)
        out, blobs = {}, set()
        for unit, hits in zip(units, found):
            udir = os.path.dirname(unit.path)
            keep = []
            for func, _ in hits:
                if func.path == unit.path or func.path.startswith(SKIP_PREFIXES):
                    continue
                if os.path.dirname(func.path) != udir and len(unit.codes) < FAR_MIN_TOKENS:
                    continue
                keep.append(func)
                if func.path not in touched:
                    blobs.add(func.blob)
            out[id(unit)] = keep
        idx.prefetch(sorted(blobs))
        return out

    def _in_tree(self, ctx, unit, idx, dir_cache, cands, touched):
        udir = os.path.dirname(unit.path)
        if idx is not None:
            return _tree_twin(unit, idx, cands, touched)
        if udir not in dir_cache:
            dir_cache[udir] = _directory_texts(ctx.tree_path, ctx.base, udir, frozenset(touched))
        qc = _calls_list(unit.codes)
        for path, text in dir_cache[udir]:
            # what dx.directory_functions() gives, one file at a time; a file
            # none of whose functions can call 90% of what the unit calls is
            # not tokenised at all
            if qc:
                sup = _superset(text)
                if sum(1 for c in qc if c in sup) / len(qc) < CALLS:
                    continue
            for sp, codes, lines in dx.function_codes(text):
                lk = _twin_likeness(unit.codes, codes, True)
                if lk is not None:
                    return ("tree", path, int(lines[lk.other_first]), int(lines[lk.other_last]),
                            sp.name, lk.coverage, True)
        return None

    def _report(self, unit, where, path, line, end, func, cov, same_dir):
        what = f"the new {unit.func}()" if unit.whole else f"this part of {unit.func}()"
        place = f"{func}() in {path}" if path != unit.path else f"{func}() in this file"
        if where not in ("tree", "this file"):
            place += f" (added in {where})"
            ask = "Could the two share a helper instead of carrying the same code twice?"
        else:
            ask = (f"Could {func}() be reused here, or the common part moved into a helper "
                   "both can call?")
        msg = f"Isn't {what} a copy of {place}? {ask}"
        conf = "high" if cov >= 0.95 and same_dir else ("medium" if same_dir or cov >= 0.97 else "low")
        return self.finding(unit.path, unit.start, msg, end_line=unit.end, confidence=conf,
                            related=[Location(path, line, "the other copy")])


_OPPOSITES = (
    ("read", "write"), ("rd", "wr"), ("get", "set"), ("get", "put"), ("start", "stop"),
    ("enable", "disable"), ("en", "dis"), ("lock", "unlock"), ("open", "close"), ("rx", "tx"),
    ("suspend", "resume"), ("load", "store"), ("inc", "dec"), ("on", "off"), ("attach", "detach"),
    ("alloc", "free"), ("push", "pop"), ("add", "remove"), ("add", "del"), ("show", "store"),
    ("in", "out"), ("input", "output"), ("up", "down"), ("init", "exit"), ("init", "deinit"),
    ("init", "fini"), ("init", "cleanup"), ("create", "destroy"), ("register", "unregister"),
    ("map", "unmap"), ("mask", "unmask"), ("pause", "resume"), ("freeze", "thaw"), ("encode", "decode"),
    ("pack", "unpack"), ("send", "recv"), ("send", "receive"), ("import", "export"), ("save", "restore"),
    ("acquire", "release"), ("begin", "end"), ("from", "to"), ("src", "dst"), ("min", "max"),
    ("first", "last"), ("next", "prev"), ("head", "tail"), ("high", "low"), ("hi", "lo"),
    ("connect", "disconnect"), ("link", "unlink"), ("bind", "unbind"), ("prepare", "unprepare"),
    ("probe", "remove"), ("insert", "remove"), ("hold", "release"), ("ref", "unref"), ("pin", "unpin"),
    ("enter", "exit"), ("set", "clear"), ("set", "clr"), ("claim", "release"), ("request", "release"),
    ("activate", "deactivate"), ("plug", "unplug"), ("block", "unblock"), ("reserve", "unreserve"),
)
_OPP = {}
for _a, _b in _OPPOSITES:
    _OPP.setdefault(_a, set()).add(_b)
    _OPP.setdefault(_b, set()).add(_a)


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"_+|(?<=[a-z])(?=[A-Z])", name.lower()) if w]


def opposite_jobs(a: str | None, b: str | None) -> bool:
    """The two function names differ by one word of an opposite pair
    (`foo_read_reg` / `foo_write_reg`, `port_lock` / `port_unlock`), the
    word standing alone or as a name's head or tail (`readl`/`writel`,
    `rxq`/`txq`)."""
    if not a or not b or a == b:
        return False
    wa, wb = _words(a), _words(b)
    if len(wa) != len(wb):
        return False
    diff = [(x, y) for x, y in zip(wa, wb) if x != y]
    if len(diff) != 1:
        return False
    x, y = diff[0]
    if y in _OPP.get(x, ()):
        return True
    for o in _OPP:
        for p in _OPP[o]:
            # the pair as the head of the word (readl / writel), or its tail
            if x.startswith(o) and y.startswith(p) and x[len(o):] == y[len(p):]:
                return True
            if x.endswith(o) and y.endswith(p) and x[:-len(o)] == y[:-len(p)]:
                return True
    return False


def _series_twin(unit, series_units, order, posting):
    """(patch context, unit, likeness, same directory) of the first twin of
    UNIT among the series' units before it (ORDER), found through their
    fingerprints (POSTING), or None."""
    me = order[id(unit)]
    shared: dict[int, int] = {}
    for fp in _fps_set(unit.codes):
        for j in posting.get(fp, ()):
            shared[j] = shared.get(j, 0) + 1
    for j in sorted(j for j, n in shared.items() if n >= 3):
        c, u = series_units[j]
        if u is unit or order[id(u)] >= me:
            continue
        same_dir = os.path.dirname(u.path) == os.path.dirname(unit.path)
        lk = _twin_likeness(unit.codes, u.codes, same_dir)
        if lk is not None:
            return c, u, lk, same_dir
    return None


def _posting(series_units) -> dict[int, list[int]]:
    """Fingerprint -> indexes of the series' units holding it."""
    posting: dict[int, list[int]] = {}
    for j, (_, u) in enumerate(series_units):
        for fp in _fps_set(u.codes):
            posting.setdefault(fp, []).append(j)
    return posting


def _tree_twin(unit, idx, cands, touched):
    """The first of the index's candidate functions CANDS that is a twin of
    UNIT (read from TOUCHED when the series changes its file), as
    _in_tree() reports it, or None."""
    udir = os.path.dirname(unit.path)
    for func in cands:
        same_dir = os.path.dirname(func.path) == udir
        if func.path in touched:
            text = touched[func.path]
            found = dx.named_function_codes(text, func.name)
        else:
            text = idx.read_blob(func.blob)
            if text is None:
                continue
            found = _indexed_function_codes(func.blob, text, func.name, func.start, func.end)
        for sp, codes, lines in found:
            lk = _twin_likeness(unit.codes, codes, same_dir)
            if lk is not None:
                return ("tree", func.path, int(lines[lk.other_first]), int(lines[lk.other_last]),
                        sp.name, lk.coverage, same_dir)
    return None


def _twin_likeness(query, other, same_dir: bool):
    """dx.likeness(query, other) when OTHER is a twin of QUERY (enough of
    it found in order: NEAR in the same directory, FAR elsewhere), else
    None; the cheap tests first, the likeness remembered by the two token
    sequences (the rule process compares the files a series adds whole
    ahead)."""
    need = NEAR if same_dir else FAR
    if not _alike(query, other, same_dir) or not _may_cover(query, other, need):
        return None
    lk = _remembered(_LIKENESS, 1024, (query.tobytes(), other.tobytes()), lambda: dx.likeness(query, other))
    return lk if lk.coverage >= need else None


def _indexed_function_codes(blob: str, text: str, name: str, start: int, end: int):
    """dx.indexed_function_codes() of the text of git blob BLOB, remembered
    (read-only) for the last few hundred candidates."""
    return _remembered(_CANDIDATES, 512, (blob, name, start, end),
                       lambda: dx.indexed_function_codes(text, name, start, end))


def _remembered(table: OrderedDict, size: int, key, make):
    """TABLE[KEY], made by MAKE() when missing; the least recently used
    entries go beyond SIZE."""
    got = table.get(key)
    if got is None:
        got = table[key] = make()
        if len(table) > size:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return got


_LIKENESS: "OrderedDict[tuple, object]" = OrderedDict()
_CANDIDATES: "OrderedDict[tuple, list]" = OrderedDict()


def _alike(query, other, same_dir: bool) -> bool:
    """Cheap checks first: big enough, and calling the same functions
    (dx.calls_shared(query, other) >= CALLS, with the call sets cached)."""
    if not same_dir and len(query) < FAR_MIN_TOKENS:
        return False
    qc = _calls_list(query)
    if not qc:
        return 1.0 >= CALLS
    oc = _calls_set(other)
    return sum(1 for c in qc if c in oc) / len(qc) >= CALLS


def _may_cover(query, other, threshold: float) -> bool:
    """False when dx.likeness(query, other).coverage is surely below
    threshold: the tokens it matches are at most the tokens the two share
    (as multisets)."""
    if not len(query) or not len(other):
        return True
    uq, cq = _counts(query)
    uo, co = _counts(other)
    iq, io = _common_positions(uq, uo)
    shared = int(np.minimum(cq[iq], co[io]).sum())
    if shared / len(query) < threshold:
        return False
    # a matched token lies in a block of >= 4 tokens found in both, so
    # inside a 4-gram of the query that the other code has too (hashes of
    # 4-grams: a collision can only let more through)
    if len(query) < _BLOCK or len(other) < _BLOCK:
        return False            # no block: coverage 0
    hq = _grams(query)
    common = _member(hq, _derived("grams_u", other, lambda c: dx._sorted_unique(_grams(c))))
    cover = np.zeros(len(query), dtype=bool)
    n = len(hq)
    for k in range(_BLOCK):
        cover[k:k + n] |= common
    return int(cover.sum()) / len(query) >= threshold


_BLOCK = 4       # dx.likeness()'s min_block
_GRAM_MUL = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 1)


def _grams(codes) -> np.ndarray:
    """A 64-bit hash of every run of _BLOCK tokens."""
    def make(c):
        c = c.astype(np.uint64)
        n = len(c) - _BLOCK + 1
        h = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(_BLOCK):
                h = (h ^ c[j:j + n]) * np.uint64(_GRAM_MUL[j]) + np.uint64(j + 1)
        return h
    return _derived("grams", codes, make)


# Derived data of token arrays (which are cached and read-only elsewhere),
# keyed by the array's identity; the array is kept so the id stays valid.
_DERIVED: "OrderedDict[tuple, tuple]" = OrderedDict()
_DERIVED_SIZE = 32768


def _derived(kind: str, codes, make):
    key = (kind, id(codes))
    got = _DERIVED.get(key)
    if got is not None and got[0] is codes:
        _DERIVED.move_to_end(key)
        return got[1]
    return _store(kind, codes, make(codes))


def _store(kind: str, codes, val):
    _DERIVED[(kind, id(codes))] = (codes, val)
    if len(_DERIVED) > _DERIVED_SIZE:
        _DERIVED.popitem(last=False)
    return val


def _calls_list(codes) -> list[int]:
    return _derived("qc", codes, lambda c: c[(c & 3) == 3].tolist())


def _calls_set(codes) -> set[int]:
    return _derived("oc", codes, lambda c: set(c[(c & 3) == 3].tolist()))


def _fps(codes):
    """dx.fingerprints(codes) (a unit's fingerprints), once per token array."""
    return _derived("fpa", codes, dx.fingerprints)


def _prime_fps(seqs) -> None:
    """_fps() of many token arrays, computed together."""
    todo = [c for c in seqs if _DERIVED.get(("fpa", id(c)), (None,))[0] is not c]
    for c, f in zip(todo, dx.fingerprints_many(todo)):
        _store("fpa", c, f)


def _fps_set(codes) -> set[int]:
    """set(_fps(codes).tolist())."""
    return _derived("fps", codes, lambda c: set(_fps(c).tolist()))


def _counts(codes):
    return _derived("counts", codes, _unique_counts)


# Sorting-based set operations (np.unique/isin/intersect1d import numpy.ma
# on first use, a noticeable part of a small review).

def _unique_counts(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(c, return_counts=True)."""
    s = np.sort(c)
    if not len(s):
        return s, np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    return s[first], np.diff(np.append(first, len(s)))


def _find_sorted(a: np.ndarray, sorted_unique: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each value of A would be in SORTED_UNIQUE, whether it is
    there), for a sorted array without repeats."""
    if not len(sorted_unique):
        return np.zeros(len(a), dtype=np.int64), np.zeros(len(a), dtype=bool)
    pos = np.searchsorted(sorted_unique, a)
    pos[pos == len(sorted_unique)] = 0
    return pos, sorted_unique[pos] == a


def _member(a: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """np.isin(a, sorted_unique) for a sorted array without repeats."""
    return _find_sorted(a, sorted_unique)[1]


def _common_positions(ua: np.ndarray, ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (in ua, in ub) of the values two sorted unique arrays share
    (np.intersect1d(..., assume_unique=True, return_indices=True)[1:])."""
    pos, hit = _find_sorted(ua, ub)
    return np.flatnonzero(hit), pos[hit]


_DIRS: "OrderedDict[tuple, list]" = OrderedDict()
_SUPERSETS: "OrderedDict[str, frozenset]" = OrderedDict()


def _directory_texts(tree: str, base: str, udir: str, skip: frozenset) -> list[tuple[str, str]]:
    """dx.directory_texts(), remembered for the next patches of a series."""
    return _remembered(_DIRS, 8, (tree, base, udir, skip),
                       lambda: dx.directory_texts(tree, base, udir, set(skip)))


def _superset(text: str) -> frozenset:
    return _remembered(_SUPERSETS, 256, text, lambda: dx.call_code_superset(text))


def _final_images(ctx) -> dict[str, str]:
    """Path -> text after the whole series, for the files the series touches."""
    out: dict[str, str] = {}
    for c in ctx.all_patches or [ctx]:
        for fv in c.files:
            if fv.diff.is_deleted:
                out[fv.diff.old_path] = ""
            elif fv.post is not None:
                out[fv.path] = fv.post
    return out
