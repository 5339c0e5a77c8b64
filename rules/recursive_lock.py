"""recursive-lock (LCK008): a lock taken again, through a callee, while held."""
from __future__ import annotations

import re

from reviewbot.analysis import lockflow as lf
from reviewbot.engine import PatchContext, Rule
from reviewbot.tree.kbquery import key_matches
from reviewbot.findings import Location

# kinds that deadlock when taken twice by one task (a read lock or an RCU
# section nests; a sleeping lock and a spinning one do not)
_SELF_DEADLOCK = {"spin", "mutex", "rwsem", "sock", "wrap"}


class RecursiveLock(Rule):
    """Flags a call made with a lock held to a function that takes the same
    lock again, itself or further down, when the patch introduces the
    pair.

    ## What it does
    For each function the patch touches, and each call made with a lock
    held on every path (`spin_lock*`, `mutex_lock*`, `down_write`,
    `lock_sock`, well-known wrappers), it asks what the callee takes: the
    same-file functions by walking them (two levels), the rest of the tree
    from the knowledge base that `reviewbot index` builds (two levels, with
    the witness path).  A callee that takes the same lock class is
    reported; at medium confidence when the call hands it the object the
    held lock lives in (or the class is a named field of its own), else
    low.  A chain that comes back into the function itself (one the
    pre-image had) and its own acquisition is medium too (the same class again with no nesting
    annotation: lockdep's "possible recursive locking", and on a child
    object an order that can invert).  For a global lock, or a lock whose
    field names its class in an object the call is handed, the knowledge
    base is searched further (breadth first, five calls down) for the
    shortest chain to where that class is taken; a global taken again is
    medium (it is one object).  Read locks and RCU sections, `*_nested()`
    acquisitions and pairs the pre-image already had are left out.

    ## Why is this bad?
    A mutex or spinlock taken twice by the same task deadlocks at once;
    lockdep reports "possible recursive locking detected".  It slips in
    when a helper that locks for itself is called from a new, locked
    caller, or when a lock is widened over a call that ends up back in the
    same code.

    ## Example
         mutex_lock(&mhi_cntrl->state_lock);
        +ret = mhi_ep_power_up(mhi_cntrl);
    where mhi_ep_power_up() reaches mhi_ep_set_ready_state(), which does
    `mutex_lock(&mhi_cntrl->state_lock)`.

    ## Use instead
    Call the helper after the unlock, or split it into a `__helper()` that
    expects the lock held (annotated with `lockdep_assert_held()`).

    ## References
    Documentation/locking/lockdep-design.rst ("recursive locking").
    """

    code = "LCK008"
    name = "recursive-lock"
    family = "locking"
    severity = "error"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        kb = None
        for fv, touched, post in lf.touched_files(ctx):
            if kb is None:
                kb = ctx.knowledge or False
            pre = None
            for fn, changed in touched:
                now = _sites(post, fn.name, kb, fv.path)
                if not now:
                    continue
                if pre is None:
                    pre = lf.image(fv, "pre")
                before = {(c.name, h.key) for c, h, _ in _sites(pre, fn.name, kb, fv.path)}
                for c, h, path in now:
                    if (c.name, h.key) in before:
                        continue
                    # medium: the same object for sure (same file), or the
                    # object handed to a function of the tree that locks that class
                    if getattr(path, "tree", False):
                        # (a global is one object: the callee's is this one)
                        conf = "medium" if (_hands_object(c, h, lf.flow_of(post, fn.name).types)
                                            or _is_global(h)) else "low"
                    else:
                        # the chain comes back into this very function and its
                        # own acquisition: the same class again, with no nesting
                        # annotation (lockdep: "possible recursive locking")
                        # (in a function the tree had: a new file or function
                        # that nests its own class is a design to ask about,
                        # not a change that broke one, so it stays low)
                        again_here = getattr(path, "at", None) == (fn.name, h.line) and fn.name in pre.byname
                        conf = "medium" if again_here or _same_object(post, c, h, path) else "low"
                    if post.shown is not None and conf == "medium" and not post.decided(h.line, c.line):
                        conf = "low"
                    via = "; ".join(path if len(path) <= 4 else path[:2] + ["..."] + path[-2:])
                    again = ("takes the same lock again" if len(path) <= 3 else
                             "can reach code that takes the same lock again")
                    ask = "Won't that deadlock on itself?"
                    if getattr(path, "at", None) == (fn.name, h.line):
                        again = f"comes back into {fn.name}(), which takes a lock of that class again"
                        ask = ("On the same object that deadlocks; on another one (a child, a peer) "
                               "lockdep reports recursive locking, and the two orders can invert. "
                               "Is this recursion safe?")
                    msg = (f"{fn.name}() calls {c.name}() with {lf.display(h)} held (taken at line "
                           f"{h.line}), and {c.name}() {again}: {via}. {ask}")
                    yield self.finding(fv.path, c.line, msg, confidence=conf,
                                       related=[Location(fv.path, h.line, f"{lf.display(h)} taken here")])


