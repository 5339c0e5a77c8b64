"""state-check-outside-lock (LCK005): a test of an object's state added
before the lock that protects that state is taken."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

from reviewbot.analysis import lockflow as lf


def held_base(h: lf.Held) -> str:
    """The object whose state a held lock protects."""
    if h.kind == "sock" or h.call.startswith(("bh_lock_sock", "lock_sock")):
        return lf._strip(h.expr)
    if h.key in lf.PSEUDO:
        return ""
    return lf.lock_base(h.expr)


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text)


def tested(cond, funcs: set[str]) -> list[tuple[str, str, str]]:
    """(object, what, text) tested by a condition: `B->f` field reads of a
    plain variable B, and same-file predicates called on B."""
    out = []
    for n in cparse.walk(cond):
        if n.type == "field_expression":
            arg = n.child_by_field_name("argument")
            fld = n.child_by_field_name("field")
            op = cparse.node_text(n)[len(cparse.node_text(arg)):].lstrip()[:2] if arg is not None else ""
            if arg is not None and arg.type == "identifier" and fld is not None and op == "->":
                out.append((cparse.node_text(arg), cparse.node_text(fld), cparse.node_text(n)))
        elif n.type == "call_expression":
            name = lf._call_name(n)
            if name in funcs:
                for a in lf._call_args(n):
                    if re.match(r"^\w+$", a.strip()):
                        out.append((a.strip(), "call:" + name, cparse.node_text(n)))
    return out


class StateCheckOutsideLock(Rule):
    """Flags a test of an object's state that the patch adds before the
    lock protecting that state is taken, when the same function relies on
    the state under the lock.

    ## What it does
    In each function the patch touches, looks at added `if` conditions
    that read `obj->field` (or call a same-file predicate on `obj`) while
    no lock on `obj` is held (`lock_sock(obj)`, `bh_lock_sock(obj)`,
    `spin_lock(&obj->lock)`, same-file wrappers such as
    `sock_map_sk_acquire()`).  It reports the test when either the
    pre-image made the same test under that lock (the check moved out of
    the locked section), or the function later takes the lock and writes
    `obj->field` under it without testing it again (check, then act).

    ## Why is this bad?
    The state can change between the unlocked test and the locked
    section: the code under the lock then acts on a state the object no
    longer has.  In the 2018 sockmap fixes the reviewer asked whether
    `tcp_disconnect()` could run between the ESTABLISHED check and the
    update that relied on it.

    ## Example
       +if (!sock_map_sk_state_allowed(sk))
       +	return -EOPNOTSUPP;
        local_bh_disable();
        bh_lock_sock(sk);
       -if (!sock_map_sk_state_allowed(sk))
       -	ret = -EOPNOTSUPP;

    ## Use instead
    Test the state after taking the lock (or test it again under the lock
    and keep the unlocked test only as a fast path).

    ## References
    https://lore.kernel.org/netdev/ (Re: bpf PATCH 4/6 "sockmap,
    tcp_disconnect to listen transition", Martin KaFai Lau, 2018)
    """

    code = "LCK005"
    name = "state-check-outside-lock"
    family = "locking"

    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv, touched, post in lf.touched_files(ctx):
            pre = None
            funcs = set(post.byname)
            for fn, added in touched:
                if not lf.may_lock(post, fn.name):
                    # no lock here now: only a test that used to be under
                    # a lock in the pre-image can be reported
                    if pre is None:
                        pre = lf.image(fv, "pre")
                    if not lf.may_lock(pre, fn.name):
                        continue
                fl = lf.flow_of(post, fn.name)
                if fl is None:
                    continue
                done = set()
                for cond, states in fl.conds:
                    if cond is None or lf.span_added(cond, added) is None:
                        continue
                    bases = {held_base(h) for h in lf.may_held(states)}
                    for obj, what, text in tested(cond, funcs):
                        if obj in bases or (obj, what) in done:
                            continue
                        if pre is None:
                            pre = lf.image(fv, "pre")
                        hit = (self._moved(pre, post, fn.name, obj, text, funcs)
                               or self._check_then_act(fl, cond, obj, what))
                        if hit is None:
                            continue
                        done.add((obj, what))
                        yield self._finding(fv, fn, cond, obj, what, text, hit, added)

    def _moved(self, pre, post, fname, obj, text, funcs):
        """The pre-image tested `text` under a lock on `obj`; the post-image
        no longer does: ("moved", Held)."""
        def locked_tests(info):
            fl = lf.flow_of(info, fname)
            out = []
            for cond, states in (fl.conds if fl is not None else []):
                locks = [h for h in lf.must_held(states) if held_base(h) == obj]
                if locks and any(_norm(t) == _norm(text) for o, _, t in tested(cond, funcs) if o == obj):
                    out.append(max(locks, key=lambda h: h.line))
            return out
        before = locked_tests(pre)
        if not before or locked_tests(post):
            return None
        fl = lf.flow_of(post, fname)
        now = [h for h, _ in fl.acquires if held_base(h) == obj] if fl is not None else []
        return ("moved", now[0] if now else before[0])

    def _check_then_act(self, fl, cond, obj, what):
        """Later in the function, a lock on `obj` is taken and `obj->what`
        written under it with no second test: ("act", Held, write node)."""
        if what.startswith("call:"):
            return None
        line = cparse.line_of(cond)
        retest = False
        write = None
        for node, states, is_write in fl.accesses:
            if cparse.line_of(node) <= line:
                continue
            arg = node.child_by_field_name("argument")
            fld = node.child_by_field_name("field")
            if arg is None or fld is None or cparse.node_text(arg) != obj or cparse.node_text(fld) != what:
                continue
            locks = [h for h in lf.must_held(states) if held_base(h) == obj]
            if not locks:
                continue
            if not is_write:
                p = node.parent
                while p is not None and p.type not in ("if_statement", "compound_statement",
                                                       "function_definition"):
                    p = p.parent
                if p is not None and p.type == "if_statement":
                    retest = True
            elif write is None:
                write = (max(locks, key=lambda h: h.line), node)
        if write is None or retest:
            return None
        return ("act", write[0], write[1])

    def _finding(self, fv, fn, cond, obj, what, text, hit, added):
        line = lf.span_added(cond, added)
        h = hit[1]
        lock = f"{h.call}({h.expr})" if h.kind == "sock" or h.call.startswith("bh_lock_sock") \
            else f"{h.call}()" if h.how.startswith("wrap:") else f"{h.call}(&{h.expr})"
        if hit[0] == "moved":
            msg = (f"{fn.name}() now tests {text} before taking the lock with {lock}; "
                   f"it used to test it under the lock. Can the state of {obj} change between this test and the "
                   f"locked section (for example a concurrent disconnect or close), so that "
                   f"the code under the lock acts on a state it no longer has?")
            related = [Location(fv.path, h.line, "the lock is taken here")]
        else:
            wnode = hit[2]
            msg = (f"{fn.name}() tests {obj}->{what} here before taking the lock with {lock}, then changes "
                   f"{obj}->{what} under that lock without testing it again. Can it change in "
                   f"between? Should the test move under the lock?")
            related = [Location(fv.path, cparse.line_of(wnode), f"{obj}->{what} written under the lock")]
        return self.finding(fv.path, line, msg, related=related)
