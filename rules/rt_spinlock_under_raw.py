"""rt-spinlock-under-raw (RT003): a spinlock_t taken where PREEMPT_RT
cannot sleep: under a raw spinlock, with interrupts off, in a
non-threaded interrupt handler."""
from __future__ import annotations

import re
from collections import OrderedDict
from functools import lru_cache

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import matches_any

from reviewbot.analysis.rt import IRQ_OFF, PREEMPT_OFF, RAW_LOCKS, SLEEPING_SPIN, functions_touched, walk_held

# architectures without PREEMPT_RT support: their irq-off + spin_lock is not an RT bug
RT_ARCHES = ("x86", "arm", "arm64", "powerpc", "riscv", "loongarch")
SKIP_GLOBS = ("kernel/locking/*", "lib/locking-selftest.c", "tools/*")
_REQ_IRQ_RE = LazyPattern(r"\b(?:devm_)?request_(?:threaded_)?irq\s*\(([^;]*?)\)\s*;", re.S)


class RtSpinlockUnderRaw(Rule):
    """Flags a `spin_lock*()` (or `read_lock*()`/`write_lock*()`) that the
    patch places under a `raw_spin_lock*()`, inside `local_irq_save()` /
    `local_irq_disable()` or `preempt_disable()`, or in an interrupt handler
    requested with IRQF_NO_THREAD.

    ## What it does
    Walks each function the patch touches in source order, keeping the set
    of held locks and irq/preempt-off sections, and reports a
    spinlock_t/rwlock_t acquisition made while one of those atomic contexts
    is in force, when the patch adds either the acquisition or the atomic
    context (pairs already in the pre-image are not reported).  It also
    follows one level of calls to functions of the same file taken under a
    raw lock or with interrupts off (medium confidence).

    ## Why is this bad?
    On PREEMPT_RT, spinlock_t and rwlock_t are sleeping locks (rt_mutex
    based).  Taking one while a raw_spinlock_t is held, with interrupts
    disabled, with preemption disabled, or in real hard-interrupt context
    is "sleeping in atomic context": lockdep and might_sleep() complain, and
    the kernel can deadlock.  Locking nesting rules:
    raw_spinlock_t < spinlock_t < sleeping locks.

    ## Example
         	raw_spin_lock_irqsave(&bank->lvl_lock[port], flags);
         	...
        +	spin_lock(&bank->dbc_lock[port]);
        +	bank->dbc_cnt[port] = 0;
        +	spin_unlock(&bank->dbc_lock[port]);
         	raw_spin_unlock_irqrestore(&bank->lvl_lock[port], flags);

    ## Use instead
    Take the spinlock_t outside the raw section, make the inner lock a
    raw_spinlock_t if its sections are short and bounded, or use
    spin_lock_irqsave() instead of local_irq_save() + spin_lock().

    ## References
    Documentation/locking/locktypes.rst ("Lock type nesting rules")
    """

    code = "RT003"
    name = "rt-spinlock-under-raw"
    family = "preempt-rt"
    severity = "warning"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            if matches_any(fv.path, SKIP_GLOBS):
                continue
            if fv.path.startswith("arch/") and fv.path.split("/")[1] not in RT_ARCHES:
                continue
            added = fv.added_lines
            nothread = _nothread_handlers(fv.post_text)
            touched = [(fn, pre_fn) for fn, pre_fn in functions_touched(fv) if _may_pair(fn, nothread)]
            if not touched:
                continue
            sleepers = _sleepers(fv.post_tree)
            pre_sleepers = _sleepers(fv.pre_tree) if fv.pre_text else set()
            pre_nothread = _nothread_handlers(fv.pre_text) if fv.pre_text else set()
            for fn, pre_fn in touched:
                pre_keys = set()
                if pre_fn is not None and _may_pair(pre_fn, pre_nothread):
                    pre_keys = {k for k, *_ in _pairs(pre_fn, pre_sleepers, pre_nothread)}
                for key, inner, outer, via in _pairs(fn, sleepers, nothread):
                    if key in pre_keys:
                        continue
                    if inner.line not in added and (outer is None or outer.line not in added):
                        continue
                    yield self._finding(fv.path, fn.name, inner, outer, via)

    def _finding(self, path, fname, inner, outer, via):
        lock = inner.args[0].strip() if inner.args else ""
        if outer is None:
            ctx = f"{fname}() is requested with IRQF_NO_THREAD, so it runs in hard interrupt context even on PREEMPT_RT"
            conf = "high"
        elif outer.name in RAW_LOCKS:
            ctx = f"this runs under {outer.name}({outer.args[0].strip() if outer.args else ''})"
            conf = "high"
        elif outer.name in IRQ_OFF:
            ctx = f"interrupts are disabled here by {outer.name}()"
            conf = "high"
        else:
            ctx = f"preemption is disabled here by {outer.name}()"
            conf = "medium"
        what = f"{inner.name}({lock})" if not via else f"{via}(), which takes a spinlock_t,"
        msg = (f"In {fname}(), {what} is called while {ctx}. On PREEMPT_RT a spinlock_t is a "
               "sleeping lock; can it be taken outside this section, or should the inner lock "
               "be a raw_spinlock_t" + (" (or spin_lock_irqsave() instead of disabling interrupts)"
                                        if outer is not None and outer.name in IRQ_OFF else "") + "?")
        related = [Location(path, outer.line, "atomic section starts here")] if outer is not None else []
        return self.finding(path, inner.line, msg, related=related,
                            confidence=conf if not via else "medium")


