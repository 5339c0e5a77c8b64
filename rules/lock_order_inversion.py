"""lock-order-inversion (LCK001): the series takes two locks in the opposite
order of another site (an ABBA hint)."""
from __future__ import annotations

from typing import NamedTuple

from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

from reviewbot.analysis import lockflow as lf
from reviewbot.tree.kbquery import key_matches


class Edge(NamedTuple):
    outer: str          # lock class held
    inner: str          # lock class taken while `outer` is held
    func: str
    line: int           # where `inner` is taken (or the callee that takes it is called)
    outer_line: int
    outer_expr: str
    inner_expr: str
    via: str = ""       # same-file callee that takes `inner`
    maybe: bool = False  # the callee takes `inner` only under a condition


def edges(info: lf.ImageInfo, only: set[str] | None = None) -> list[Edge]:
    """Every "B taken while A held" of an image, one level (and a bounded
    fixpoint) through the same file's callees."""
    key = ("edges", None if only is None else frozenset(only))
    cached = info.memo.get(key)
    if cached is not None:
        return cached
    out = []
    for fn in info.functions:
        if only is not None and fn.name not in only:
            continue
        if not lf.may_lock(info, fn.name):
            continue        # nothing is ever held there: no edges
        got = lf.digest(info, fn.name, _fn_edges)
        if not got:
            continue
        # flow_of() goes by name: a second function of the same name shows
        # the first one's edges (at the first one's lines)
        start = info.byname[fn.name].start
        for e in got:
            out.append(Edge(e.outer, e.inner, e.func, e.line + start, e.outer_line + start,
                            e.outer_expr, e.inner_expr, e.via, e.maybe))
    info.memo[key] = out
    return out


def _fn_edges(info: lf.ImageInfo, fl, start: int) -> tuple:
    """The edges of one function's flow, lines relative to `start`."""
    if fl is None:
        return ()
    out = []
    summaries = info.summaries
    fname = fl.fn.name
    for h, states in fl.acquires:
        if not _usable(h.key):
            continue
        for g in lf.must_held(states):
            if _usable(g.key) and g.key != h.key:
                out.append(Edge(g.key, h.key, fname, h.line - start, g.line - start, g.expr, h.expr,
                                h.how[5:] if h.how.startswith("wrap:") else ""))
    for c in fl.calls:
        summ = summaries.get(c.name)
        if summ is None or c.name == fname or not summ.takes:
            continue
        held = [g for g in lf.must_held(c.states) if _usable(g.key)]
        for g in held:
            for k in sorted(summ.takes):
                if k != g.key and _usable(k):
                    out.append(Edge(g.key, k, fname, c.line - start, g.line - start, g.expr, k, c.name,
                                    k in summ.cond_takes))
    return tuple(out)


def kb_edges(info: lf.ImageInfo, names: set[str], kb, path: str) -> list[Edge]:
    """Edges through calls to functions of other files: "B taken while A
    held" when a call made with A held goes to a function that, itself or
    one call down, takes B (from the knowledge base; `via` names the
    callee, `witness` the steps)."""
    out = []
    for name in sorted(names):
        if not lf.may_lock(info, name):
            continue        # never holds a lock: no call made with one held
        fl = lf.flow_of(info, name)
        if fl is None:
            continue
        for c in fl.calls:
            if c.name in info.byname or c.name == name or c.name in lf.ACQUIRE or c.name in lf.RELEASE \
                    or c.name in lf.TRYLOCK or c.name in lf.ZEROLOCK:
                continue
            held = [g for g in lf.must_held(c.states) if _usable(g.key) and g.how != "cond"]
            if not held:
                continue
            try:
                taken = kb.locks_taken(c.name, path, depth=1)
            except Exception:
                continue
            for t in taken:
                if t.get("kind") in ("rcu", "irq", "bh", "preempt") or t["class"].startswith("@"):
                    continue
                k = t["class"][len("struct "):] if t["class"].startswith("struct ") else t["class"]
                for g in held:
                    if key_matches(g.key, t["class"]) or not _usable(k):
                        continue
                    out.append(_KbEdge(g.key, k, name, c.line, g.line, g.expr, k, c.name, False,
                                       tuple(t["path"])))
    return out


class _KbEdge(NamedTuple):
    outer: str
    inner: str
    func: str
    line: int
    outer_line: int
    outer_expr: str
    inner_expr: str
    via: str
    maybe: bool
    witness: tuple


def _usable(key: str) -> bool:
    return not key.startswith("?") and key not in lf.PSEUDO and key != "sk_lock"


