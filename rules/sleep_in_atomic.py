"""sleep-in-atomic (LCK003): a sleeping call added inside a spinlock/RCU section."""
from __future__ import annotations

import re
from collections import Counter

from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

from reviewbot.analysis import lockflow as lf


class SleepInAtomic(Rule):
    """Flags a call that can sleep, made while a spinlock or rwlock is
    held, bottom halves or interrupts are disabled, or inside an RCU
    read-side section, when the patch introduces the combination.

    ## What it does
    Walks each function the patch touches and, for every call that can
    sleep (`mutex_lock*`, `down*`, `msleep`, `usleep_range`, `schedule*`,
    `wait_event*`, `wait_for_completion*`, `synchronize_rcu`, `lock_sock`,
    `copy_{from,to}_user`, `vmalloc`, any allocation passed `GFP_KERNEL`,
    `GFP_USER`, `GFP_NOFS` or `GFP_NOIO`, or a same-file function that
    does one of these unconditionally), checks which atomic contexts are
    held on every path to it.  Pairs already present in the pre-image of
    the function are not reported.  It also catches the other direction:
    a function the patch makes sleep while a same-file caller calls it
    under a spinlock.  `GFP_ATOMIC` and `GFP_NOWAIT` are fine.

    With the tree's knowledge base (`reviewbot index`) it also follows
    calls out of the file: a call under a spinlock to a function that may
    sleep several calls down (the chain is named), and a sleeping call
    added to a function the tree runs in atomic context: an interrupt
    handler, a timer, softirq or NAPI callback, a callback installed as an
    skb destructor or a USB completion, or a function one of its callers
    (up to three calls up) reaches with a spinlock held or in an RCU
    read-side section (the caller and the path are named).  A sleeping call
    the patch takes out of an `if` counts as added.

    ## Why is this bad?
    Sleeping with a spinlock held or in an RCU read-side section is a bug
    ("BUG: sleeping function called from invalid context"); it can
    deadlock or corrupt RCU.  It often hides on paths that rarely sleep
    (an allocation that only reclaims under memory pressure).

    ## Example
        raw_spin_lock_bh(&bucket->lock);
       -elem_new = sock_hash_alloc_elem(htab, key, key_size, hash, sk, elem);
        ...
        new = bpf_map_kmalloc_node(&htab->map, htab->elem_size,
       -			   GFP_ATOMIC | __GFP_NOWARN,
       +			   GFP_KERNEL,

    ## Use instead
    Allocate before taking the lock, or use GFP_ATOMIC/GFP_NOWAIT; move
    mutexes and waits out of the locked section.

    ## References
    Documentation/locking/locktypes.rst; CONFIG_DEBUG_ATOMIC_SLEEP.
    """

    code = "LCK003"
    name = "sleep-in-atomic"
    family = "locking"

    severity = "error"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        kb = None
        for fv, touched, post in lf.touched_files(ctx):
            if kb is None:
                kb = ctx.knowledge or False
            pre = lf.image(fv, "pre")
            for fn, added in touched:
                yield from self._direct(fv, post, pre, fn, added)
                yield from self._callers(fv, post, pre, fn, added)
                if kb:
                    yield from self._tree_sleepers(fv, post, pre, fn, added, kb)
                    yield from self._atomic_context(fv, post, pre, fn, added, kb)

    # -- with the tree's knowledge (reviewbot index) -------------------------
    def _tree_sleepers(self, fv, post, pre, fn, added, kb):
        """A call under a spinlock (or in an RCU section) to a function of
        the tree that may sleep, several calls down: the chain is named."""
        def sites(info):
            out = []
            fl = lf.lock_flow(info, fn.name)
            for c in (fl.calls if fl is not None else ()):
                if lf.sleeping_call(c.name, c.args) or c.name in info.byname:
                    continue        # the direct rule's (or a same-file function's)
                held = [h for h in lf.must_held(c.states) if h.kind in lf.ATOMIC_KINDS and h.key != "srcu"]
                if held:
                    out.append((c, max(held, key=lambda h: h.line)))
            return out
        now = sites(post)
        if not now:
            return
        before = Counter((c.name, h.key) for c, h in sites(pre))
        seen = Counter()
        for c, h in now:
            sig = (c.name, h.key)
            seen[sig] += 1
            if seen[sig] <= before[sig]:
                continue
            chain = _useful_chain(kb, c.name, fv.path)
            if not chain:
                continue
            why = f"{c.name}() ({_chain_text(chain)})"
            conf = "medium" if post.shown is None or post.decided(h.line, c.line) else "low"
            if len(chain) > 4:
                conf = "low"        # a long chain: more likely a path this caller never takes
            yield self.finding(fv.path, lf.span_added(c.node, added) or c.line, _message(fn.name, why, h),
                               related=[Location(fv.path, h.line, f"{lf.display(h)} taken here")],
                               confidence=conf)

    def _atomic_context(self, fv, post, pre, fn, added, kb):
        """A call that may sleep, added to a function the tree runs in
        atomic context: an interrupt handler, a timer or softirq callback,
        a callback called under a spinlock, or a function a caller (up to
        three calls up) calls with a spinlock held or in an RCU section.
        A sleeping call counts as added also when the patch drops a
        condition the pre-image made it wait for."""
        if not fn.call_names:
            return

        def atomic_where():
            ctxs = [(c, w) for c, w in kb.contexts(fn.name, fv.path) if c in ("hardirq", "softirq", "atomic")]
            if ctxs:
                ctx_name, witness = ctxs[0]
                what = {"hardirq": "hard-interrupt context", "softirq": "softirq context"}.get(ctx_name,
                                                                                          "atomic context")
                return f"{fn.name}() runs in {what} ({witness})"
            got = kb.atomic_caller(fn.name, fv.path)
            if got is None:
                return ""
            chain, why = got
            down = f"; {' -> '.join(n + '()' for n in chain[1:])}" if len(chain) > 2 else ""
            return f"{fn.name}() can be reached in atomic context: {why}{down}"

        def sleepers(flow):
            out = []
            for c in flow.calls:
                why = lf.sleeping_call(c.name, c.args)
                if why:
                    out.append((c, why))
                elif c.name not in ("might_sleep",) and c.name not in post.byname:
                    chain = _useful_chain(kb, c.name, fv.path)
                    if chain and len(chain) <= 4:
                        out.append((c, f"{c.name}() ({_chain_text(chain)})"))
            return out

        # whether the function can be atomic first (a few queries): the
        # lock flows and the tree's chains only then
        where = atomic_where()
        if not where:
            return
        fl = lf.flow_of(post, fn.name)
        if fl is None or not any(lf.span_added(c.node, added) is not None for c in fl.calls):
            return      # the patch added no call to this function
        old = lf.flow_of(pre, fn.name)
        now = sleepers(fl)
        if not now:
            return
        before = Counter()
        guards_before: dict[str, list] = {}
        if old is not None:
            for c, why in sleepers(old):
                before[why] += 1
                guards_before.setdefault(why, []).append(_guards(c.node))
        seen = Counter()
        for c, why in now:
            seen[why] += 1
            at = lf.span_added(c.node, added)
            if at is None:
                continue
            if seen[why] <= before[why]:
                # the same call was there: new only when the patch took
                # away a condition it was made under
                g = _guards(c.node)
                if not all(g < pg for pg in guards_before.get(why, ())):
                    continue
            msg = (f"{why} can sleep, but {where}. "
                   f"Is there a non-sleeping variant, or can this move to process context?")
            yield self.finding(fv.path, at, msg, confidence="medium")
            return

    def _sites(self, info, name):
        out = []
        fl = lf.lock_flow(info, name)
        if fl is None:
            return out      # never in an atomic section of its own
        for c in fl.calls:
            why = lf.sleeping_call(c.name, c.args)
            via = None
            if not why:
                summ = info.summaries.get(c.name)
                if summ is None or not summ.sleeps or c.name == name:
                    continue
                why, via = f"{c.name}() (which calls {summ.sleeps})", summ
            held = [h for h in lf.must_held(c.states) if h.kind in lf.ATOMIC_KINDS and h.key != "srcu"]
            if not held:
                continue
            h = max(held, key=lambda h: h.line)
            out.append((c, why, via, h))
        return out

    def _direct(self, fv, post, pre, fn, added):
        sites = self._sites(post, fn.name)
        if not sites:
            return
        before = Counter((c.name, h.key) for c, _, _, h in self._sites(pre, fn.name))
        now = Counter()
        for c, why, via, h in sites:
            sig = (c.name, h.key)
            now[sig] += 1
            if now[sig] <= before[sig]:
                continue
            # new in this function (the counts above): the call, the lock,
            # or a release the patch took away in between
            in_call = lf.span_added(c.node, added)
            line = in_call or (h.line if h.line in added else c.line)
            conf = "high" if via is None else "medium"
            if post.shown is not None:
                # from the hunks alone: a gap between the lock and the call
                # may release it
                conf = "medium" if post.decided(h.line, c.line) else "low"
            yield self.finding(fv.path, line, _message(fn.name, why, h),
                               related=[Location(fv.path, h.line, f"{lf.display(h)} taken here")],
                               confidence=conf)

    def _callers(self, fv, post, pre, fn, added):
        """The patch makes `fn` sleep; does a caller hold a spinlock?"""
        summ = post.summaries.get(fn.name)
        if summ is None or not summ.sleeps:
            return
        at = next((ln for ln in range(summ.sleep_line, summ.sleep_end + 1) if ln in added), None)
        if at is None:
            return
        old = pre.summaries.get(fn.name)
        if old is not None and old.sleeps:
            return
        needle = fn.name.encode()
        for other in post.functions:
            # (the text first: most functions of a file never name it)
            if other.name == fn.name or needle not in (other.node.text or b"") \
                    or fn.name not in other.call_names or not lf.may_lock(post, other.name):
                continue
            start = post.byname[other.name].start
            for name, c_line, h in lf.digest(post, other.name, _atomic_calls) or ():
                if name != fn.name:
                    continue
                c_line += start
                h = h._replace(line=h.line + start)
                msg = (f"{summ.sleeps} can sleep, and {other.name}() calls {fn.name}() with "
                       f"{lf.display(h)} held (taken by {h.call}()). "
                       + _advice(summ.sleeps, h))
                yield self.finding(fv.path, at, msg,
                                   related=[Location(fv.path, c_line, f"{other.name}() calls {fn.name}() here"),
                                            Location(fv.path, h.line, f"{lf.display(h)} taken here")])
                return


