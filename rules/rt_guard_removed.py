"""rt-guard-removed (RT006): a PREEMPT_RT guard taken away: a
CONFIG_PREEMPT_RT conditional, a *_HARD hrtimer mode, IRQ_WORK_INIT_HARD,
or a generic_handle_*_safe() demultiplexing call."""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

_RT_SYM = LazyPattern(r"\bCONFIG_PREEMPT_RT\b")
# an RT-aware replacement added by the same patch makes a removal a rework, not a loss
_RT_AWARE = LazyPattern(r"\b(?:local_lock\w*|raw_spin_\w+|migrate_disable|HRTIMER_MODE_\w+_HARD|"
                        r"IRQ_WORK_INIT_HARD|IRQ_WORK_HARD_IRQ|generic_handle_\w+_safe|"
                        r"preempt_disable_nested|CONFIG_PREEMPT_RT|PREEMPT_RT)\b")

# (kind, strong token, weak token the patch puts instead, what the guard did)
MARKERS = (
    ("hrtimer", LazyPattern(r"\bHRTIMER_MODE_\w+_HARD\b"), LazyPattern(r"\bHRTIMER_MODE_(?!\w*_HARD\b)\w+\b"),
     "A *_HARD hrtimer mode only matters on PREEMPT_RT: there the callback of a timer without it "
     "expires in softirq thread context (ksoftirqd), preemptible and delayed by RT tasks"),
    ("irq_work", LazyPattern(r"\b(?:IRQ_WORK_INIT_HARD|IRQ_WORK_HARD_IRQ)\b"),
     LazyPattern(r"\b(?:init_irq_work|IRQ_WORK_INIT|DEFINE_IRQ_WORK|IRQ_WORK_INIT_LAZY)\b"),
     "IRQ_WORK_INIT_HARD only matters on PREEMPT_RT: there irq_work without it runs in a "
     "per-CPU thread, with interrupts enabled and preemptible"),
    ("demux", LazyPattern(r"\bgeneric_handle_\w+_safe\b"), LazyPattern(r"\bgeneric_handle_(?:irq|domain_irq)\b"),
     "generic_handle_*_safe() disables interrupts around the demultiplexing; the plain variant "
     "expects them disabled already, which a threaded handler (every request_irq() handler is "
     "force-threaded on PREEMPT_RT) does not give"),
)