def _sites(info, name, kb, path):
    """(call, held lock, witness) for calls made with a lock held whose
    callee takes that lock's class."""
    fl = lf.lock_flow(info, name)
    if fl is None:
        return []
    out = []
    seen = set()
    for c in fl.calls:
        if c.name == name or c.name in lf.ACQUIRE or c.name in lf.RELEASE or c.name in lf.TRYLOCK:
            continue
        held = [h for h in lf.must_held(c.states)
                if h.kind in _SELF_DEADLOCK and not h.key.startswith("?") and h.how not in ("cond",)
                and "nested" not in h.call and not h.call.startswith(("read_", "down_read"))]
        if not held:
            continue
        taken = _callee_takes(info, c.name, kb, path)
        for h in held:
            hit = taken.get(h.key) or next((w for k, w in taken.items() if key_matches(h.key, k)), None)
            if hit is None and kb and c.name not in info.byname and _deep_worthy(h, c, fl.types):
                hit = _kb_reaches(kb, c.name, path, h.key)
            if hit and (c.name, h.key) not in seen:
                seen.add((c.name, h.key))
                out.append((c, h, hit))
    return out


def _callee_takes(info, name, kb, path) -> dict[str, list[str]]:
    """Lock class -> witness steps, for what NAME takes (two levels)."""
    out: dict[str, list[str]] = {}
    if name in info.byname:
        frontier = [(name, [])]
        seen = set()
        for _ in range(3):
            nxt = []
            for n, steps in frontier:
                if n in seen:
                    continue
                seen.add(n)
                fl = lf.flow_of(info, n)
                if fl is None:
                    continue
                dropped: dict[str, int] = {}
                for rc in fl.calls:
                    if rc.name in lf.RELEASE:
                        k = lf.key_of_call(rc.name, lf.RELEASE[rc.name], rc.args, fl.types)[0]
                        dropped[k] = min(dropped.get(k, rc.line), rc.line)
                for h, _ in fl.acquires:
                    if dropped.get(h.key, h.line + 1) < h.line:
                        continue        # drops the caller's lock first, then retakes it
                    if h.how != "cond" and "nested" not in h.call and not h.call.startswith(("read_", "down_read")):
                        if h.key not in out:
                            out[h.key] = _Witness(steps + [f"{n}() takes it with {h.call}() at line {h.line}"])
                            out[h.key].at = (n, h.line)
                            if n == name:
                                out[h.key].expr = h.expr
                for c in fl.calls:
                    if c.name in info.byname and c.name not in seen:
                        nxt.append((c.name, steps + [f"{n}() calls {c.name}() at line {c.line}"]))
                    elif kb and c.name not in seen and c.name not in lf.ACQUIRE and c.name not in lf.RELEASE \
                            and len(steps) < 2:
                        seen.add(c.name)
                        for k, w in _kb_takes(kb, c.name, path, 1).items():
                            out.setdefault(k, _Witness(steps + [f"{n}() calls {c.name}() at line {c.line}"] + w,
                                                       tree=True))
            frontier = nxt
        return out
    if kb:
        out.update(_kb_takes(kb, name, path, 2))
    return out


def _kb_takes(kb, name, path, depth) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        for t in kb.locks_taken(name, path, depth=depth):
            if t.get("kind") in ("read", "rcu", "irq", "bh", "preempt"):
                continue
            out.setdefault(t["class"], _Witness([re.sub(r" \([^()]*:\d+\)", "()", s) for s in t["path"]],
                                                tree=True))
    except Exception:
        pass
    return out


