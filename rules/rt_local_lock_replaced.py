"""rt-local-lock-replaced (RT007): local_lock()/migrate_disable() replaced
by preempt_disable()/get_cpu()/irq disabling, or a preemption-disabled
section around code that sleeps on PREEMPT_RT."""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.analysis.rt import functions_touched, walk_held
from reviewbot.analysis.rtctx import LOCAL_LOCKS, sleeping_actions, takes_rt_sleeping
from reviewbot.analysis.rulekit import matches_any
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

STRONG = {"preempt_disable", "preempt_disable_notrace", "get_cpu", "get_cpu_ptr", "get_cpu_var",
          "local_irq_save", "local_irq_disable"}
WEAK = LOCAL_LOCKS | {"migrate_disable", "local_lock_irqsave"}
SECTION = {"preempt_disable", "preempt_disable_notrace", "get_cpu"}
SKIP_GLOBS = ("kernel/locking/*", "kernel/sched/*", "lib/locking-selftest.c", "tools/*",
              "include/linux/*lock*", "include/linux/preempt.h")


class RtLocalLockReplaced(Rule):
    """Flags a `local_lock()` or `migrate_disable()` that the patch replaces
    by `preempt_disable()`, `get_cpu()`/`get_cpu_ptr()` or
    `local_irq_save()`, and a `preempt_disable()` section the patch adds
    (or adds to) that allocates, takes a local_lock, or calls a function of
    the file that takes a spinlock_t or allocates.

    ## What it does
    In each function the patch touches: when the pre-image had a
    local_lock/migrate_disable call the post-image lost, and the patch adds
    a preemption- or interrupt-disabling call, reports the added call
    (high confidence when the section does something that sleeps on RT:
    spinlock_t/rwlock_t/local_lock_t, allocation, get_random_*(), a file
    function doing one of those; medium otherwise).  Separately, reports a
    sleeping-on-RT call inside a `preempt_disable()`/`get_cpu()` section
    when the patch adds the call or the section (medium).  A spinlock_t
    taken directly in such a section is RT003's.

    ## Why is this bad?
    local_lock() is preempt_disable() on a !RT kernel but a per-CPU
    sleeping lock on PREEMPT_RT, and migrate_disable() keeps a task on its
    CPU while leaving it preemptible: both let the section take
    spinlock_t locks and allocate on RT.  preempt_disable() does not: on
    RT every spinlock_t, local_lock_t and the page/slab allocator inside it
    is "sleeping function called from invalid context".

    ## Example
         static inline void send_msg(struct cn_msg *msg)
         {
        -	local_lock(&local_event.lock);
        +	preempt_disable();
         ...
         	cn_netlink_send(msg, 0, CN_IDX_PROC, GFP_NOWAIT);

    ## Use instead
    Keep the local_lock_t (it documents what the section protects) or
    migrate_disable() when only the CPU must stay the same.

    ## References
    Documentation/locking/locktypes.rst ("local_lock", "PREEMPT_RT caveats")
    """

    code = "RT007"
    name = "rt-local-lock-replaced"
    family = "preempt-rt"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            if matches_any(fv.path, SKIP_GLOBS):
                continue
            added = fv.added_lines
            for fn, pre_fn in functions_touched(fv):
                # most functions call none of STRONG: their calls are not listed
                post_calls = cparse.calls(fn.node) if cparse.calls_any(fn.node, STRONG) else []
                new_strong = [c for c in post_calls if c.name in STRONG and c.line in added]
                pre_weak = (_count(cparse.calls(pre_fn.node), WEAK)
                            if new_strong and pre_fn is not None else 0)
                if new_strong and pre_weak > _count(post_calls, WEAK):
                    gone = next(c.name for c in cparse.calls(pre_fn.node) if c.name in WEAK)
                    yield self._replaced(fv, fn, new_strong[0], gone)
                    continue
                if cparse.calls_any(fn.node, SECTION):
                    yield from self._sections(fv, fn, pre_fn, added)

    def _replaced(self, fv, fn, call, gone):
        acts = _inside(fv, fn, call)
        strongest = "preemption" if "irq" not in call.name else "interrupts"
        base = (f"{fn.name}() now uses {call.name}() where it had {gone}(). On PREEMPT_RT {gone}() "
                f"leaves the section preemptible; {call.name}() disables {strongest} on every kernel")
        if acts:
            path, where, a = acts[0]
            via = f" (in {where}())" if where != fn.name else ""
            msg = (f"{base}, and the section calls {a.what}{via}, which sleeps on PREEMPT_RT. "
                   f"Should this stay {gone}()?")
            return self.finding(fv.path, call.line, msg, confidence="high",
                                related=[Location(fv.path, a.line if where == fn.name else path[0][1],
                                                  "sleeps on PREEMPT_RT")])
        msg = (f"{base}, so nothing in it (or in the callers' part of it) may take a spinlock_t, a "
               f"local_lock or allocate memory there. Why is {gone}() no longer enough?")
        return self.finding(fv.path, call.line, msg, confidence="medium")

    def _sections(self, fv, fn, pre_fn, added):
        pre_keys = set()
        if pre_fn is not None and cparse.calls_any(pre_fn.node, SECTION):
            pre_keys = {(a.what, w) for _, w, a, _ in _section_actions(fv.pre_tree, pre_fn)}
        for path, where, a, opener in _section_actions(fv.post_tree, fn):
            if (a.what, where) in pre_keys:
                continue
            call_line = a.line if where == fn.name else path[0][1]
            if call_line not in added and opener.line not in added:
                continue
            if a.kind == "lock" and where == fn.name and not a.what.startswith("local_lock"):
                continue        # RT003
            via = f", through {where}()," if where != fn.name else ""
            msg = (f"{fn.name}() calls {a.what}{via} with preemption disabled by {opener.name}(); "
                   "that sleeps on PREEMPT_RT (spinlock_t, local_lock_t and the allocator are "
                   "sleeping locks there). Would migrate_disable() or a local_lock_t do, or can it "
                   "move out of the section?")
            yield self.finding(fv.path, call_line, msg, confidence="medium",
                               related=[Location(fv.path, opener.line, "preemption disabled here")])
            return


def _count(calls, names) -> int:
    return sum(1 for c in calls if c.name in names)


def _inside(fv, fn, opener):
    """Sleeping-on-RT actions in the section OPENER starts: [(path, fn, Action)]."""
    return [(p, w, a) for p, w, a, o in _section_actions(fv.post_tree, fn, {opener.line})]


def _section_actions(tree, fn, only_lines=None):
    """(path, function, Action, opener) for sleeping-on-RT actions made
    while a preempt_disable()/get_cpu() of FN is in force."""
    out = []
    for c, held in walk_held(fn.node):
        openers = [h.call for h in held if h.name in STRONG and
                   (only_lines is None or h.call.line in only_lines)]
        if not openers or c.name in STRONG:
            continue
        own = [a for a in sleeping_actions(c.node) if a.line == c.line and a.key.split(":")[0] == c.name]
        if own:
            out.append(((), fn.name, own[0], openers[-1]))
            continue
        if c.name == fn.name:
            continue
        for p, w, a in takes_rt_sleeping(tree, c.name, depth=1)[:1]:
            out.append((((fn.name, c.line),) + p, w, a, openers[-1]))
    return out
