"""Where code stays atomic on PREEMPT_RT, and what sleeps there (RT005-RT007).

Not a rule.  On PREEMPT_RT spinlock_t, rwlock_t and local_lock_t are
sleeping locks, plain request_irq() handlers, softirqs and timers run in
threads, and the memory allocator takes spinlock_t.  What stays atomic:
irq_chip callbacks (called under the raw irq_desc lock), clockevents
callbacks, chained (demultiplexing) handlers, handlers requested with
IRQF_NO_THREAD / IRQF_TIMER / IRQF_PERCPU (and primary handlers of an
IRQF_ONESHOT threaded irq, which irq_setup_forced_threading() leaves
alone), per-CPU irq handlers, hrtimer callbacks in a *_HARD mode,
IRQ_WORK_INIT_HARD work, smp_call_function*()/on_each_cpu*() and
stop_machine() callbacks, console ->write.  The analysis is file-local:
roots found in the file's text, then the file's own call graph.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import NamedTuple

from reviewbot.analysis import cparse
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rt import SLEEPING_SPIN

# irq_chip members called by the irq core with irq_desc->lock (raw) held
# (.irq_bus_lock / .irq_bus_sync_unlock may sleep and are left out)
IRQCHIP_ATOMIC = ("irq_mask", "irq_unmask", "irq_ack", "irq_eoi", "irq_mask_ack", "irq_set_type",
                  "irq_set_wake", "irq_enable", "irq_disable", "irq_startup", "irq_shutdown",
                  "irq_set_affinity", "irq_retrigger")
CLOCKEVT_ATOMIC = ("set_next_event", "set_next_ktime", "set_state_shutdown", "set_state_periodic",
                   "set_state_oneshot", "set_state_oneshot_stopped", "tick_resume")
_MEMBER_RE = LazyPattern(r"(?:\.|->)\s*(" + "|".join(IRQCHIP_ATOMIC + CLOCKEVT_ATOMIC) +
                         r")\s*=\s*&?\s*([A-Za-z_]\w*)\s*[,;}]")

# registration call -> (index of the callback, index of the flags or None, why)
_HARD_FLAGS = ("IRQF_NO_THREAD", "IRQF_TIMER", "IRQF_PERCPU")
_REGS = {
    "request_percpu_irq": (1, None, "a per-CPU interrupt handler (never threaded)"),
    "request_percpu_nmi": (1, None, "a per-CPU NMI handler"),
    "request_nmi": (1, None, "an NMI handler"),
    "irq_set_chained_handler": (1, None, "a chained interrupt handler (runs in hard-irq context)"),
    "irq_set_chained_handler_and_data": (1, None, "a chained interrupt handler (runs in hard-irq context)"),
    "smp_call_function_single": (1, None, "an smp_call_function_single() callback (IPI, interrupts off)"),
    "smp_call_function": (0, None, "an smp_call_function() callback (IPI, interrupts off)"),
    "smp_call_function_many": (1, None, "an smp_call_function_many() callback (IPI, interrupts off)"),
    "smp_call_function_any": (1, None, "an smp_call_function_any() callback (IPI, interrupts off)"),
    "on_each_cpu": (0, None, "an on_each_cpu() callback (IPI, interrupts off)"),
    "on_each_cpu_mask": (1, None, "an on_each_cpu_mask() callback (IPI, interrupts off)"),
    "on_each_cpu_cond": (1, None, "an on_each_cpu_cond() callback (IPI, interrupts off)"),
    "on_each_cpu_cond_mask": (1, None, "an on_each_cpu_cond_mask() callback (IPI, interrupts off)"),
    "stop_machine": (0, None, "a stop_machine() callback (interrupts off)"),
    "stop_machine_cpuslocked": (0, None, "a stop_machine() callback (interrupts off)"),
    "IRQ_WORK_INIT_HARD": (0, None, "IRQ_WORK_INIT_HARD() work (hard-irq context on PREEMPT_RT)"),
    "request_irq": (1, 2, None),
    "devm_request_irq": (2, 3, None),
    "request_threaded_irq": (1, 3, None),
    "devm_request_threaded_irq": (2, 4, None),
}
_REG_RE = LazyPattern(r"\b(" + "|".join(sorted(_REGS, key=len, reverse=True)) + r")\s*\(")
_HRT_INIT_RE = LazyPattern(r"\bhrtimer_init(?:_on_stack)?\s*\(\s*&?\s*([^,]+?)\s*,[^;]*?HRTIMER_MODE_\w*HARD\b")
_HRT_SETUP_RE = LazyPattern(r"\bhrtimer_setup(?:_on_stack)?\s*\(\s*&?\s*([^,]+?)\s*,\s*&?\s*([A-Za-z_]\w*)\s*,"
                            r"[^;]*?HRTIMER_MODE_\w*HARD\b")
# a function taking `struct irq_data *` first is an irq_chip callback or a helper of them
IRQDATA_SIG = LazyPattern(r"\b([A-Za-z_]\w*)\s*\(\s*struct\s+irq_data\s*\*\s*\w*\s*[,)]")
_IRQDATA_DEF_RE = LazyPattern(r"^(?:[A-Za-z_][^;{}()]*?\b)?([A-Za-z_]\w*)\s*\(\s*struct\s+irq_data\s*\*\s*\w*\s*[,)][^;{]*\{",
                              re.M)
# irq_chip members (and helpers named so) that may sleep or run outside the desc lock
SLEEPABLE_CHIP = LazyPattern(r"bus_lock|bus_sync_unlock|_resources\b|print_chip|_reqres|_relres|"
                             r"\.(?:irq_bus_lock|irq_bus_sync_unlock|irq_request_resources|"
                             r"irq_release_resources)\s*=")
_SLEEPABLE_MEMBER_RE = LazyPattern(r"(?:\.|->)\s*(?:irq_bus_lock|irq_bus_sync_unlock|irq_request_resources|"
                                   r"irq_release_resources|irq_print_chip)\s*=\s*&?\s*([A-Za-z_]\w*)")
_FUNC_ASSIGN_RE = LazyPattern(r"([\w.>\-\[\]]+?)\s*(?:\.|->)\s*function\s*=\s*&?\s*([A-Za-z_]\w*)\s*;")

# calls that take a sleeping lock on PREEMPT_RT (or allocate, which does)
LOCAL_LOCKS = {"local_lock", "local_lock_irq", "local_lock_irqsave", "local_lock_nested_bh"}
ALLOCS = {"kmalloc", "kzalloc", "kcalloc", "kmalloc_array", "krealloc", "kmem_cache_alloc",
          "kmem_cache_zalloc", "__get_free_pages", "__get_free_page", "get_zeroed_page", "alloc_pages",
          "alloc_page", "kstrdup", "kmemdup", "devm_kzalloc", "devm_kmalloc", "alloc_skb",
          "dev_alloc_skb", "netdev_alloc_skb", "__netdev_alloc_skb", "kasan_record_aux_stack"}
# well-known APIs that take a spinlock_t or local_lock_t inside (sleeping on RT)
RT_SLEEPERS = {"get_random_u32", "get_random_u64", "get_random_u16", "get_random_u8", "get_random_bytes",
               "get_random_int", "get_random_long", "prandom_u32", "get_random_u32_below",
               "put_task_struct", "__put_task_struct", "fpu_inherit_perms"}
_GFP_RE = LazyPattern(r"\b(?:__)?GFP_\w+")


class Root(NamedTuple):
    name: str       # function
    why: str        # "an irq_chip .irq_mask callback"
    line: int       # where the file makes it so
    strong: bool    # False: a context that is atomic only by a subtler rule (ONESHOT primaries)


def _split_args(s: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _ident(a: str) -> str:
    a = a.strip().lstrip("&").strip()
    return a if re.fullmatch(r"[A-Za-z_]\w*", a or "") and a != "NULL" and not a.isupper() else ""


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _last_member(expr: str) -> str:
    m = re.search(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", expr or "")
    return m.group(1) if m else ""


_ROOTS: "OrderedDict[str, tuple]" = OrderedDict()


def roots(text: str) -> list[Root]:
    """The functions the file itself places in a context that stays atomic
    on PREEMPT_RT (first reason for each)."""
    got = _ROOTS.get(text)
    if got is not None:
        _ROOTS.move_to_end(text)
        return list(got)
    out: dict[str, Root] = {}

    def add(name, why, pos, strong=True):
        if name and name not in out:
            out[name] = Root(name, why, _line(text, pos), strong)

    for m in _MEMBER_RE.finditer(text):
        member = m.group(1)
        kind = "irq_chip" if member.startswith("irq_") else "clock_event_device"
        where = ("called by the irq core with the raw irq_desc lock held" if kind == "irq_chip"
                 else "called by the clockevents core with interrupts disabled")
        add(m.group(2), f"an {kind} .{member} callback, {where}", m.start())
    for m in _REG_RE.finditer(text):
        reg = m.group(1)
        args = _split_args(text[m.end():m.end() + 600])
        cb_i, flags_i, why = _REGS[reg]
        if len(args) <= cb_i:
            continue
        cb = _ident(args[cb_i])
        if why is not None:
            add(cb, why, m.start())
            continue
        flags = args[flags_i] if flags_i is not None and len(args) > flags_i else ""
        hard = [f for f in _HARD_FLAGS if f in flags]
        if hard:
            add(cb, f"an interrupt handler requested with {hard[0]} (not threaded on PREEMPT_RT)", m.start())
        elif "threaded" in reg and "IRQF_ONESHOT" in flags:
            add(cb, "the primary handler of an IRQF_ONESHOT threaded interrupt, which stays in "
                    "hard-irq context on PREEMPT_RT (forced threading leaves ONESHOT irqs alone)",
                m.start(), strong=False)
    if "irq_data" in text:
        sleepable = {m.group(1) for m in _SLEEPABLE_MEMBER_RE.finditer(text)}
        for m in _IRQDATA_DEF_RE.finditer(text):
            name = m.group(1)
            if name not in sleepable and not SLEEPABLE_CHIP.search(name):
                add(name, "a function taking a struct irq_data *, i.e. an irq_chip callback (or a helper of one), "
                          "which the irq core calls with the raw irq_desc lock held", m.start(), strong=False)
    if "HARD" in text:
        timers = {}
        for m in _HRT_INIT_RE.finditer(text):
            timers.setdefault(_last_member(m.group(1)), m.start())
        for m in _HRT_SETUP_RE.finditer(text):
            add(m.group(2), "an hrtimer callback in a *_HARD mode (hard-irq context on PREEMPT_RT)", m.start())
        if timers:
            for m in _FUNC_ASSIGN_RE.finditer(text):
                if _last_member(m.group(1)) in timers:
                    add(m.group(2), "an hrtimer callback in a *_HARD mode (hard-irq context on PREEMPT_RT)",
                        m.start())
    got = tuple(out.values())
    _ROOTS[text] = got
    if len(_ROOTS) > 64:
        _ROOTS.popitem(last=False)
    return list(got)


class Action(NamedTuple):
    what: str           # "spin_lock(&gpio->lock)"
    kind: str           # "lock" | "alloc" | "call"
    line: int
    key: str            # stable across images: call name + argument


def sleeping_actions(fn_node) -> list[Action]:
    """What a function does that sleeps on PREEMPT_RT: spinlock_t /
    rwlock_t / local_lock_t acquisitions, allocations, known RT sleepers."""
    out = []
    for c in cparse.calls(fn_node):
        arg = re.sub(r"\s+", "", c.args[0]) if c.args else ""
        if c.name in SLEEPING_SPIN or c.name in LOCAL_LOCKS:
            out.append(Action(f"{c.name}({c.args[0].strip() if c.args else ''})", "lock", c.line,
                              f"{c.name}:{arg}"))
        elif c.name in ALLOCS or (c.name in RT_SLEEPERS):
            out.append(Action(f"{c.name}()", "alloc" if c.name in ALLOCS else "call", c.line, c.name))
        elif c.args and any(_GFP_RE.search(a) for a in c.args):
            gfp = next(_GFP_RE.search(a).group(0) for a in c.args if _GFP_RE.search(a))
            out.append(Action(f"{c.name}(..., {gfp})", "alloc", c.line, c.name))
    return out


class Chain(NamedTuple):
    root: Root
    path: tuple          # ((function, call line into the next), ...) from the root
    fn: str              # the function doing the action
    action: Action


def atomic_chains(tree, text: str, depth: int = 3, only=None) -> list[Chain]:
    """Every sleeping action reachable from a root of the file through the
    file's own calls (DEPTH levels), the shortest path first.  ONLY: a set
    of root names to start from (default all)."""
    rs = [r for r in roots(text) if only is None or r.name in only]
    if not rs:
        return []
    funcs = {f.name: f for f in cparse.functions(tree)}
    out = []
    acts: dict[str, list] = {}
    for r in rs:
        if r.name not in funcs:
            continue
        seen = {r.name}
        frontier = [(r.name, ())]
        for _ in range(depth + 1):
            nxt = []
            for name, path in frontier:
                f = funcs[name]
                if name not in acts:
                    acts[name] = sleeping_actions(f.node)
                for a in acts[name]:
                    out.append(Chain(r, path, name, a))
                for c in cparse.calls(f.node):
                    if c.name in funcs and c.name not in seen:
                        seen.add(c.name)
                        nxt.append((c.name, path + ((name, c.line),)))
            frontier = nxt
    return out


def takes_rt_sleeping(tree, fn_name: str, depth: int = 2) -> list[tuple]:
    """[(path, Action)]: sleeping actions of FN_NAME (a file function) and
    of the file functions it calls (DEPTH levels)."""
    funcs = {f.name: f for f in cparse.functions(tree)}
    out = []
    seen = {fn_name}
    frontier = [(fn_name, ())]
    for _ in range(depth + 1):
        nxt = []
        for name, path in frontier:
            f = funcs.get(name)
            if f is None:
                continue
            for a in sleeping_actions(f.node):
                out.append((path, name, a))
            for c in cparse.calls(f.node):
                if c.name in funcs and c.name not in seen:
                    seen.add(c.name)
                    nxt.append((c.name, path + ((name, c.line),)))
        frontier = nxt
    return out
