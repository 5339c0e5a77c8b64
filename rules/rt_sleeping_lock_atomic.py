"""rt-sleeping-lock-in-atomic (RT005): a lock that sleeps on PREEMPT_RT
taken where RT code stays atomic, or a raw_spinlock_t demoted to a
spinlock_t."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rt import IRQ_OFF, PREEMPT_OFF, RAW_LOCKS, SLEEPING_SPIN, walk_held
from reviewbot.analysis.rtctx import IRQDATA_SIG, SLEEPABLE_CHIP, atomic_chains, roots
from reviewbot.analysis.rulekit import matches_any
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

RT_ARCHES = ("x86", "arm", "arm64", "powerpc", "riscv", "loongarch")
SKIP_GLOBS = ("kernel/locking/*", "lib/locking-selftest.c", "tools/*", "kernel/irq/*")
_RAW_DECL = LazyPattern(r"\braw_spinlock_t\s+\*?\s*(\w+)|\bDEFINE_RAW_SPINLOCK\s*\(\s*(\w+)")
_SPIN_DECL = LazyPattern(r"(?<!raw_)\bspinlock_t\s+\*?\s*(\w+)|\bDEFINE_SPINLOCK\s*\(\s*(\w+)")


class RtSleepingLockInAtomic(Rule):
    """Flags a `spinlock_t`, `rwlock_t` or `local_lock_t` taken (or memory
    allocated) in a function that runs in a context which stays atomic on
    PREEMPT_RT, and a `raw_spinlock_t` that the patch turns back into a
    `spinlock_t`.

    ## What it does
    Finds, in each touched file, the functions the file itself places in
    an RT-atomic context: irq_chip callbacks (`.irq_mask`, `.irq_unmask`,
    `.irq_ack`, `.irq_eoi`, `.irq_set_type`, `.irq_set_wake`,
    `.irq_enable`, ...; not `.irq_bus_lock`), clockevents callbacks,
    chained handlers, handlers requested with IRQF_NO_THREAD, IRQF_TIMER
    or IRQF_PERCPU, primary handlers of IRQF_ONESHOT threaded irqs,
    per-CPU irq handlers, hrtimer callbacks in a `*_HARD` mode,
    IRQ_WORK_INIT_HARD work, smp_call_function*()/on_each_cpu*() and
    stop_machine() callbacks; follows the file's own calls three levels
    down.  Reports a sleeping-on-RT acquisition or an allocation there
    when the patch adds it, the call leading to it, or the context.  A
    `raw_spinlock_t` (or DEFINE_RAW_SPINLOCK) made a `spinlock_t` is
    reported at its declaration: high confidence when the lock is taken in
    such a context or under a raw lock / with interrupts off, medium when
    the file shows no such place (the patch should say why it may sleep
    now).

    ## Why is this bad?
    On PREEMPT_RT spinlock_t, rwlock_t and local_lock_t are rtmutex-based
    sleeping locks and the memory allocator takes them too.  The irq core
    calls irq_chip callbacks with the raw irq_desc lock held and interrupts
    off, so a spinlock_t there is "BUG: sleeping function called from
    invalid context" (or lockdep's "Invalid wait context") as soon as the
    interrupt is set up.  Locks taken from such paths must be
    raw_spinlock_t; that is why a raw lock is raw.

    ## Example
         static void gpio_siox_irq_ack(struct irq_data *d)
         {
        +	spin_lock_irq(&ddata->irqlock);
         	ddata->irq_status &= ~(1 << d->hwirq);
        +	spin_unlock_irq(&ddata->irqlock);
         }

    ## Use instead
    Make the lock a raw_spinlock_t (short, bounded sections only), move the
    work out of the atomic callback (irq_bus_lock/irq_bus_sync_unlock for
    slow buses, a threaded handler), and allocate beforehand.

    ## References
    Documentation/locking/locktypes.rst ("raw_spinlock_t on RT");
    Documentation/driver-api/gpio/driver.rst ("Infrastructure helpers for
    GPIO irqchips": "use raw_spinlock_t")
    """

    code = "RT005"
    name = "rt-sleeping-lock-in-atomic"
    family = "preempt-rt"
    severity = "warning"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        files = [fv for fv in ctx.c_files() if not matches_any(fv.path, SKIP_GLOBS)
                 and not (fv.path.startswith("arch/") and fv.path.split("/")[1] not in RT_ARCHES)]
        demoted = _demotions(files)
        for name, (path, line) in demoted.items():
            yield self._demotion(name, path, line, files)
        for fv in files:
            added = fv.added_lines
            if not added:
                continue
            if not roots(fv.post_text):
                if not ctx.has_tree:
                    yield from self._by_sections(fv)
                continue
            pre = set()
            if fv.pre_text and roots(fv.pre_text):
                pre = {(c.root.name, c.fn, c.action.key) for c in atomic_chains(fv.pre_tree, fv.pre_text)}
            funcs = {f.name: f for f in cparse.functions(fv.post_tree)}
            groups: dict[str, list] = {}
            for ch in atomic_chains(fv.post_tree, fv.post_text):
                a = ch.action
                if (ch.root.name, ch.fn, a.key) in pre:
                    continue
                if not (a.line in added or ch.root.line in added or any(ln in added for _, ln in ch.path)):
                    continue
                if a.kind == "lock" and _lock_member(a.key) in demoted:
                    continue
                if _rt003_covers(ch, funcs.get(ch.fn)):
                    continue
                g = groups.setdefault(a.key.split(":", 1)[-1] if a.kind == "lock" else a.key, [])
                if all(c.action.line != a.line for c in g):
                    g.append(ch)
            for g in groups.values():
                g.sort(key=lambda c: (-_rank(c), c.action.line))
                yield self._finding(fv.path, g[0], g[1:])
            if not ctx.has_tree and not groups:
                yield from self._by_sections(fv)

    def _by_sections(self, fv):
        """Without a tree: hunks of a function whose signature (the hunk
        header) takes `struct irq_data *` that add a sleeping lock."""
        seen = set()
        for h in fv.diff.hunks:
            m = IRQDATA_SIG.search(h.section or "")
            if not m or SLEEPABLE_CHIP.search(m.group(1)):
                continue
            for ln in h.lines:
                if ln.kind != "+" or not ln.new_no:
                    continue
                c = _LOCK_CALL.search(ln.text)
                if c and c.group(2) not in seen:
                    seen.add(c.group(2))
                    msg = (f"{m.group(1)}() takes a struct irq_data *, so it is an irq_chip callback "
                           "(or a helper of one), which the irq core calls with the raw irq_desc lock "
                           f"held; it calls {c.group(1)}({c.group(2)}), a sleeping lock on PREEMPT_RT. "
                           "Should the lock be a raw_spinlock_t?")
                    yield self.finding(fv.path, ln.new_no, msg, confidence="medium")

    def _finding(self, path, ch, others=()):
        a, r = ch.action, ch.root
        via = ""
        if ch.path:
            steps = " -> ".join(f"{f}()" for f, _ in ch.path[1:]) + (" -> " if len(ch.path) > 1 else "")
            via = f", reached from {r.name}() through {steps}{ch.fn}()"
        if a.kind == "lock":
            what = (f"{a.what}, a sleeping lock on PREEMPT_RT"
                    if not a.what.startswith("local_lock") else
                    f"{a.what}; a local_lock_t is a per-CPU spinlock_t, a sleeping lock, on PREEMPT_RT")
            ask = "Should the lock be a raw_spinlock_t (or the work moved out of this context)?"
        elif a.kind == "alloc":
            what = f"{a.what}, an allocation; on PREEMPT_RT the allocator takes sleeping locks even for GFP_ATOMIC"
            ask = "Can the memory be allocated beforehand?"
        else:
            what = f"{a.what}, which takes a sleeping lock (spinlock_t or local_lock_t) on PREEMPT_RT"
            ask = "Can this be done outside this context?"
        also = ""
        if others:
            names = sorted({o.fn for o in others} - {ch.fn})
            also = (f" The same happens in {', '.join(n + '()' for n in names[:4])}." if names else "")
        msg = (f"{ch.fn}() calls {what}{via}; {r.name}() is {r.why}.{also} {ask}")
        related = [Location(path, o.action.line, f"{o.fn}() too") for o in others[:3]]
        related += [Location(path, r.line, f"{r.name}() made an atomic-context callback here")]
        related += [Location(path, ln, f"{f}() calls on") for f, ln in ch.path]
        conf = "high" if _rank(ch) == 2 else "medium"
        return self.finding(path, a.line, msg, related=related[:4], confidence=conf)

    def _demotion(self, name, path, line, files):
        where = None
        for fv in files:
            funcs = {f.name: f for f in cparse.functions(fv.post_tree)}
            for ch in atomic_chains(fv.post_tree, fv.post_text) if roots(fv.post_text) else ():
                if ch.action.kind == "lock" and _lock_member(ch.action.key) == name:
                    where = (fv.path, ch.action.line, f"{ch.fn}() takes it, and {ch.root.name}() is {ch.root.why}")
                    break
            if where:
                break
            for f in funcs.values():
                if not cparse.calls_any(f.node, SLEEPING_SPIN):
                    continue
                for c, held in walk_held(f.node):
                    if c.name in SLEEPING_SPIN and c.args and _last(c.args[0]) == name:
                        strong = [h for h in held if h.name in RAW_LOCKS or h.name in IRQ_OFF
                                  or h.name in PREEMPT_OFF]
                        if strong:
                            h = strong[-1]
                            where = (fv.path, c.line, f"{f.name}() takes it under {h.name}()")
                            break
                if where:
                    break
            if where:
                break
        if where:
            msg = (f"This turns the raw_spinlock_t {name} into a spinlock_t, which is a sleeping lock "
                   f"on PREEMPT_RT, but {where[2]}. Should it stay a raw_spinlock_t?")
            return self.finding(path, line, msg, related=[Location(where[0], where[1], "taken here")],
                                confidence="high")
        msg = (f"This turns the raw_spinlock_t {name} into a spinlock_t, which is a sleeping lock on "
               "PREEMPT_RT. Locks are raw because they are taken where RT cannot sleep (hard-irq "
               "handlers, irq_chip callbacks, exception or NMI-like paths, under other raw locks); "
               "is none of its users in such a context any more?")
        return self.finding(path, line, msg, confidence="medium")


def _rank(ch) -> int:
    return 2 if (ch.root.strong and ch.action.kind == "lock" and not ch.path) else 1


_LOCK_CALL = LazyPattern(r"\b((?:spin|read|write)_(?:lock|trylock)\w*|local_lock\w*)\s*\(\s*([^,)]+)")


def _last(expr: str) -> str:
    m = re.search(r"(\w+)\s*(?:\[[^\]]*\])?\s*\)?\s*$", expr or "")
    return m.group(1) if m else ""


def _lock_member(key: str) -> str:
    return _last(key.split(":", 1)[1]) if ":" in key else ""


def _demotions(files) -> dict[str, tuple[str, int]]:
    """Lock names whose raw_spinlock_t declaration the patch replaces by a
    spinlock_t one -> (path, added line)."""
    raw, spin = set(), {}
    for fv in files:
        for ln in fv.diff.removed():
            for m in _RAW_DECL.finditer(ln.text):
                raw.add(m.group(1) or m.group(2))
    if not raw:
        return {}           # no raw_spinlock_t declaration removed (a file added whole)
    for fv in files:
        for ln in fv.diff.added():
            if ln.new_no:
                for m in _SPIN_DECL.finditer(ln.text):
                    spin.setdefault(m.group(1) or m.group(2), (fv.path, ln.new_no))
    return {n: where for n, where in spin.items() if n in raw}


def _rt003_covers(ch, fn) -> bool:
    """RT003 already reports a spinlock_t taken directly under a raw lock /
    with interrupts off, and directly in an IRQF_NO_THREAD/IRQF_TIMER
    handler."""
    if ch.action.kind != "lock" or fn is None:
        return False
    if not ch.path and ("IRQF_NO_THREAD" in ch.root.why or "IRQF_TIMER" in ch.root.why):
        return True
    for c, held in walk_held(fn.node):
        if c.line == ch.action.line and c.name in SLEEPING_SPIN:
            return any(h.name in RAW_LOCKS or h.name in IRQ_OFF or h.name in PREEMPT_OFF for h in held)
    return False
