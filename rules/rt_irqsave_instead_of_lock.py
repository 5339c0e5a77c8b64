"""rt-irqsave-instead-of-lock (RT002): interrupts or preemption disabled
to protect shared data, where a lock is needed."""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import is_rt_core, matches_any

from reviewbot.analysis.rt import (IRQ_OFF, PAIRS, PERCPU_RE, locals_of, release_matches,
                        root_ident, functions_touched)

TRIGGERS = IRQ_OFF | {"preempt_disable"}
# core and low-level code where irq/preempt-off sections are the mechanism itself
CORE_GLOBS = ("kernel/*", "mm/*", "lib/*", "arch/*", "init/*", "include/asm-generic/*",
              "drivers/irqchip/*", "drivers/clocksource/*", "drivers/cpuidle/*",
              "drivers/cpufreq/*", "drivers/base/*", "virt/*", "tools/*", "include/linux/*",
              "security/keys/*", "drivers/firmware/*", "drivers/perf/*", "drivers/hv/*", "drivers/xen/*")
LOCKISH = {k for k in PAIRS if k not in ("local_irq_save", "local_irq_disable", "preempt_disable",
                                         "get_cpu", "rcu_read_lock", "rcu_read_lock_bh",
                                         "preempt_disable_notrace", "migrate_disable")}


class RtIrqsaveInsteadOfLock(Rule):
    """Flags `local_irq_save()`, `local_irq_disable()` or
    `preempt_disable()` added around writes to shared data, with no lock
    taken in the section.

    ## What it does
    For each such section the patch adds in ordinary subsystem code (not
    kernel/, mm/, arch/, irqchip and other core code), looks at what the
    section writes.  It reports the section when it stores to data reached
    through a pointer or a global, takes no lock, and uses no per-CPU
    accessor (`this_cpu_*()`, `per_cpu()`, `smp_processor_id()`, ...),
    which would mean the section guards per-CPU data, the legitimate use.
    Confidence is high when the same patch removes a lock from the
    function (a lock replaced by interrupt disabling), medium otherwise.

    ## Why is this bad?
    Disabling interrupts or preemption only keeps out code running on the
    same CPU; another CPU can still touch the data.  On PREEMPT_RT, softirqs
    and threaded interrupt handlers are preemptible tasks, so the section
    does not even exclude them on one CPU, and the data races.  The
    section also makes any spinlock_t taken inside it a sleeping-in-atomic
    bug on RT.

    ## Example
        -	spin_lock_irqsave(&priv->tx_stats_lock, flags);
        +	local_irq_save(flags);
         	priv->tx_stats[GET_HW_QUEUE(skb)].len--;
        -	spin_unlock_irqrestore(&priv->tx_stats_lock, flags);
        +	local_irq_restore(flags);

    ## Use instead
    Take the lock that protects the data (spin_lock_irqsave() on it), use
    atomics, or, for per-CPU data, a `local_lock_t`.

    ## References
    Documentation/locking/locktypes.rst ("PREEMPT_RT caveats")
    """

    code = "RT002"
    name = "rt-irqsave-instead-of-lock"
    family = "preempt-rt"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            if is_rt_core(fv.path) or matches_any(fv.path, CORE_GLOBS):
                continue
            added = fv.added_lines
            for fn, pre_fn in functions_touched(fv):
                pre_keys = {k for k, _ in _sections(pre_fn.node)} if pre_fn is not None else set()
                for (trigger, writes), (start, end) in _sections(fn.node):
                    if start.line not in added or (trigger, writes) in pre_keys:
                        continue
                    removed_text = "\n".join(ln.text for h in fv.diff.hunks
                                             if h.new_start <= fn.end and h.new_start + h.new_len >= fn.start
                                             for ln in h.removed())
                    dropped = _dropped_lock(removed_text)
                    shown = ", ".join(writes[:3])
                    msg = (f"In {fn.name}(), is {trigger}() meant to protect {shown}? "
                           "It only keeps out code running on this CPU; another CPU can still "
                           "get in, and on PREEMPT_RT softirqs and threaded interrupt handlers "
                           "are preemptible too, so they can run in the middle of this section.")
                    if dropped:
                        msg += (f" The patch drops {dropped} here: do the other users of this "
                                "data not rely on that lock any more?")
                    else:
                        msg += " Would taking the lock that the other users of this data take work here?"
                    dropped_lock = bool(dropped)
                    yield self.finding(fv.path, start.line, msg, end_line=end.line if end else None,
                                       related=[Location(fv.path, end.line, "section ends here")] if end else [],
                                       confidence="high" if dropped_lock else "medium")


