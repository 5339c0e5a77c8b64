"""unlock-not-held (LCK007): a lock released on a path where it is not held."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.analysis import lockflow as lf
from reviewbot.analysis import lockpairs as lp
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location


class UnlockNotHeld(Rule):
    """Flags an unlock that the patch leaves on a path where the lock is
    no longer (or not yet) held: a double unlock, or an unlock after an
    early exit from the locked section.

    ## What it does
    Follows every path through each function the patch touches (the same
    walk as lock-imbalance: branches, `goto` ladders, loops, trylocks,
    `guard()`) and, at each release call (`spin_unlock*()`,
    `mutex_unlock()`, `up_*()`, `rcu_read_unlock*()`, `release_sock()`,
    wrappers such as `iio_device_release_direct_mode()`, any
    `X_unlock()` whose `X_lock()` the function also calls, and pairs of
    other files the tree's knowledge base vouches for, such as
    `dm_put_live_table()` after `dm_get_live_table()`), checks whether
    the lock is held on some path that reaches it.  When it is held on
    none, although the function takes that lock elsewhere, the release is
    reported, unless the pre-image already had the same one.  Functions
    that are meant to drop a lock their caller took (annotated
    `__releases()`, or named `*_unlock`) are skipped.

    ## Why is this bad?
    Unlocking a lock that is not held corrupts it: a mutex warns and may
    let two tasks in, a spinlock's count goes wrong, an RCU read-side
    nesting count underflows.  It usually comes from a new error path that
    unlocks and then falls into the common unlock below.

    ## Example
         mutex_lock(&data->mutex);
         ret = yas530_measure(yas5xx, &t, &x, &y1, &y2);
        +mutex_unlock(&data->mutex);
         if (ret)
                 goto out_unlock;
         ...
         out_unlock:
         mutex_unlock(&data->mutex);

    ## Use instead
    Release once on every path: jump to the common unlock label, or
    return before it.

    ## References
    Documentation/locking/lockdep-design.rst ("bad unlock balance").
    """

    code = "LCK007"
    name = "unlock-not-held"
    family = "locking"
    severity = "error"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        kb, pairs = None, {}
        for fv, touched, post in lf.touched_files(ctx):
            pre = None
            for fn, changed in touched:
                ext = {}
                if lp.pair_candidates(post, fn):
                    if kb is None:
                        kb = ctx.knowledge or False
                    ext = lp.tree_pairs(kb, post, fn, pairs) if kb else {}
                if kb is None:
                    kb = ctx.knowledge or False
                got = _unheld(_flow(post, fn.name, ext), ext, kb, post)
                if not got:
                    continue
                if pre is None:
                    pre = lf.image(fv, "pre")
                old = {(key, line) for key, line, _ in _unheld(_flow(pre, fn.name, ext), ext, kb, pre)}
                for key, line, last in got:
                    if (key, fv.old_line(line)) in old:
                        continue
                    if line not in changed and (last is None or last not in changed):
                        continue        # neither the unlock nor the release before it is new
                    yield self._finding(fv, post, fn, key, line, last)

    def _finding(self, fv, info, fn, key, line, last):
        fl = lf.flow_of(info, fn.name)
        c = next(c for c in fl.calls if c.line == line)
        what = c.name + "(" + (c.args[0].strip() if c.args else "") + ")"
        if last is not None:
            why = (f"a path that reaches it has already released the lock (line {last}). "
                   f"Is this a double unlock on that path?")
        else:
            why = "no path that reaches it holds the lock. Is it released twice, or before it is taken?"
        msg = f"{fn.name}() calls {what} here, but {why}"
        conf = "high" if info.shown is None else (
            "medium" if info.decided(last or fn.start, line) else "low")
        related = [Location(fv.path, last, "released here first")] if last else []
        return self.finding(fv.path, line, msg, related=related, confidence=conf)


def _flow(info, name, ext):
    """The flow walked with lock flags and the tree's wrapper pairs EXT."""
    if not ext and not lf.may_lock(info, name):
        return None
    return lf.flow_with(info, name, extern=ext)


def _release_key(c, fl, ext) -> str | None:
    """The lock a call releases: a release primitive's, or the pair's of
    a wrapper (X_unlock() beside X_lock(), or a pair the tree vouches for)."""
    if c.name in lf.RELEASE:
        return lf.key_of_call(c.name, lf.RELEASE[c.name], c.args, fl.types)[0]
    pair = ext.get(c.name) or lf.paired_wrapper(c.name, fl.fn.call_names)
    if pair is None or pair[0] != "release" or c.name in lf.TRYLOCK or c.name in lf.ZEROLOCK:
        return None
    return "?" + pair[1] + "(" + (re.sub(r"\s+", "", lf._strip(c.args[0])) if c.args else "") + ")"


def _unheld(fl, ext=None, kb=False, info=None) -> list[tuple[str, int, int | None]]:
    """(key, line of the release, line of a release before it on the way)
    for each release call that no path reaching it holds its lock on."""
    if fl is None or fl.too_complex or lf.fn_skipped_for_balance(fl):
        return []
    ext = ext or {}
    taken = {h.key for h, _ in fl.acquires}
    out = []
    rkey = {}
    for c in fl.calls:
        k = _release_key(c, fl, ext)
        if k is not None:
            rkey[id(c)] = k
    releases = [c for c in fl.calls if id(c) in rkey]
    first_take: dict[str, int] = {}
    for h, _ in fl.acquires:
        first_take[h.key] = min(first_take.get(h.key, h.line), h.line)
    first_release: dict[str, int] = {}
    for c in releases:
        k = rkey[id(c)]
        first_release[k] = min(first_release.get(k, c.line), c.line)
    if _jumps_back(fl):
        return []           # a goto back up: the walk's paths are not all the paths
    for c in releases:
        if not c.states:
            continue        # unreachable
        key = rkey[id(c)]
        if key in ("irq", "bh", "preempt") or key not in taken:
            continue
        if key in fl.conditional or key in fl.uncertain and not lp.handed_only(fl, key, kb, ext, info):
            continue
        if first_release.get(key, 0) < first_take.get(key, 0):
            continue        # dropped first: the caller holds it (drop and retake)
        holding = [s for s in c.states if any(h.key == key for h in s)]
        if len(holding) == len(c.states):
            continue
        before = [r.line for r in releases if r.line < c.line and r is not c and rkey[id(r)] == key]
        if holding and not before:
            continue        # some paths never took it: not this rule's business
        out.append((key, c.line, max(before) if before else None))
    return out


def _jumps_back(fl) -> bool:
    labels = {}
    gotos = []
    for n in cparse.walk(fl.fn.node):
        if n.type == "labeled_statement":
            lab = n.child_by_field_name("label")
            if lab is not None:
                labels[cparse.node_text(lab)] = cparse.line_of(n)
        elif n.type == "goto_statement":
            lab = n.child_by_field_name("label")
            if lab is not None:
                gotos.append((cparse.node_text(lab), cparse.line_of(n)))
    return any(labels.get(name, 0) and labels[name] < line for name, line in gotos)
