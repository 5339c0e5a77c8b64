"""Locks a function takes through its callees, and locks its callers hold
when they call it, each with a witness chain.

Two walks over the call graph that rules share:
- taken_by(): down from a function, through the same-file functions of an
  image (the lock flow of reviewbot.analysis.lockflow, which sees the
  post-image of the series) and, past the file, through the tree's
  knowledge base (reviewbot.tree.kbquery.View.locks_taken);
- held_above(): up from a function through the knowledge base's call
  sites that are made with locks held (View.held_by_callers and its
  callers).
Keys: the lock flow names a lock by field (`state_lock`) or `type.field`,
the knowledge base by `struct type.field`; same_lock() compares the two.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from reviewbot.analysis import lockflow as lf

PSEUDO_KINDS = ("rcu", "irq", "bh", "preempt")
SLEEPING_KINDS = ("mutex", "rwsem", "sock")


class Taken(NamedTuple):
    key: str                    # lock-flow key or knowledge-base class
    line: int                   # line of the acquisition when NAME itself takes it (this file), else 0
    steps: tuple[str, ...]      # witness, caller first: "f() calls g() at line N", "g() takes it with ..."
    at: int = 0                 # the line of NAME where the chain starts (its acquisition or call)
    tree: bool = False          # the last steps come from the knowledge base


class HeldAbove(NamedTuple):
    cls: str                    # knowledge-base class
    steps: tuple[str, ...]      # "h() holds C (path:line) and calls g() -> NAME()"
    caller: str                 # the function that holds it
    path: str
    line: int


def same_lock(a: str, b: str) -> bool:
    """Whether two lock names (lock-flow keys or knowledge-base classes)
    name one lock class."""
    if a == b:
        return True
    if a.startswith("?") or b.startswith("?"):
        return False
    from reviewbot.tree.kbquery import key_matches
    sa = a[len("struct "):] if a.startswith("struct ") else a
    sb = b[len("struct "):] if b.startswith("struct ") else b
    if sa == sb:
        return True
    if a.startswith("struct ") and not b.startswith("struct "):
        return key_matches(b, a)
    if b.startswith("struct ") and not a.startswith("struct "):
        return key_matches(a, b)
    return False


def find(taken: dict, key: str):
    """The entry of TAKEN (key -> value) naming the same lock as KEY."""
    got = taken.get(key)
    if got is not None:
        return got
    for k, v in taken.items():
        if same_lock(k, key):
            return v
    return None


def taken_by(info, name: str, kb=None, path: str | None = None, depth: int = 3,
             kb_depth: int = 2) -> dict[str, Taken]:
    """Lock key -> Taken, for every lock NAME (a function of the image INFO)
    takes, itself or through callees: same-file callees up to DEPTH levels
    (their own lock flow), the others through the knowledge base (KB_DEPTH
    levels further).  Try-locks and pseudo locks (rcu, irq, bh, preempt)
    are left out."""
    out: dict[str, Taken] = {}
    seen: set[str] = set()
    frontier: list[tuple[str, tuple[str, ...], int]] = [(name, (), 0)]
    for level in range(depth + 1):
        nxt = []
        for n, steps, at in frontier:
            if n in seen:
                continue
            seen.add(n)
            fl = lf.flow_of(info, n)
            if fl is None:
                continue
            for h, _ in fl.acquires:
                if h.how == "cond" or h.kind in PSEUDO_KINDS or h.key in lf.PSEUDO or not h.stable:
                    continue
                if h.key not in out:
                    out[h.key] = Taken(h.key, h.line if n == name else 0,
                                       steps + (f"{n}() takes it with {h.call}() at line {h.line}",),
                                       at or h.line)
            for c in fl.calls:
                if c.name in seen or c.name in lf.ACQUIRE or c.name in lf.RELEASE or c.name in lf.TRYLOCK:
                    continue
                step = steps + (f"{n}() calls {c.name}() at line {c.line}",)
                if c.name in info.byname:
                    if level < depth:
                        nxt.append((c.name, step, at or c.line))
                elif kb:
                    seen.add(c.name)
                    for t in _kb_taken(kb, c.name, path, kb_depth - 1 if level else kb_depth):
                        cls = t["class"]
                        if find(out, cls) is None:
                            out[cls] = Taken(cls, 0, step + tuple(t["path"]), at or c.line, tree=True)
        frontier = nxt
    return out


def _kb_taken(kb, name, path, depth):
    if depth < 0:
        return []
    try:
        got = kb.locks_taken(name, path, depth=depth)
    except Exception:       # a broken knowledge base must not stop a review
        return []
    return [t for t in got if t.get("kind") not in PSEUDO_KINDS and not t["class"].startswith("@")
            and not (t["path"] and _TRYLOCK_STEP.search(t["path"][-1]))]


_TRYLOCK_STEP = re.compile(r"takes it with \w*trylock\w*\(\)")


def held_above(kb, name: str, path: str, depth: int = 4, cap: int = 200, info=None,
               kinds=SLEEPING_KINDS) -> dict[str, HeldAbove]:
    """Knowledge-base class -> HeldAbove, for every lock of KINDS some
    caller of NAME (DEPTH levels up) holds when its call chain reaches NAME.
    A static function's callers are looked for in its own file only.
    Without a knowledge base, the callers in the image INFO (NAME's file),
    by their lock flow."""
    out: dict[str, HeldAbove] = {}
    if not kb:
        return _held_above_in_file(info, name, path, depth, kinds) if info is not None else out
    seen = {(name, path)}
    frontier: list[tuple[str, str, tuple[str, ...]]] = [(name, path, (name,))]
    visited = 0
    for _ in range(depth):
        nxt = []
        for n, p, chain in frontier:
            if RTNL not in out:
                _rtnl_context(kb, n, p, chain, out)
            try:
                sites = kb.callers(n, p)
            except Exception:       # a broken knowledge base must not stop a review
                return out
            for caller, cpath, line, held in sites:
                visited += 1
                if visited > cap:
                    return out
                for cls, kind in held or ():
                    if kind not in kinds or cls.startswith("@") or cls in out:
                        continue
                    out[cls] = HeldAbove(cls, (f"{caller}() holds {cls} ({cpath}:{line}) and calls "
                                               + " -> ".join(f"{x}()" for x in chain),),
                                         caller, cpath, line)
                if (caller, cpath) not in seen:
                    seen.add((caller, cpath))
                    nxt.append((caller, cpath, (caller,) + chain))
        frontier = nxt
    return out


RTNL = "rtnl_mutex"


def _rtnl_context(kb, name: str, path: str, chain: tuple[str, ...], out: dict) -> None:
    """RTNL held around NAME by the core that calls it through an ops table
    (`.ndo_stop`, ethtool ops: the knowledge base's rtnl context)."""
    try:
        ctxs = kb.contexts(name, path)
    except Exception:       # a broken knowledge base must not stop a review
        return
    for kind, why in ctxs:
        if kind == "rtnl":
            d = next((x for x in kb.definitions(name) if x["path"] == path), None)
            rest = " and calls " + " -> ".join(f"{x}()" for x in chain[1:]) if len(chain) > 1 else ""
            out[RTNL] = HeldAbove(RTNL, (f"{name}() runs with RTNL held ({why}){rest}",), name, path,
                                  d["line"] if d else 0)
            return


def _held_above_in_file(info, name: str, path: str, depth: int, kinds) -> dict[str, HeldAbove]:
    out: dict[str, HeldAbove] = {}
    seen = {name}
    frontier: list[tuple[str, tuple[str, ...]]] = [(name, (name,))]
    for _ in range(depth):
        nxt = []
        for n, chain in frontier:
            for f in info.functions:
                if n not in f.call_names or f.name == n:
                    continue
                fl = lf.flow_of(info, f.name)
                if fl is None:
                    continue
                for c in fl.calls:
                    if c.name != n:
                        continue
                    for h in lf.must_held(c.states):
                        # (a lock a try-lock took is held all the same)
                        if h.kind not in kinds or h.key in lf.PSEUDO or not h.stable or h.key in out:
                            continue
                        out[h.key] = HeldAbove(h.key, (f"{f.name}() holds {lf.display(h)} (line {h.line}) and "
                                                       "calls " + " -> ".join(f"{x}()" for x in chain),),
                                               f.name, path, h.line)
                if f.name not in seen:
                    seen.add(f.name)
                    nxt.append((f.name, (f.name,) + chain))
        frontier = nxt
    return out
