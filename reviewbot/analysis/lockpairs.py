"""Lock wrappers of other files that a function calls in pairs, vouched
for by the tree's knowledge base (for the lock-balance rules LCK002 and
LCK007): `t = dm_get_live_table(md, &idx); ... dm_put_live_table(md, idx);`
where dm.c's dm_get_live_table() returns inside an SRCU read-side section
on every path and dm_put_live_table() ends it.  The walker
(lockflow.Walker(extern=...)) then follows them like a same-file
X_lock()/X_unlock() pair: a lock of its own class, named by the acquire
and its first argument."""
from __future__ import annotations

import json
import re
import zlib

from reviewbot.analysis import cparse
from reviewbot.analysis import facts as F
from reviewbot.analysis import lockflow as lf

_SWAPS = (("get", "put"), ("acquire", "release"), ("begin", "end"), ("start", "end"), ("start", "stop"),
          ("enter", "exit"), ("enter", "leave"), ("hold", "release"), ("grab", "release"),
          ("claim", "release"), ("down", "up"))


def tree_pair(kb, a: str, r: str):
    """(lock class, kind, R) when the tree's A returns with a lock held
    on every path and its R releases that class without taking it."""
    ops_a, ops_r = kb.lock_wrapper(a) or [], kb.lock_wrapper(r) or []
    for op, cls, kind in ops_a:
        if op == "a" and ("r", cls, kind) in ops_r:
            return cls, kind, r
    fa, fr = _kb_facts(kb, a), _kb_facts(kb, r)
    if fa is None or fr is None:
        return None
    _, acq, _, exits, _ = F.simulate(fa["ev"], kb.wrappers, fa["t"], fa["p"])
    if fa["ev"][-2:] == ["R", "}T"]:
        exits = exits[:-1]       # the fall-off end after a last return
    if not exits or not acq:
        return None
    common = set(exits[0]).intersection(*map(set, exits[1:]))
    _, _, _, _, unmatched = F.simulate(fr["ev"], kb.wrappers, fr["t"], fr["p"])
    gone = {(c, k) for c, k, _, _ in unmatched}
    for cls, kind, _, _ in acq:
        if cls in common and (cls, kind) in gone and kind not in ("irq", "bh", "preempt"):
            return cls, kind, r
    return None


def _kb_facts(kb, name: str, macros: bool = False):
    """The knowledge base's facts of NAME's (first) definition."""
    defs = kb.definitions(name)
    if not defs or (defs[0]["macro"] and not macros) or defs[0]["stub"]:
        return None
    d = defs[0]
    if d["source"] != "base":
        return d.get("fn")
    ck = (id(kb.db), d["path"])
    funcs = _FILE_FACTS.get(ck)
    if funcs is None:
        row = kb.db.execute("SELECT b.facts FROM files f JOIN blobs b ON b.blob = f.blob WHERE f.path=?",
                            (d["path"],)).fetchone()
        funcs = json.loads(zlib.decompress(row[0])).get("funcs", ()) if row is not None else ()
        if len(_FILE_FACTS) > 32:
            _FILE_FACTS.pop(next(iter(_FILE_FACTS)))
        _FILE_FACTS[ck] = funcs
    for fn in funcs:
        if fn["n"] == name and fn["l"] == d["line"]:
            return fn
    return None


_FILE_FACTS: dict = {}


def pair_candidates(info, fn) -> list[tuple[str, str]]:
    """(acquire, release) call names of FN named alike (x_get_y / x_put_y,
    begin/end, enter/exit, ...), neither a known primitive nor defined in
    the same file (the walker's summaries cover those)."""
    names = fn.call_names
    out = []
    for a in sorted(names):
        if a in lf.ACQUIRE or a in lf.RELEASE or a in lf.TRYLOCK or a in lf.ZEROLOCK or a in info.summaries:
            continue
        toks = a.split("_")
        for x, y in _SWAPS:
            if x in toks:
                r = "_".join(y if t == x else t for t in toks)
                if r in names and r not in lf.RELEASE and r not in info.summaries:
                    out.append((a, r))
    return out