class RtGuardRemoved(Rule):
    """Flags a patch that takes away a PREEMPT_RT guard: a
    `CONFIG_PREEMPT_RT` conditional (`#ifdef`, `#if ... defined()`,
    `IS_ENABLED()`), an `HRTIMER_MODE_*_HARD` mode turned into the plain
    one, `IRQ_WORK_INIT_HARD` turned into `init_irq_work()`, or a
    `generic_handle_*_safe()` call turned into the plain
    `generic_handle_irq()` / `generic_handle_domain_irq()`.

    ## What it does
    Counts `CONFIG_PREEMPT_RT` tests in the file before and after the
    patch and reports a removal that lowers the count inside code that
    stays (medium; low when the patch adds another RT-aware primitive,
    local_lock, raw_spin_*, migrate_disable, in the same file, i.e. it
    replaces the guard).  For the hard-context markers, reports a function
    where the patch removes the strong form and adds the weak one.

    ## Why is this bad?
    These guards do nothing on a !RT kernel, so nothing there shows that
    they are needed, and they are easy to "clean up".  On PREEMPT_RT they
    keep code atomic or keep it out of atomic paths: a soft hrtimer
    expires in ksoftirqd (the tick, sched_clock wrap, forced idle and
    wait_task_inactive() all hung or drifted that way), a plain irq_work
    runs in a thread, a force-threaded demultiplexer calling
    generic_handle_irq() with interrupts enabled trips lockdep, and
    code under `!IS_ENABLED(CONFIG_PREEMPT_RT)` disables interrupts or
    preemption where RT then takes sleeping locks.

    ## Example
        -	hrtimer_init(&ts->sched_timer, CLOCK_MONOTONIC, HRTIMER_MODE_ABS_HARD);
        +	hrtimer_init(&ts->sched_timer, CLOCK_MONOTONIC, HRTIMER_MODE_ABS);

    ## Use instead
    Keep the guard, or say in the commit message why the reason for it is
    gone on PREEMPT_RT.

    ## References
    Documentation/locking/locktypes.rst; include/linux/hrtimer.h
    ("HRTIMER_MODE_HARD: Timer callback function will be executed in hard
    irq context even on PREEMPT_RT")
    """

    code = "RT006"
    name = "rt-guard-removed"
    family = "preempt-rt"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            removed = [ln for h in fv.diff.hunks for ln in h.lines if ln.kind == "-"]
            if not removed:
                continue
            added_text = "\n".join(ln.text for ln in fv.diff.added())
            f = self._conditional(fv, removed, added_text)
            if f is not None:
                yield f
            yield from self._markers(fv, added_text)

    def _conditional(self, fv, removed, added_text):
        gone = [ln for ln in removed if _RT_SYM.search(ln.text)]
        if not gone:
            return None
        if len(_RT_SYM.findall(fv.pre_text)) <= len(_RT_SYM.findall(fv.post_text)):
            return None
        first = gone[0]
        pre_fn = cparse.function_at(cparse.functions(fv.pre_tree), first.old_no) if first.old_no else None
        if pre_fn is not None and pre_fn.name not in {f.name for f in cparse.functions(fv.post_tree)}:
            return None     # the whole function goes
        line = _new_line_near(fv, first)
        if line is None:
            return None
        replaced = bool(_RT_AWARE.search(added_text.replace("CONFIG_PREEMPT_RT", "")))
        where = f" in {pre_fn.name}()" if pre_fn is not None else ""
        msg = (f"This removes a CONFIG_PREEMPT_RT test{where} (`{first.text.strip()[:70]}`). "
               "Such a test does nothing on a !RT kernel; on PREEMPT_RT it keeps code out of a path "
               "where spinlock_t sleeps, local_bh_disable() does not disable preemption and softirqs "
               "and interrupt handlers run in threads. Is the reason for it gone?")
        related = [Location(fv.path, _new_line_near(fv, ln) or line, "another PREEMPT_RT test removed")
                   for ln in gone[1:4]]
        return self.finding(fv.path, line, msg, related=related, confidence="low" if replaced else "medium")

    def _markers(self, fv, added_text):
        post_funcs = cparse.functions(fv.post_tree)
        pre_funcs = cparse.functions(fv.pre_tree) if fv.pre_text else []
        for kind, strong, weak, why in MARKERS:
            if not weak.search(added_text):
                continue
            for h in fv.diff.hunks:
                lost = [ln for ln in h.lines if ln.kind == "-" and strong.search(ln.text)]
                if not lost:
                    continue
                got = [ln for ln in h.lines if ln.kind == "+" and weak.search(ln.text)
                       and not strong.search(ln.text)]
                if not got:
                    continue
                fn = cparse.function_at(post_funcs, got[0].new_no)
                pre_fn = cparse.function_at(pre_funcs, lost[0].old_no) if lost[0].old_no else None
                if fn is not None and pre_fn is not None and fn.name == pre_fn.name:
                    if len(strong.findall(cparse.node_text(fn.node))) >= \
                            len(strong.findall(cparse.node_text(pre_fn.node))):
                        continue
                name = f"{fn.name}()" if fn is not None else "this code"
                tok = strong.search(lost[0].text).group(0)
                msg = (f"In {name}, {tok} gives way to {weak.search(got[0].text).group(0)}. {why}. "
                       "Why is the hard-context variant no longer needed?")
                yield self.finding(fv.path, got[0].new_no, msg)
                break


def _new_line_near(fv, removed_line) -> int | None:
    """The post-image line a removed line sat before."""
    for h in fv.diff.hunks:
        seen = False
        last = None
        for ln in h.lines:
            if ln is removed_line or (ln.kind == "-" and ln.old_no == removed_line.old_no
                                      and ln.text == removed_line.text):
                seen = True
                continue
            if ln.new_no:
                if seen:
                    return ln.new_no
                last = ln.new_no
        if seen:
            return last
    return None