def _guards(node) -> frozenset:
    """The conditions of the `if` statements a call is made under, as text."""
    out = []
    n = node.parent
    while n is not None and n.type != "function_definition":
        if n.type == "if_statement":
            cond = n.child_by_field_name("condition")
            if cond is not None and not (cond.start_byte <= node.start_byte < cond.end_byte):
                out.append(cond.text)
        n = n.parent
    return frozenset(out)


def _atomic_calls(info, fl, start: int) -> tuple:
    """(callee, line, innermost atomic context held on every path) of the
    calls of a flow made in atomic context, lines relative to `start`."""
    out = []
    for c in fl.calls if fl is not None else []:
        held = [h for h in lf.must_held(c.states) if h.kind in lf.ATOMIC_KINDS and h.key != "srcu"]
        if not held:
            continue
        h = max(held, key=lambda h: h.line)
        out.append((c.name, c.line - start, h._replace(line=h.line - start)))
    return tuple(out)


def _advice(why: str, h) -> str:
    if "GFP_" in why:
        return "Should this allocation use GFP_ATOMIC (or GFP_NOWAIT), or happen before the lock is taken?"
    if h.key in lf.RCU_KEYS:
        return "Can this move out of the RCU read-side section?"
    return "Can this move out of the locked section?"


def _message(fname: str, why: str, h) -> str:
    if h.key in lf.RCU_KEYS:
        where = f"inside the RCU read-side section that {h.call}() opens"
    elif h.key in lf.PSEUDO:
        where = f"with {lf.display(h)} (by {h.call}())"
    else:
        where = f"with {lf.display(h)} held (taken by {h.call}())"
    return f"{why} can sleep, but {fname}() calls it {where}. " + _advice(why, h)


