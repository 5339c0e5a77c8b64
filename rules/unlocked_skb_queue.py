"""unlocked-skb-queue (RT004): an unlocked __skb_queue_*() / __skb_dequeue()
added on a queue that other code of the same file uses with its lock."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern

from reviewbot.analysis.rt import functions_touched, locals_of, norm, walk_held

# unlocked helper -> index of its queue argument
UNLOCKED = {"__skb_queue_tail": 0, "__skb_queue_head": 0, "__skb_dequeue": 0,
            "__skb_dequeue_tail": 0, "__skb_unlink": 1, "__skb_queue_after": 0,
            "__skb_queue_before": 0, "__skb_insert": 3}
# helpers that take list->lock themselves (skb_queue_purge left out: teardown
# paths call it on queues that are otherwise serialised by another lock)
LOCKED = {"skb_queue_tail": 0, "skb_queue_head": 0, "skb_dequeue": 0, "skb_dequeue_tail": 0,
          "skb_unlink": 1, "skb_append": 2}
_LOCK_ARG_RE = LazyPattern(r"^(.*)\.lock$")


def queue_key(expr: str) -> tuple[str, str]:
    """(field or global name, full text) of a queue expression:
    `&nu->tx_q` -> ('tx_q', 'nu->tx_q')."""
    s = norm(expr)
    m = re.search(r"(?:->|\.)(\w+)$", s)
    return (m.group(1) if m else s), s


class UnlockedSkbQueue(Rule):
    """Flags an unlocked `__skb_queue_tail()`, `__skb_queue_head()`,
    `__skb_dequeue()`, `__skb_unlink()` ... the patch adds on a queue that
    the same file also uses with its lock (`skb_queue_tail()`,
    `skb_dequeue()` and the other locked helpers, or
    `spin_lock*(&q->lock)`), when the call is not made with that queue's
    lock held.

    ## What it does
    Names a queue by its struct member (`nu->tx_q` -> `tx_q`) and looks at
    every function of the post-image for locked uses of it.  An added
    unlocked call counts only if the function does not hold `q.lock` at that
    point (linear walk of the function), is not a `__`-prefixed or
    `*_locked` helper, and does not assert the lock with
    `lockdep_assert_held()`.  Local `sk_buff_head` variables are ignored.
    Confidence is high when the patch turns a locked helper into the
    unlocked one, medium otherwise, low when another lock is held at the
    call (it may be the one serialising the queue).

    ## Why is this bad?
    The locked helpers take `list->lock` with interrupts disabled; the
    `__` variants take nothing.  Mixing them on one queue means the
    unlocked side races with the locked side: a corrupted list, lost or
    doubly freed skbs.  On PREEMPT_RT the window opens wide because
    softirqs and tasklets are preemptible; that is how the xfrm input
    queue crash of 2019 was found.

    ## Example
         static int nci_uart_send(struct nci_uart *nu, struct sk_buff *skb)
         {
        -	skb_queue_tail(&nu->tx_q, skb);
        +	__skb_queue_tail(&nu->tx_q, skb);
    while nci_uart_dequeue() still does `skb_dequeue(&nu->tx_q)`.

    ## Use instead
    Use the locked helpers on every side, or take `spin_lock_irqsave(&q->lock)`
    around the `__` calls, or protect the queue with one lock of your own
    on every access.

    ## References
    https://lore.kernel.org/all/20191024103134.GD13225@gauss3.secunet.de/
    """

    code = "RT004"
    name = "unlocked-skb-queue"
    family = "preempt-rt"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            added = fv.added_lines
            if not any(n in fv.post_text for n in UNLOCKED):
                continue
            locked_uses = None
            removed = "\n".join(ln.text for ln in fv.diff.removed())
            for fn, pre_fn in functions_touched(fv):
                if not cparse.calls_any(fn.node, UNLOCKED):
                    continue        # no unlocked queue helper called here
                pre_count = _unlocked_counts(pre_fn) if pre_fn is not None else {}
                post_seen: dict[tuple, int] = {}
                local = None
                for c, held in walk_held(fn.node):
                    if c.name not in UNLOCKED or len(c.args) <= UNLOCKED[c.name]:
                        continue
                    field, full = queue_key(c.args[UNLOCKED[c.name]])
                    post_seen[(c.name, field)] = post_seen.get((c.name, field), 0) + 1
                    if c.line not in added or post_seen[(c.name, field)] <= pre_count.get((c.name, field), 0):
                        continue
                    root = re.match(r"\w+", full)
                    if local is None:
                        local = locals_of(fn.node)
                    if field == full and root and root.group(0) in local:
                        continue             # a local queue
                    if "->" not in full and "." not in full and root and root.group(0) in local:
                        continue
                    if fn.name.startswith("__") or fn.name.endswith("_locked"):
                        continue
                    body = cparse.node_text(fn.node)
                    if re.search(r"lockdep_assert_held\([^)]*\b" + re.escape(field) + r"\.lock", body) or "__must_hold" in body:
                        continue
                    if any(h.arg.endswith(field + ".lock") for h in held):
                        continue
                    if locked_uses is None:
                        locked_uses = _locked_uses(fv.post_tree)
                    uses = [u for u in locked_uses if u[0] == field and u[3] != c.line]
                    if not uses:
                        continue
                    exact = [u for u in uses if u[1] == full]
                    use = (exact or uses)[0]
                    other_lock = [h for h in held if h.name not in ("rcu_read_lock", "rcu_read_lock_bh",
                                                                    "local_bh_disable", "preempt_disable")]
                    locked_name = c.name[2:]
                    replaced = re.search(r"\b" + re.escape(locked_name) + r"\(\s*&?\s*" + re.escape(full), removed)
                    conf = "high" if replaced else "medium"
                    if other_lock:
                        conf = "low"
                    if not exact and conf != "high":
                        conf = "low"
                    msg = (f"In {fn.name}(), {c.name}() does not take {full}.lock, but {use[2]}() "
                           f"in {use[4]}() uses the same queue with the lock. What serialises the two? "
                           "If nothing does, the list can be corrupted, and on PREEMPT_RT (softirqs "
                           "and tasklets preemptible) the window is wide open. Would the locked "
                           f"{locked_name}() (or holding {full}.lock) be safer here?")
                    if other_lock:
                        msg = msg.replace("What serialises the two?",
                                          f"Does {other_lock[-1].name}({other_lock[-1].arg}) held here also cover the other side?")
                    yield self.finding(fv.path, c.line, msg, confidence=conf,
                                       related=[Location(fv.path, use[3], f"locked use in {use[4]}()")])


def _locked_uses(tree):
    """(field, full text, helper, line, function) of every locked use."""
    out = []
    for fn in cparse.functions(tree):
        if not cparse.calls_any(fn.node, LOCKED) and not (
                b"spin_lock" in (fn.node.text or b"") and any(n.startswith("spin_lock") for n in fn.call_names)):
            continue        # none of the calls below (the text tests first: no parse work)
        for c in cparse.calls(fn.node):
            if c.name in LOCKED and len(c.args) > LOCKED[c.name]:
                field, full = queue_key(c.args[LOCKED[c.name]])
                out.append((field, full, c.name, c.line, fn.name))
            elif c.name.startswith("spin_lock") and c.args:
                m = _LOCK_ARG_RE.match(norm(c.args[0]))
                if m:
                    field, full = queue_key(m.group(1))
                    out.append((field, full, c.name, c.line, fn.name))
    return out


def _unlocked_counts(fn) -> dict:
    out: dict = {}
    for c in cparse.calls(fn.node):
        if c.name in UNLOCKED and len(c.args) > UNLOCKED[c.name]:
            k = (c.name, queue_key(c.args[UNLOCKED[c.name]])[0])
            out[k] = out.get(k, 0) + 1
    return out