def tree_pairs(kb, info, fn, cache: dict) -> dict:
    """{name: ("acquire" | "release", acquire name)} for the pairs of
    pair_candidates() the tree vouches for (CACHE: (a, r) -> answer; its
    true answers are (lock class, kind, release name))."""
    out = {}
    for a, r in pair_candidates(info, fn):
        if (a, r) not in cache:
            cache[(a, r)] = tree_pair(kb, a, r)
        if cache[(a, r)]:
            out[a] = ("acquire", a)
            out[r] = ("release", a)
    return out


_RELEASE_WORD = re.compile(r"(^|_)(unlock|release|releases|drop|done|finish)(_|$)")
# wrappers of a lock that IS the object (a page's or a buffer's lock bit):
# the object goes to calls that unlock it (block_write_full_page())
_SELF_LOCKS = frozenset(("page", "folio", "buffer"))


def object_wrapper(h) -> bool:
    """A lock taken by a wrapper given the object it lives in."""
    if h.kind == "wrap":
        return True
    stem = lf._wrap_stem(h.call)
    return stem in lf._WRAP_NAMES and stem not in _SELF_LOCKS


def handed_only(fl, key: str, kb, ext: dict | None = None, info=None) -> bool:
    """Whether lock KEY is 'uncertain' in FL (lockflow.Flow.uncertain)
    only for a wrapper's object handed to calls that do not release it: a
    lock taken with a wrapper on an object (l2cap_chan_lock(chan),
    filemap_invalidate_lock(mapping)) becomes uncertain once the object
    goes to any call; it stays held when each such call is known to
    release nothing: a function of the same file (INFO, the image) that
    calls no unlock or release, or one of the tree (KB, or False) whose
    walk drops no lock it did not take."""
    if key not in fl.handed:
        return False
    hs = [h for h, _ in fl.acquires if h.key == key]
    ext = ext or {}
    if not hs or any(h.how == "cond" or not object_wrapper(h) or
                     (h.call not in ext and not _plain_take(fl, h)) for h in hs):
        return False
    own = {("release", h.call) for h in hs}
    for callee in fl.handed[key]:
        if callee in lf.RELEASE or ext.get(callee) in own or \
                lf.paired_wrapper(callee, fl.fn.call_names) in own:
            continue        # the lock's own release
        if _RELEASE_WORD.search(callee) or _may_release(callee, kb, info) is not False:
            return False
    return True


_UNLOCKISH = re.compile(r"(^|_)(unlock|release|releases)(_|$)")


def _may_release(callee: str, kb, info) -> bool | None:
    """Whether CALLEE may release a lock its caller holds: True, False, or
    None (nobody can tell)."""
    if info is not None and callee in info.byname:
        f = info.byname[callee]
        d = f.node.child_by_field_name("declarator")
        if d is not None and "__releases" in cparse.node_text(d):
            return True
        return any(_UNLOCKISH.search(n) for n in f.call_names)
    if not kb:
        return None
    if not re.match(r"^\w+$", callee):
        return False        # an ops callback: what it does is the driver's, taken as releasing nothing
    ops = kb.lock_wrapper(callee)
    if ops and any(op[0] == "r" for op in ops):
        return True
    if not kb.definitions(callee):
        # the knowledge base keeps every function and the macros that
        # mention a lock: one it does not know is a plain accessor macro
        # (hdev_is_powered())
        return False
    fn = _kb_facts(kb, callee, macros=True)
    if fn is None:
        return None
    if any(type(e) is not str and e[0] == "c" and _UNLOCKISH.search(e[1]) for e in fn["ev"]):
        return True
    unmatched = F.simulate(fn["ev"], kb.wrappers, fn["t"], fn["p"])[4]
    return any(k not in ("irq", "bh", "preempt") for _, k, _, _ in unmatched)


_OBJECT = re.compile(r"^[A-Za-z_]\w*(?:(?:->|\.)[A-Za-z_]\w*)*$")


def _plain_take(fl, h) -> bool:
    """(For a wrapper the tree does not vouch for.)  The wrapper is called as a statement of its own (a result that is
    checked says it may fail: `ret = mddev_lock(mddev); if (ret) ...`) on
    an object named by a pointer (`chan`, `hdev`, `dev->mapping`), not on
    the address of a member (`lock_extent(&tree, start, end)`: a range or
    a bit that other calls on the member can drop)."""
    for c in fl.calls:
        if c.name == h.call and c.line == h.line:
            par = c.node.parent
            if par is None or par.type != "expression_statement" or not c.args:
                return False
            return bool(_OBJECT.match(c.args[0].strip()))
    return False