_ATOMIC = RAW_LOCKS | IRQ_OFF | PREEMPT_OFF


def _may_pair(fn, nothread) -> bool:
    """False when _pairs(fn, ...) surely yields nothing: the function
    starts no atomic section (and is no IRQF_NO_THREAD handler)."""
    return fn.name in nothread or cparse.calls_any(fn.node, _ATOMIC)


def _sleepers(tree) -> set[str]:
    """The functions of a file that take a spinlock_t (the last of a name
    decides)."""
    last = {f.name: f for f in cparse.functions(tree)}
    return {name for name, f in last.items() if _takes_spin(f.node)}


def _takes_spin(fn_node) -> bool:
    """Does the function take a spinlock_t outside any other section?
    (memoised by the function's text: a file's functions come back in
    every image of a series)"""
    key = (fn_node.text, fn_node.descendant_count)
    got = _TAKES_SPIN.get(key)
    if got is None:
        got = (cparse.calls_any(fn_node, SLEEPING_SPIN)
               and any(c.name in SLEEPING_SPIN and not held for c, held in walk_held(fn_node)))
        _TAKES_SPIN[key] = got
        if len(_TAKES_SPIN) > 8192:
            _TAKES_SPIN.popitem(last=False)
    else:
        _TAKES_SPIN.move_to_end(key)
    return got


_TAKES_SPIN: "OrderedDict[tuple, bool]" = OrderedDict()


def _pairs(fn, sleepers, nothread):
    """Yield (key, inner call, outer call or None, callee name or '')."""
    for c, held in walk_held(fn.node):
        atomic = [h for h in held if h.name in RAW_LOCKS or h.name in IRQ_OFF or h.name in PREEMPT_OFF]
        if c.name in SLEEPING_SPIN:
            if atomic:
                outer = atomic[-1].call
                yield (outer.name, c.name, _k(c)), c, outer, ""
            elif fn.name in nothread:
                yield ("irq", c.name, _k(c)), c, None, ""
        elif c.name in sleepers and c.name != fn.name:
            strong = [h for h in atomic if h.name in RAW_LOCKS or h.name in IRQ_OFF]
            if strong:
                outer = strong[-1].call
                inner = cparse.Call("spin_lock", (), c.line, c.node)
                yield (outer.name, "via", c.name), inner, outer, c.name


def _k(c) -> str:
    return re.sub(r"\s+", "", c.args[0]) if c.args else ""


def _nothread_handlers(text: str) -> set[str]:
    return set(_nothread_handlers_cached(text))


@lru_cache(maxsize=64)
def _nothread_handlers_cached(text: str) -> frozenset[str]:
    out = set()
    if "IRQF_NO_THREAD" not in (text or "") and "IRQF_TIMER" not in (text or ""):
        return frozenset()      # what the loop below needs in a match is not there
    for m in _REQ_IRQ_RE.finditer(text or ""):
        args = [a.strip() for a in m.group(1).split(",")]
        if "IRQF_NO_THREAD" in m.group(1) or "IRQF_TIMER" in m.group(1):
            # handler: the first bare identifier after the irq number (and dev for devm_)
            for a in args[1:3]:
                if re.fullmatch(r"[A-Za-z_]\w*", a) and not a.isupper() and a != "NULL":
                    out.add(a)
                    break
    return frozenset(out)
