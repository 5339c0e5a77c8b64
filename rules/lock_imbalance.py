"""lock-imbalance (LCK002): a new path leaves a function with a lock held."""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

from reviewbot.analysis import lockflow as lf


class LockImbalance(Rule):
    """Flags a return (or a `goto` to a label past the unlock) that the
    patch introduces while a lock taken in the same function is still held.

    ## What it does
    Follows every path through each function the patch adds or changes,
    tracking the locks the function takes (`spin_lock*`, `mutex_lock*`,
    `down_*`, `lock_sock`, `rcu_read_lock*`, same-file lock wrappers).
    A path that returns with such a lock still held, when the function
    releases that lock on other paths, is reported, unless the pre-image
    of the function already had the same imbalance.  Trylock and
    `mutex_lock_interruptible()` results are followed per branch;
    `guard()`/`scoped_guard()` need no unlock; functions annotated
    `__acquires`/`__releases`/`__must_hold`, or whose name says they
    return with the lock held (`*_lock`, `*_start`, ...), are skipped, as
    are locks taken conditionally in one branch and released in another.

    ## Why is this bad?
    A lock left held on an error path deadlocks the next taker; an RCU
    read-side section left open stalls grace periods and trips lockdep.
    Early returns added inside an existing locked section are the classic
    way this slips in.

    ## Example
        raw_spin_lock_bh(&stab->lock);
        osk = stab->sks[idx];
       +if (osk == sk)
       +	return -EEXIST;

    ## Use instead
        if (osk == sk) {
                ret = -EEXIST;
                goto out_unlock;
        }

    ## References
    Documentation/locking/lockdep-design.rst;
    scripts/coccinelle/locks/mini_lock.cocci (and why netdev dropped it:
    flag only what the patch introduces).
    """

    code = "LCK002"
    name = "lock-imbalance"
    family = "locking"

    severity = "error"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        for fv, touched, post in lf.touched_files(ctx):
            pre = None
            for fn, added in touched:
                got = lf.leaks(lf.lock_flow(post, fn.name))
                if not got:
                    continue
                if pre is None:
                    pre = lf.image(fv, "pre")
                # the same lock leaking out of the same statement before
                # the patch is not news (pre-image lines by the diff)
                old = {(h.key, via or ex.line) for h, ex, via in lf.leaks(lf.flow_of(pre, fn.name))}
                seen = set()
                for h, ex, via in sorted(got, key=lambda t: (t[2] or t[1].line, t[0].line)):
                    if (h.key, fv.old_line(via or ex.line)) in old or h.key in seen:
                        continue
                    if ex.line in post.synth and not via:
                        continue        # the end of a function rebuilt from hunks: not a real exit
                    seen.add(h.key)
                    yield self._finding(fv, fn, h, ex, via, added)

    def _finding(self, fv, fn, h, ex, via, added):
        fl = lf.flow_of(lf.image(fv, "post"), fn.name)
        line = lf.report_line([via, ex.line, h.line], added, via or ex.line)
        if via:
            stmt = _stmt_text(fn.node, via, "goto_statement")
            path = f"the '{stmt}' path"
        else:
            val = lf.return_value(fl, ex.line)
            path = f"the 'return {val}' path" if val else "the path that returns here"
        taken = "the wrapper " + h.call + "()" if h.how.startswith("wrap:") else h.call + "()"
        if h.key in lf.RCU_KEYS:
            unlock = h.call.replace("_lock", "_unlock", 1) if "_lock" in h.call else "rcu_read_unlock"
            msg = (f"{fn.name}() enters an RCU read-side section with {taken}, but {path} "
                   f"leaves the function without the matching unlock. Is an "
                   f"{unlock}() missing there?")
        else:
            msg = (f"{fn.name}() takes {lf.display(h)} with {taken}, but {path} leaves the "
                   f"function with it still held, while the other paths release it. "
                   f"Is an unlock missing on this path?")
        related = [Location(fv.path, h.line, f"{lf.display(h)} taken here")]
        if via and ex.line != via:
            related.append(Location(fv.path, ex.line, "the function returns here"))
        info = lf.image(fv, "post")
        if info.shown is not None:
            # from the hunks alone: medium when the lines from the lock to
            # the exit are all shown, low when a gap lies between
            conf = "medium" if info.decided(h.line, via or ex.line) else "low"
        else:
            conf = "high" if line in added and h.stable else "medium"
        return self.finding(fv.path, line, msg, related=related, confidence=conf)


def _stmt_text(fn_node, line: int, typ: str) -> str:
    for n in cparse.walk(fn_node):
        if n.type == typ and cparse.line_of(n) == line:
            return lf.first_line_text(n).rstrip(";")
    return "goto"