def _dropped_lock(removed_text: str) -> str:
    m = _LOCK_CALL_RE.search(removed_text)
    return f"{m.group(1)}({m.group(2).strip()})" if m else ""


_LOCK_CALL_RE = LazyPattern(r"\b((?:raw_)?spin_lock\w*|mutex_lock\w*|write_lock\w*)\(\s*([^,)]+)")


def _sections(fn_node):
    """Yield ((trigger, sorted writes), (start call, end call)) for every
    irq/preempt-off section of the function that writes shared data,
    takes no lock and uses no per-CPU accessor."""
    if not cparse.calls_any(fn_node, TRIGGERS):
        return              # no irq/preempt-off section at all
    calls = sorted(cparse.calls(fn_node), key=lambda c: c.node.start_byte)
    local = locals_of(fn_node)
    percpu_locals = _percpu_locals(fn_node)
    for i, c in enumerate(calls):
        if c.name not in TRIGGERS:
            continue
        end = next((r for r in calls[i + 1:] if release_matches(r, c)), None)
        if end is None:
            continue
        inner = [x for x in calls[i + 1:] if x.node.start_byte < end.node.start_byte]
        if any(x.name in LOCKISH or x.name.endswith(("_lock", "_trylock")) for x in inner):
            continue
        body = _text_between(fn_node, c.node.end_byte, end.node.start_byte)
        if PERCPU_RE.search(body):
            continue
        writes = sorted(_shared_writes(fn_node, c.node.end_byte, end.node.start_byte, local, percpu_locals))
        if writes:
            yield (c.name, tuple(writes)), (c, end)


def _text_between(fn_node, a: int, b: int) -> str:
    src = fn_node.text or b""
    base = fn_node.start_byte
    return src[a - base:b - base].decode("utf-8", errors="replace")


def _percpu_locals(fn_node) -> set[str]:
    out = set()
    for n in cparse.walk(fn_node):
        if n.type in ("init_declarator", "assignment_expression"):
            left = n.child_by_field_name("declarator") or n.child_by_field_name("left")
            right = n.child_by_field_name("value") or n.child_by_field_name("right")
            if left is not None and right is not None and PERCPU_RE.search(cparse.node_text(right)):
                nm = root_ident(left) if left.type != "pointer_declarator" else cparse.node_text(left).lstrip("* ")
                if nm:
                    out.add(nm)
    return out


def _shared_writes(fn_node, a: int, b: int, local: dict, percpu_locals: set) -> set[str]:
    out = set()
    for n in cparse.walk(fn_node):
        if n.start_byte < a or n.end_byte > b:
            continue
        if n.type == "assignment_expression":
            lhs = n.child_by_field_name("left")
        elif n.type == "update_expression":
            lhs = n.child_by_field_name("argument")
        else:
            continue
        if lhs is None:
            continue
        root = root_ident(lhs)
        if not root or root in percpu_locals:
            continue
        text = cparse.node_text(lhs)
        if root in local:
            # a write through a pointer held in a local or parameter
            if "->" in text or lhs.type == "pointer_expression" or (
                    lhs.type == "subscript_expression" and "*" in local[root]):
                out.add(" ".join(text.split()))
        elif not root.isupper():
            out.add(" ".join(text.split()))      # a global
    return out
