"""preempt-rt-ifdef (RT001): locking made conditional on CONFIG_PREEMPT_RT."""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import LOCK_CALLS, is_rt_core

_RT_RE = LazyPattern(r"\bCONFIG_PREEMPT_RT(?:_FULL|_BASE)?\b")
# calls that make a block "locking" (irq/preempt/bh disabling alone does not)
_REAL_LOCKS = {c for c in LOCK_CALLS if not c.startswith(("local_irq", "preempt_", "local_bh_", "rcu_read"))}
# what a "!RT only" block may hold and still be the accepted RT adaptation idiom
# (net/core/dev.c rps_lock_irqsave(), net/core/netpoll.c netpoll_send_udp())
_IDIOM_CALLS = LazyPattern(r"^(?:WARN_ON\w*|BUG_ON|VM_BUG_ON|lockdep_\w+|irqs_disabled|local_irq_\w+|"
                          r"preempt_\w+|local_bh_\w+|might_sleep\w*|in_\w+|IS_ENABLED)$")


class PreemptRtIfdef(Rule):
    """Flags `#ifdef CONFIG_PREEMPT_RT` (or `IS_ENABLED()`, or the obsolete
    `CONFIG_PREEMPT_RT_FULL`) added outside the core RT and locking code,
    above all around lock calls.

    ## What it does
    Finds preprocessor conditionals and `IS_ENABLED()` tests on
    CONFIG_PREEMPT_RT that the patch adds in ordinary subsystem code (not
    kernel/locking, kernel/sched, include/linux/*lock* and the like).
    Confidence is high when the conditional block holds lock calls, low
    otherwise.  A `!IS_ENABLED(CONFIG_PREEMPT_RT)` / `#ifndef` block holding
    only interrupt/preemption disabling or assertions (the RT adaptation
    idiom of net/core/dev.c and netpoll.c) is not reported.

    ## Why is this bad?
    A race that shows up on PREEMPT_RT is usually a race on every kernel,
    made likelier by RT.  Locking only on RT leaves the !RT kernel with the
    bug and two code paths to maintain.  Maintainers reject it: "You can
    not fix this by distributing a spin_lock_irqsave here and there"
    (xfrm, 2019).  CONFIG_PREEMPT_RT_FULL does not even exist any more.

    ## Example
        +#ifdef CONFIG_PREEMPT_RT_FULL
        +	spin_lock_irqsave(&trans->queue.lock, flags);
        +#endif
         	skb_queue_splice_init(&trans->queue, &queue);

    ## Use instead
    Take the lock unconditionally (or use the locked helpers such as
    skb_queue_tail()), or fix the RT primitive itself.

    ## References
    https://lore.kernel.org/all/20191023002200.GA31034@gondor.apana.org.au/
    """

    code = "RT001"
    name = "preempt-rt-ifdef"
    family = "preempt-rt"
    severity = "warning"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            if is_rt_core(fv.path):
                continue
            added = fv.added_lines
            if not added or "CONFIG_PREEMPT_RT" not in fv.post_text:
                continue        # no PREEMPT_RT symbol anywhere in the file
            sites = []     # (line, end_line, has_lock, symbol)
            for node in cparse.preproc_conditionals(fv.post_tree, added):
                line = cparse.line_of(node)
                if line not in added:
                    continue
                cond = cparse.conditional_condition(node)
                m = _RT_RE.search(cond)
                if not m:
                    continue
                body_calls = cparse.calls(node)
                if node.type == "preproc_ifdef" and cond.startswith("#ifndef") and _idiom_only(body_calls):
                    continue
                locks = [c for c in body_calls if c.name in _REAL_LOCKS]
                end = cparse.end_line_of(node)
                if end > line + 4:
                    end = line
                sites.append((line, end, bool(locks), m.group(0)))
            for line, text, negated, body_calls in _is_enabled_lines(fv, added):
                if negated and _idiom_only(body_calls):
                    continue
                sites.append((line, line, any(c.name in _REAL_LOCKS for c in body_calls),
                              _RT_RE.search(text).group(0)))
            if not sites:
                continue
            sites.sort()
            with_lock = [s for s in sites if s[2]]
            first = with_lock[0] if with_lock else sites[0]
            symbol = first[3]
            what = "the locking here" if with_lock else "this"
            msg = (f"Why does {what} depend on {symbol}? If the data can be touched "
                   "concurrently on PREEMPT_RT, the same race exists without RT, only less "
                   "likely. Would taking the lock unconditionally (or using the locked "
                   "helpers) fix it for both configurations?")
            if symbol.endswith("_FULL"):
                msg += f" Also, {symbol} no longer exists upstream; it is CONFIG_PREEMPT_RT now."
            related = [Location(fv.path, s[0], "another RT-only block") for s in sites if s is not first]
            yield self.finding(fv.path, first[0], msg, related=related[:5], end_line=first[1],
                               confidence="high" if with_lock else "low")


def _idiom_only(calls) -> bool:
    return bool(calls) and all(_IDIOM_CALLS.match(c.name) for c in calls)


def _is_enabled_lines(fv, added):
    for n in (n for item in cparse.items_touching(fv.post_tree, added) for n in cparse.walk(item)):
        if n.type == "call_expression":
            fn = n.child_by_field_name("function")
            if fn is not None and cparse.node_text(fn) == "IS_ENABLED":
                text = cparse.node_text(n)
                line = cparse.line_of(n)
                if line in added and _RT_RE.search(text):
                    parent = n.parent
                    while parent is not None and parent.type not in ("if_statement", "compound_statement"):
                        parent = parent.parent
                    is_if = parent is not None and parent.type == "if_statement"
                    body = cparse.node_text(parent) if is_if else text
                    calls = cparse.calls(parent) if is_if else []
                    negated = n.parent is not None and n.parent.type == "unary_expression" and \
                        cparse.node_text(n.parent).startswith("!")
                    yield line, body, negated, calls