def _chain_text(chain: list[str]) -> str:
    """A may-sleep witness chain in one phrase: 'it calls a(), which calls
    msleep()' (the tree knowledge base's steps, caller first)."""
    import re
    names = [m.group(1) + "()" for m in (re.search(r"calls (\w+)\(\)", s) for s in chain) if m]
    if not names:
        return "which may sleep"
    return "it calls " + ", which calls ".join(names)


# what the chain of a may-sleep answer must not go through: the lock
# primitives themselves (their PREEMPT_RT forms sleep by design), lockdep
# and debugging paths, reporting helpers
_NOT_SLEEPERS = re.compile(r"^(_*raw_|_*spin_|_*read_|_*write_|rt_|_*rcu_|lock_|__lock|lockdep|local_|preempt_|"
                           r"print|dump_|panic|warn|__warn|debug_|kasan|kcsan|kmsan|trace_|"
                           r"migrate_|__set_cpus|mutex_unlock|up$|up_|complete)")


def _useful_chain(kb, name: str, path: str):
    """kb.may_sleep(), unless the callee is a lock primitive or the chain
    runs through RT-only, debugging or reporting code."""
    if name in lf.ACQUIRE or name in lf.RELEASE or name in lf.TRYLOCK or _NOT_SLEEPERS.match(name):
        return None
    chain = kb.may_sleep(name, path)
    if not chain:
        return None
    for step in chain:
        m = re.search(r"calls (\w+)\(\)", step)
        if m and _NOT_SLEEPERS.match(m.group(1)) and m.group(1) not in ("might_sleep",):
            return None
    return chain