class LockOrderInversion(Rule):
    """Flags a lock order the series introduces (B taken while A is held)
    when the opposite order (A taken while B is held) exists in the same
    file before or after the patch, or elsewhere in the series.

    ## What it does
    For every lock the added code takes, collects the locks already held
    on every path to it, in the function and one level (a bounded
    fixpoint) through callees defined in the same file.  Lock identity
    follows lockdep classes roughly: global locks by name, struct-field
    locks by field (`&sk->sk_callback_lock` and `&osk->sk_callback_lock`
    are one class) and generic fields by struct type (`bucket->lock` with
    `struct bpf_shtab_bucket *bucket` is `bpf_shtab_bucket.lock`).  An
    order edge new in the post-image whose reverse exists is reported
    with both functions named and the other site attached.  With the
    tree's knowledge base, the reverse order is also looked for tree-wide
    (its mined lock order, with the witness path), and a call made with a
    lock held to a function of another file adds the classes that
    function takes (itself or one call down) as edges, each with its
    steps; such an edge whose reverse the tree has is reported at medium,
    naming both witness paths.

    ## Why is this bad?
    Two paths taking the same two locks in opposite orders deadlock when
    they run concurrently (ABBA).  The sockhash fixes of 2018 had to
    restructure `bpf_tcp_close()` because wrapping the hash-list delete in
    the bucket lock under `sk_callback_lock` inverted the order used by
    `sock_hash_delete_elem()`.

    ## Example
        write_lock_bh(&sk->sk_callback_lock);
        while ((link = sk_psock_link_pop(psock))) {
                sock_map_unlink(sk, link);    /* takes bucket->lock */
        ...
        /* while sock_hash_delete_elem() does */
        raw_spin_lock_bh(&bucket->lock);
        sock_map_unref(elem->sk, elem);       /* takes sk_callback_lock */

    ## Use instead
    Take the locks in the established order, or shorten the outer section
    so the inner lock is taken after the outer one is released (pop the
    entry under `sk_callback_lock`, then lock the bucket).

    ## References
    Documentation/locking/lockdep-design.rst;
    https://lore.kernel.org/netdev/ (bpf PATCH 3/6 "sockhash fix omitted
    bucket lock in sock_close", 2018)
    """

    code = "LCK001"
    name = "lock-order-inversion"
    family = "locking"

    severity = "error"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        for fv, touched, post in lf.touched_files(ctx):
            names = {fn.name for fn, _ in touched}
            new = edges(post, names)
            if not new and not (ctx.knowledge and any(lf.may_lock(post, n) for n in names)):
                continue
            pre = lf.image(fv, "pre")
            old = {(e.outer, e.inner, e.func) for e in edges(pre, names)}
            added_by_fn = {fn.name: added for fn, added in touched}
            reported = set()
            for e in new:
                if (e.outer, e.inner, e.func) in old:
                    continue
                if (e.func, e.line) in reported or (e.func, frozenset((e.outer, e.inner))) in reported:
                    continue
                other = self._reverse(ctx, fv, post, pre, e)
                if other is None:
                    got = self._tree_reverse(ctx, fv, post, e)
                    if got is not None:
                        reported.add((e.func, e.line))
                        reported.add((e.func, frozenset((e.outer, e.inner))))
                        yield got
                    continue
                where, rev = other
                reported.add((e.func, e.line))
                reported.add((e.func, frozenset((e.outer, e.inner))))
                added = added_by_fn[e.func]
                line = lf.report_line([e.line, e.outer_line], added, e.line)
                yield self._finding(fv, e, where, rev, line)
            kb = ctx.knowledge
            if not kb:
                continue
            pre_kb = {(e.outer, e.inner, e.func) for e in kb_edges(pre, names, kb, fv.path)}
            for e in kb_edges(post, names, kb, fv.path):
                if (e.outer, e.inner, e.func) in pre_kb or (e.outer, e.inner, e.func) in old:
                    continue
                if (e.func, e.line) in reported or (e.func, frozenset((e.outer, e.inner))) in reported:
                    continue
                witness = kb.order_edge_for_keys(e.inner, e.outer)
                if not witness:
                    continue
                reported.add((e.func, e.line))
                reported.add((e.func, frozenset((e.outer, e.inner))))
                yield self._kb_finding(fv, post, e, witness, added_by_fn[e.func])

    def _tree_reverse(self, ctx, fv, post, e: Edge):
        """The reverse order somewhere else in the tree (the knowledge
        base's lock-order edges, with their witness path)."""
        if e.outer.startswith("?") or e.inner.startswith("?") or e.outer == e.inner:
            return None
        kb = ctx.knowledge
        if not kb:
            return None
        witness = kb.order_edge_for_keys(e.inner, e.outer)
        if not witness:
            return None
        inner = e.inner_expr if not e.via else _cls(e.inner)
        how = f" (through {e.via}())" if e.via else ""
        path = "; ".join(witness[:3])
        msg = (f"{e.func}() now takes {inner}{how} while holding {e.outer_expr}, but elsewhere in "
               f"the tree {_cls(e.outer)} is taken while {_cls(e.inner)} is held: {path}. "
               f"Can these two paths run concurrently on the same objects? That would be an "
               f"ABBA deadlock between {_cls(e.outer)} and {_cls(e.inner)}.")
        line = lf.report_line([e.line, e.outer_line], set(fv.changed_lines), e.line)
        generic = any("." in k for k in (e.outer, e.inner))
        conf = "low" if e.maybe else ("medium" if generic or e.via else "high")
        if post.shown is not None and conf != "low":
            conf = "medium" if post.decided(e.outer_line, e.line) else "low"
        return self.finding(fv.path, line, msg, confidence=conf)

    def _kb_finding(self, fv, post, e: _KbEdge, witness: list[str], added: set[int]):
        """An order through a function of another file (the knowledge
        base's steps) whose reverse the tree's mined lock order has."""
        mine = "; ".join(_short(s) for s in e.witness[:3])
        theirs = "; ".join(_short(s) for s in witness[:4])
        msg = (f"{e.func}() now calls {e.via}() while holding {e.outer_expr}, and {e.via}() takes "
               f"{_cls(e.inner)} ({mine}); but elsewhere in the tree {_cls(e.outer)} is taken while "
               f"{_cls(e.inner)} is held: {theirs}. Can these two paths run concurrently on the same "
               f"objects? That would be an ABBA deadlock between {_cls(e.outer)} and {_cls(e.inner)}.")
        conf = "medium"
        if post.shown is not None and not post.decided(e.outer_line, e.line):
            conf = "low"
        line = lf.report_line([e.line, e.outer_line], added, e.line)
        return self.finding(fv.path, line, msg, confidence=conf,
                            related=[Location(fv.path, e.outer_line, f"{e.outer_expr} taken here")])

    def _reverse(self, ctx, fv, post, pre, e: Edge):
        """(path, Edge) of a site taking e.outer while holding e.inner."""
        def find(info, path, skip_same=False):
            for r in edges(info):
                if r.outer == e.inner and r.inner == e.outer:
                    if skip_same and r.func == e.func and r.line == e.line:
                        continue
                    return path, r
            return None
        hit = find(pre, fv.path)
        if hit:
            return hit
        for other in ctx.all_patches:
            for ofv in other.c_files():
                if other is ctx and ofv is fv:
                    continue
                hit = find(lf.image(ofv, "post"), ofv.path)
                if hit:
                    return hit
        return find(post, fv.path, skip_same=True)

    def _finding(self, fv, e: Edge, path: str, r: Edge, line: int):
        inner = e.inner_expr if not e.via else _cls(e.inner)
        how = f" (through {e.via}())" if e.via else ""
        rhow = f" (through {r.via}())" if r.via else ""
        if r.func == e.func:
            other = f"elsewhere {r.func}() itself takes {_cls(r.inner)} while holding {_cls(r.outer)}{rhow}"
        else:
            other = f"{r.func}() takes {_cls(r.inner)} while holding {_cls(r.outer)}{rhow}"
        msg = (f"{e.func}() now takes {inner}{how} while holding {e.outer_expr}, but {other}. "
               f"Can these two paths run concurrently on the same objects? That would be "
               f"an ABBA deadlock between {_cls(e.outer)} and {_cls(e.inner)}.")
        generic = any("." in k for k in (e.outer, e.inner))
        conf = "medium" if (e.via and r.via and generic) else "high"
        if e.maybe or r.maybe:
            # a callee takes the lock only under a condition (often a flag
            # that exists to avoid exactly this order): keep it out of mail
            conf = "low"
        info = lf.image(fv, "post")
        if info.shown is not None and conf != "low":
            conf = "medium" if info.decided(e.outer_line, e.line) else "low"
        related = [Location(path, r.line, f"{r.func}() takes {_cls(r.inner)} under {_cls(r.outer)} here")]
        return self.finding(fv.path, line, msg, related=related, confidence=conf)


def _cls(key: str) -> str:
    if "." in key:
        typ, fld = key.split(".", 1)
        return f"the {typ} {fld}"
    return key


def _short(step: str) -> str:
    """A witness step without its file position: `f (a/b.c:12) calls g()` -> `f() calls g()`."""
    import re
    return re.sub(r" \([^()]*:\d+\)", "()", step)