DEEP = 5           # functions down the call graph the targeted search goes
DEEP_BUDGET = 1500  # functions it may visit


def _deep_worthy(h, c, types) -> bool:
    """Whether to look further down than two levels for H: a global lock
    (one object: taken again anywhere below is the same lock), or a lock
    whose field names its class (`graph_mutex`, not `lock`) living in an
    object the call is handed."""
    if "." in h.key or "(" in h.key:
        return False
    return _is_global(h) or _hands_object(c, h, types)


def _is_global(h) -> bool:
    """A lock named by a global's name: `mutex_lock(&device_mutex)`."""
    return re.sub(r"\s+", "", h.expr).lstrip("&") == h.key and re.match(r"^\w+$", h.key) is not None


def _kb_reaches(kb, name, path, key):
    """A witness (steps) when NAME, or a function it calls up to DEEP
    levels down, takes the lock class KEY (breadth first: the shortest
    chain), from the knowledge base."""
    memo = _REACH.get(id(kb))
    if memo is None or memo[0] is not kb:
        _REACH.clear()
        memo = _REACH[id(kb)] = (kb, {})
    k = (name, path, key)
    if k not in memo[1]:
        memo[1][k] = _reach(kb, name, path, key)
    return memo[1][k]


_REACH: dict = {}


def _reach(kb, name, path, key):
    try:
        start = kb._def(name, path)
    except Exception:
        return None
    if start is None:
        return None
    frontier = [(name, start["path"], [])]
    seen = {(start["path"], name)}
    visited = 0
    for _ in range(DEEP):
        nxt = []
        for fn, fpath, steps in frontier:
            visited += 1
            if visited > DEEP_BUDGET:
                return None
            try:
                taken = kb.locks_taken(fn, fpath, depth=0)
            except Exception:
                taken = []
            for t in taken:
                if t.get("kind") in ("read", "rcu", "irq", "bh", "preempt"):
                    continue
                if re.search(r"with \w*(trylock|_nested)\w*\(\)", t["path"][-1]):
                    continue        # does not wait, or annotated as another subclass
                if key_matches(key, t["class"]):
                    w = [re.sub(r" \([^()]*:\d+\)", "()", s) for s in steps + t["path"]]
                    return _Witness(w, tree=True)
            for callee, line, _ in kb.calls(fn, fpath):
                if callee == fn or callee in lf.ACQUIRE or callee in lf.RELEASE or callee in lf.TRYLOCK:
                    continue
                d = kb._def(callee, fpath)
                if d is None or (d["path"], callee) in seen:
                    continue
                seen.add((d["path"], callee))
                nxt.append((callee, d["path"], steps + [f"{fn} ({fpath}:{line}) calls {callee}() at line {line}"]))
        frontier = nxt
    return None


class _Witness(list):
    """The steps to where a callee takes a lock; .expr: the lock as the
    callee itself writes it (None when further down); .tree: found through
    the knowledge base."""

    def __init__(self, steps, tree=False):
        super().__init__(steps)
        self.expr = None
        self.tree = tree
        self.at = None      # (function, line) of the acquisition, same file


def _same_object(info, c, h, w) -> bool:
    """The callee takes the very lock held here: it locks its own parameter
    that this call passes the held lock's object in (dentry->d_lock held,
    the callee locking parent->d_lock is another object of the class)."""
    if w.expr is None:
        return False
    summ = info.summaries.get(c.name)
    params = summ.params if summ is not None else []
    base = lf.lock_base(h.expr)
    theirs = lf.lock_base(w.expr)
    for i, a in enumerate(c.args):
        if i < len(params) and re.sub(r"\s+", "", a).lstrip("&") == base and theirs == params[i]:
            return True
    return False


def _hands_object(c, h, types) -> bool:
    """The call gets the object the lock lives in (or one of its type)."""
    base = lf.lock_base(h.expr)
    root = re.split(r"->|\.", base)[0] if base else ""
    struct = h.key.split(".")[0] if "." in h.key else ""
    for a in c.args:
        a = re.sub(r"\s+", "", a).lstrip("&")
        if root and (a == root or a.startswith((root + "->", root + "."))):
            return True
        if struct and types.get(a) == struct:
            return True
    return False
