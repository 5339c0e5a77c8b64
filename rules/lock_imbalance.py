"""lock-imbalance (LCK002): a new path leaves a function with a lock held."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.analysis import lockpairs as lp
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

from reviewbot.analysis import lockflow as lf


class LockImbalance(Rule):
    """Flags a return (or a `goto` to a label past the unlock) that the
    patch introduces while a lock taken in the same function is still held.

    ## What it does
    Follows every path through each function the patch adds or changes,
    tracking the locks the function takes (`spin_lock*`, `mutex_lock*`,
    `down_*`, `lock_sock`, `rcu_read_lock*`, same-file lock wrappers).
    A path that returns with such a lock still held, when the function
    releases that lock on other paths, is reported, unless the pre-image
    of the function already had the same imbalance.  Trylock and
    `mutex_lock_interruptible()` results are followed per branch;
    `guard()`/`scoped_guard()` need no unlock; functions whose name says
    they return with the lock held (`*_lock`, `*_start`, ...) are skipped,
    as are locks taken conditionally in one branch and released in
    another, unless a local flag follows the lock (`locked = true;` beside
    the lock, `if (locked) unlock();`), which the walk then splits on.
    A lock taken by a wrapper on an object (`l2cap_chan_lock(chan)`)
    stays held when the object goes to calls known to release nothing
    (same-file helpers, or the tree's knowledge base); wrappers of other
    files called in pairs (`dm_get_live_table()`/`dm_put_live_table()`)
    count as a lock when the knowledge base vouches for them.
    Functions entered with a lock held are walked with it: annotated
    `__releases(X)`, a failing path that keeps X while others release it
    is reported; annotated `__must_hold(X)` or asserting
    `lockdep_assert_held(X)` first, a path that returns with X released
    while the others keep it.

    ## Why is this bad?
    A lock left held on an error path deadlocks the next taker; an RCU
    read-side section left open stalls grace periods and trips lockdep.
    Early returns added inside an existing locked section are the classic
    way this slips in.

    ## Example
        raw_spin_lock_bh(&stab->lock);
        osk = stab->sks[idx];
       +if (osk == sk)
       +	return -EEXIST;

    ## Use instead
        if (osk == sk) {
                ret = -EEXIST;
                goto out_unlock;
        }

    ## References
    Documentation/locking/lockdep-design.rst;
    scripts/coccinelle/locks/mini_lock.cocci (and why netdev dropped it:
    flag only what the patch introduces).
    """

    code = "LCK002"
    name = "lock-imbalance"
    family = "locking"

    severity = "error"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        self._kb = None
        self._pairs = {}
        for fv, touched, post in lf.touched_files(ctx):
            pre = None
            for fn, added in touched:
                ext = self._tree_pairs(ctx, post, fn)
                got = self._leaks(ctx, post, fn.name, ext)
                if not got:
                    continue
                if pre is None:
                    pre = lf.image(fv, "pre")
                # the same lock leaking out of the same statement before
                # the patch is not news (pre-image lines by the diff)
                old = {(h.key, via or ex.line) for h, ex, via in self._leaks(ctx, pre, fn.name, ext)}
                seen = set()
                for h, ex, via in sorted(got, key=lambda t: (t[2] or t[1].line, t[0].line)):
                    if (h.key, fv.old_line(via or ex.line)) in old or h.key in seen:
                        continue
                    if ex.line in post.synth and not via:
                        continue        # the end of a function rebuilt from hunks: not a real exit
                    seen.add(h.key)
                    yield self._finding(fv, fn, h, ex, via, added)

    def _leaks(self, ctx, info, name, ext=None):
        """lf.leaks() of the flow walked with lock flags, where a lock is
        not 'maybe released' for having its object handed to a call the
        tree says releases nothing; for a function annotated __releases(X),
        the paths that keep X, when others release it."""
        if not lf.may_lock(info, name) and not ext:
            return []
        fl = lf.flow_with(info, name, extern=ext)
        if fl is None or fl.too_complex:
            return []
        ann = _annotation(fl.fn.node, "__releases")
        if fl.annotated:
            must = _annotation(fl.fn.node, "__must_hold")
            if must and not ann and not _annotation(fl.fn.node, "__acquires"):
                return self._dropped(info, name, must, "__must_hold", ext)
            both = _annotation(fl.fn.node, "__acquires") or must
            return self._kept(ctx, info, name, ann) if ann and not both else []
        held = _asserted(fl)
        out = self._dropped(info, name, held, "lockdep_assert_held", ext) if held else []
        if lf.fn_skipped_for_balance(fl):
            return out
        released = fl.released
        for ex in fl.exits:
            val = lf.return_value(fl, ex.line)
            if val is not None and val != "" and not lf._ERRORISH.match(val):
                continue      # success-looking returns may legitimately keep a lock
            for st in ex.states:
                for h in st:
                    if h.how == "guard" or h.kind in ("irq", "bh", "preempt") or h.key not in released:
                        continue
                    if h.key in fl.conditional and h.key not in fl.flagged:
                        continue
                    if h.key in fl.uncertain and not lp.handed_only(fl, h.key, self._kbv(ctx), ext, info):
                        continue
                    out.append((h, ex, _via(fl, ex, st)))
        return out

    def _dropped(self, info, name, expr, why, ext):
        """Exits of a function its callers call with EXPR held (annotated
        __must_hold(), or asserting lockdep_assert_held() first) that
        return with the lock released, when its other exits keep it: the
        caller goes on as if it held it, and releases it again."""
        fl0 = lf.flow_with(info, name, extern=ext)
        key, lexpr = lf.key_of_call("spin_unlock", "spin", (expr,), fl0.types)
        kinds = [lf.RELEASE[c.name] for c in fl0.calls if c.name in lf.RELEASE and
                 lf.key_of_call(c.name, lf.RELEASE[c.name], c.args, fl0.types)[0] == key]
        if not kinds or key in lf.PSEUDO or not lf.Held(key, "", 0, "", "").stable:
            return []
        h0 = lf.Held(key, kinds[0], fl0.fn.start, lexpr, why, "held")
        fl = lf.flow_with(info, name, entry=(h0,), extern=ext)
        if fl is None or fl.too_complex or key in fl.uncertain or key in fl.conditional or _lock_passed(fl, key):
            return []
        drop = [(ex, st) for ex in fl.exits for st in ex.states if not any(h.key == key for h in st)]
        if not drop or len(drop) == sum(len(ex.states) for ex in fl.exits):
            return []       # dropped on every path: a function meant to release it
        return [(h0, ex, _via(fl, ex, st)) for ex, st in drop]

    def _kept(self, ctx, info, name, expr):
        """Exits of a function annotated __releases(EXPR) that still hold
        that lock, when the function releases it on other paths."""
        fl0 = lf.flow_with(info, name)
        key, lexpr = lf.key_of_call("spin_unlock", "spin", (expr,), fl0.types)
        kinds = [lf.RELEASE[c.name] for c in fl0.calls if c.name in lf.RELEASE and
                 lf.key_of_call(c.name, lf.RELEASE[c.name], c.args, fl0.types)[0] == key]
        if not kinds or key in lf.PSEUDO or not lf.Held(key, "", 0, "", "").stable:
            return []
        h0 = lf.Held(key, kinds[0], fl0.fn.start, lexpr, "__releases", "entry")
        fl = lf.flow_with(info, name, entry=(h0,))
        if fl is None or fl.too_complex or key in fl.uncertain or key in fl.conditional:
            return []
        if _lock_passed(fl, key):
            return []
        keep = [(ex, st) for ex in fl.exits for st in ex.states if h0 in st]
        if not keep or len(keep) == sum(len(ex.states) for ex in fl.exits):
            return []       # released on no path: not a lock this function drops
        # the kernel's __releases() is loose: a function may keep the lock
        # when it fails (do_signal_stop() returns false with siglock held).
        # A failing path keeping it is news when it returns an errno, or
        # when another failing path releases it.
        other = any(_failing(fl, ex) and all(h0 not in st for st in ex.states) for ex in fl.exits)
        return [(h0, ex, _via(fl, ex, st)) for ex, st in keep
                if _failing(fl, ex) and (other or re.match(r"^-\s*E[A-Z0-9]+$", lf.return_value(fl, ex.line) or ""))]

    def _kbv(self, ctx):
        if self._kb is None:
            self._kb = ctx.knowledge or False
        return self._kb

    def _tree_pairs(self, ctx, info, fn) -> dict:
        if not lp.pair_candidates(info, fn) or not self._kbv(ctx):
            return {}
        return lp.tree_pairs(self._kb, info, fn, self._pairs)

    def _finding(self, fv, fn, h, ex, via, added):
        fl = lf.flow_of(lf.image(fv, "post"), fn.name)
        line = lf.report_line([via, ex.line, h.line], added, via or ex.line)
        if via:
            stmt = _stmt_text(fn.node, via, "goto_statement")
            path = f"the '{stmt}' path"
        else:
            val = lf.return_value(fl, ex.line)
            path = f"the 'return {val}' path" if val else "the path that returns here"
        taken = "the wrapper " + h.call + "()" if h.how.startswith("wrap:") else h.call + "()"
        pair = next((p for (a, r), p in self._pairs.items() if p and a == h.call), None)
        if pair:
            cls = ("an RCU read-side section" if pair[1] == "rcu" else
                   f"{pair[0]} ({pair[1]})")
            msg = (f"{fn.name}() enters {cls} with {h.call}({h.expr}, ...), which the tree's "
                   f"{h.call}() returns holding on every path and {pair[2]}() releases, but "
                   f"{path} leaves the function without calling {pair[2]}(). "
                   f"Is a {pair[2]}() missing on this path?")
        elif h.how == "held":
            how = ("is annotated __must_hold(" + h.expr + ")" if h.call == "__must_hold" else
                   "asserts with lockdep_assert_held() that its caller holds " + h.expr)
            msg = (f"{fn.name}() {how}, and its other paths return with it held, but {path} "
                   f"returns after releasing it: the caller goes on as if it held it, and "
                   f"releases it again. Is the unlock on this path (or a re-lock) missing?")
        elif h.how == "entry":
            msg = (f"{fn.name}() is annotated __releases({h.expr}) and releases it on the "
                   f"other paths, but {path} leaves the function with it still held. "
                   f"Is an unlock missing on this path?")
        elif h.key in lf.RCU_KEYS:
            unlock = h.call.replace("_lock", "_unlock", 1) if "_lock" in h.call else "rcu_read_unlock"
            msg = (f"{fn.name}() enters an RCU read-side section with {taken}, but {path} "
                   f"leaves the function without the matching unlock. Is an "
                   f"{unlock}() missing there?")
        else:
            msg = (f"{fn.name}() takes {_display(h)} with {taken}, but {path} leaves the "
                   f"function with it still held, while the other paths release it. "
                   f"Is an unlock missing on this path?")
        related = [Location(fv.path, h.line, f"{_display(h)} taken here")]
        if via and ex.line != via:
            related.append(Location(fv.path, ex.line, "the function returns here"))
        info = lf.image(fv, "post")
        if info.shown is not None:
            # from the hunks alone: medium when the lines from the lock to
            # the exit are all shown, low when a gap lies between
            conf = "medium" if info.decided(h.line, via or ex.line) else "low"
        else:
            conf = "high" if line in added and h.stable else "medium"
        return self.finding(fv.path, line, msg, related=related, confidence=conf)


def _lock_passed(fl, key) -> bool:
    """The lock (or an *unlock callback) goes to a call other than a lock
    primitive: that call may drop or retake it."""
    for c in fl.calls:
        if c.name in lf.RELEASE or c.name in lf.ACQUIRE or c.name.startswith("lockdep_"):
            continue
        for a in c.args:
            a = a.strip()
            if lf.lock_key(a, fl.types) == key or lp._RELEASE_WORD.search(a) and re.match(r"^\w+$", a):
                return True
    return False


_ASSERT_HELD = frozenset(("lockdep_assert_held", "lockdep_assert_held_write", "lockdep_assert_held_read",
                          "lockdep_assert_held_once"))


def _asserted(fl) -> str | None:
    """The lock a function asserts its caller holds, with a
    lockdep_assert_held() as its first statement after the declarations
    (after a call or a return, the lock may be the function's own doing,
    comedi_alloc_board_minor() locked dev->mutex)."""
    body = fl.fn.node.child_by_field_name("body")
    if body is None:
        return None
    for st in body.named_children:
        if st.type in ("comment", "declaration"):
            if st.type == "declaration" and cparse.query_nodes(st, "call_expression"):
                return None
            continue
        if st.type == "expression_statement" and st.named_children and \
                st.named_children[0].type == "call_expression":
            call = st.named_children[0]
            args = lf._call_args(call)
            if lf._call_name(call) in _ASSERT_HELD and len(args) == 1:
                return args[0]
        return None
    return None


def _failing(fl, ex) -> bool:
    """An exit returning an error-looking value (or nothing)."""
    val = lf.return_value(fl, ex.line)
    return val is None or val == "" or bool(lf._ERRORISH.match(val))


def _display(h) -> str:
    if lp.object_wrapper(h) and h.how != "entry":
        return f"the lock of '{h.expr}'"
    return lf.display(h)


def _via(fl, ex, st) -> int | None:
    """The goto that led state ST to exit EX: the walker remembers the
    first goto each state took, which is only this exit's way when its
    label stands between that goto and the exit."""
    via = ex.via.get(st)
    if via is None:
        return None
    for n in cparse.walk(fl.fn.node):
        if n.type == "goto_statement" and cparse.line_of(n) == via:
            lab = n.child_by_field_name("label")
            name = cparse.node_text(lab) if lab is not None else ""
            for m in cparse.walk(fl.fn.node):
                if m.type == "labeled_statement":
                    ml = m.child_by_field_name("label")
                    if ml is not None and cparse.node_text(ml) == name:
                        return via if via < cparse.line_of(m) <= ex.line else None
    return via


def _annotation(fn_node, name: str) -> str | None:
    """The argument of a sparse annotation (NAME(expr)) on the function's
    declarator, or None."""
    decl = fn_node.child_by_field_name("declarator")
    if decl is None:
        return None
    for n in cparse.walk(decl):
        if n.type == "call_expression" and lf._call_name(n) == name:
            # the argument list as text: `&ffs->ev.waitq.lock` does not
            # always parse as an expression there
            argl = n.child_by_field_name("arguments")
            arg = cparse.node_text(argl).strip()[1:-1].strip() if argl is not None else ""
            return arg if arg and "," not in arg else None
    return None


def _stmt_text(fn_node, line: int, typ: str) -> str:
    for n in cparse.walk(fn_node):
        if n.type == typ and cparse.line_of(n) == line:
            return lf.first_line_text(n).rstrip(";")
    return "goto"
