"""lock-irq-variant-mismatch (LCK004): a lock taken with plain spin_lock()
where the rest of the file disables bottom halves or interrupts for it."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern

from reviewbot.analysis import lockflow as lf

_CTX_FN = LazyPattern(r"(_irq|_isr|interrupt|_handler|_timer|timer_|_rcv|tasklet|_poll|napi|softirq|_bh)",
                     re.I)


def variant(call: str) -> str | None:
    """plain / bh / irq for the spinning lock calls, else None."""
    if lf.ACQUIRE.get(call) != "spin" or call.startswith("bh_lock_sock"):
        return None
    if "_irq" in call:
        return "irq"
    if call.endswith(("_bh", "_bh_nested")):
        return "bh"
    return "plain"


class LockIrqVariantMismatch(Rule):
    """Flags a plain `spin_lock()` (or `read_lock()`/`write_lock()`) the
    patch adds on a lock that the same file otherwise takes with the
    `_bh` or `_irq`/`_irqsave` variant.

    ## What it does
    Compares the acquire variants of each lock class in the post-image of
    the file.  When the patch adds a plain acquire of a lock whose other
    acquires in the file all disable bottom halves or interrupts, and the
    pre-image had no plain acquire of it, the new one is reported, unless
    the function already runs with bottom halves/interrupts disabled
    (another `_bh`/`_irqsave` lock held, `local_bh_disable()`) or looks
    like an interrupt, timer or softirq handler.  Low confidence: the
    calling context is often known only to the author.

    ## Why is this bad?
    If a lock is also taken in softirq or hardirq context, taking it with
    a plain `spin_lock()` from process context lets that interrupt fire on
    the same CPU and spin forever on the lock its own CPU holds.

    ## Example
        /* elsewhere in the file */
        spin_lock_bh(&psock->link_lock);
        /* added */
       +spin_lock(&psock->link_lock);

    ## Use instead
    Use the same variant as the other sites (`spin_lock_bh()`,
    `spin_lock_irqsave()`), or explain in the changelog why this context
    already has bottom halves/interrupts disabled.

    ## References
    Documentation/kernel-hacking/locking.rst ("Locking Between User
    Context and Softirqs").
    """

    code = "LCK004"
    name = "lock-irq-variant-mismatch"
    family = "locking"

    severity = "warning"
    confidence = "low"

    def check_patch(self, ctx: PatchContext):
        for fv, touched, post in lf.touched_files(ctx):
            pre = None
            for fn, added in touched:
                if _CTX_FN.search(fn.name) or _irq_handler(fn):
                    continue
                fl = lf.lock_flow(post, fn.name)
                for h, states in (fl.acquires if fl is not None else []):
                    if h.line not in added or not h.stable or variant(h.call) != "plain" \
                            or h.how.startswith("wrap:"):
                        continue
                    held = lf.must_held(states)
                    if any(g.key in ("irq", "bh") or variant(g.call) in ("bh", "irq") for g in held):
                        continue
                    if pre is None:
                        pre = lf.image(fv, "pre")
                    if _variants(pre, h.key) & {"plain"}:
                        continue
                    others = [(f, g) for f, g in _sites(post, h.key) if variant(g.call) in ("bh", "irq")]
                    plain_elsewhere = [g for f, g in _sites(post, h.key)
                                       if variant(g.call) == "plain" and g.line != h.line]
                    if not others or plain_elsewhere:
                        continue
                    of, og = others[0]
                    ctxname = "interrupt" if variant(og.call) == "irq" else "softirq"
                    msg = (f"{fn.name}() takes {lf.display(h)} with plain {h.call}(), but "
                           f"{of.name}() takes the same lock with {og.call}(). If it is also taken "
                           f"from {ctxname} context, can that interrupt this holder on the same CPU "
                           f"and deadlock? Should this use {og.call}() too?")
                    yield self.finding(fv.path, h.line, msg,
                                       related=[Location(fv.path, og.line, f"{of.name}() uses {og.call}()")])


def _sites(info, key):
    for f in info.functions:
        fl = lf.lock_flow(info, f.name)
        for g, _ in (fl.acquires if fl is not None else []):
            if g.key == key and not g.how.startswith("wrap:"):
                yield f, g


def _variants(info, key) -> set[str]:
    return {variant(g.call) for _, g in _sites(info, key)} - {None}


def _irq_handler(fn) -> bool:
    head = cparse.node_text(fn.node).split("{", 1)[0]
    return "irqreturn_t" in head or "enum hrtimer_restart" in head
