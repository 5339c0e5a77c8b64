"""release-on-failure (REL005): a failed call that still needs its release."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.analysis.rt import any_in_range
from reviewbot.analysis.rulekit import is_release
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

# APIs documented to keep their reference when they fail (the caller must
# still drop it), with the release the documentation names; the tree's own
# failure paths (the knowledge base's release_on_failure) add to these
DOCUMENTED = {
    "device_register": "put_device", "device_add": "put_device",
    "kobject_init_and_add": "kobject_put", "kobject_add": "kobject_put",
    "platform_device_add": "platform_device_put", "dev_set_name": "put_device",
    "cdev_device_add": "put_device",
}
_WATCHED = frozenset(DOCUMENTED)
_WEAK = re.compile(r"^(kfree|kvfree|vfree|\w+_del|\w+_free\w*|device_unregister|device_del)$")


class ReleaseOnFailure(Rule):
    """Flags the failure path of a call that keeps its reference even when it
    fails (`device_register()`, `device_add()`, `kobject_init_and_add()`,
    `platform_device_add()`, and whatever the tree's own failure paths show)
    when that path does not drop the reference with the matching put.

    ## What it does
    For each such call the patch adds, or whose failure branch the patch
    changes, it reads the branch taken when the call fails (`if (ret)`,
    `if (X(...))`, and the unwind ladder a `goto` in it leads to).  When
    that branch does not call the release the documentation names
    (`put_device()`, `kobject_put()`, `platform_device_put()`), or that
    most of the tree's callers use on that path (the knowledge base that
    `reviewbot index` builds counts them), it asks, and says when the
    branch frees the object directly instead (`kfree()`).

    ## Why is this bad?
    These calls initialise a refcounted object (and its name) before they
    can fail; freeing it directly leaks the name and skips the release
    callback, and returning without the put leaks the object.  The
    kernel-doc of device_register() says: "NOTE: _Never_ directly free
    @dev after calling this function, even if it returned an error!"

    ## Example
         ret = device_register(&sock->dev);
         if (ret) {
        -        put_device(&sock->dev);
        +        kfree(sock);

    ## Use instead
    Call put_device() (or the object's put) on the failure path and let
    the release callback free it.

    ## References
    drivers/base/core.c (device_register() kernel-doc); lib/kobject.c
    (kobject_init_and_add()).
    """

    code = "REL005"
    name = "release-on-failure"
    family = "missing-release"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        kb = None
        for fv in ctx.c_files():
            changed = fv.changed_lines
            if not changed:
                continue
            ls = sorted(changed)
            for fn in cparse.functions(fv.post_tree):
                if not any_in_range(ls, fn.start, fn.end):
                    continue
                if not fn.call_names & _WATCHED and not (fn.call_names and kb is not False and any(
                        n.endswith(("register", "_add")) for n in fn.call_names)):
                    continue
                for c in cparse.calls(fn.node):
                    rel, support = DOCUMENTED.get(c.name), "its documentation"
                    if rel is None:
                        if kb is None:
                            kb = ctx.knowledge or False
                        if not kb or not c.name.endswith(("register", "_add", "init_and_add")):
                            continue
                        got = [r for r in kb.release_on_failure(c.name) if r[1] >= 3 and r[1] * 2 >= r[2]]
                        if not got:
                            continue
                        rel, sup, total = got[0]
                        support = f"{sup} of the tree's {total} failure paths of {c.name}()"
                    branch = _failure_branch(c)
                    if branch is None:
                        continue
                    lo = cparse.line_of(branch)
                    region = [branch] + _ladder(fn, branch)
                    spans = [(cparse.line_of(r), cparse.end_line_of(r)) for r in region]
                    if c.line not in changed and not any(a <= n <= b for a, b in spans for n in changed):
                        continue
                    names = _names(region)
                    if rel in names:
                        continue
                    if _gap_before(fv, fn.name, c, rel, names):
                        continue        # the patch leaves an old failure path as it was
                    weak = sorted(n for n in names if _WEAK.match(n))
                    instead = f" It calls {weak[0]}() instead." if weak else ""
                    msg = (f"{c.name}() keeps its reference even when it fails, and {support} "
                           f"say{'s' if support.startswith('its') else ''} to drop it with {rel}(); "
                           f"this failure path does not.{instead} Is the object leaked (or freed "
                           f"behind the refcount's back) here?")
                    yield self.finding(fv.path, lo, msg,
                                       related=[Location(fv.path, c.line, f"{c.name}() called here")])


def _gap_before(fv, fname: str, call, rel: str, post_names: set[str]) -> bool:
    """Whether the pre-image already called CALL (same name and arguments)
    in FNAME and its failure path already went without REL, with the same
    releases as now (none taken away, none added): editing that path's
    message or its goto does not introduce the gap."""
    if call.line in fv.added_lines:
        return False
    pre = next((f for f in cparse.functions(fv.pre_tree) if f.name == fname), None)
    if pre is None:
        return False
    want = [re.sub(r"\s+", "", a) for a in call.args]
    for c in cparse.calls(pre.node):
        if c.name != call.name or [re.sub(r"\s+", "", a) for a in c.args] != want:
            continue
        branch = _failure_branch(c)
        if branch is None:
            continue
        names = _names([branch] + _ladder(pre, branch))
        changed = {n for n in names ^ post_names if is_release(n) or _WEAK.match(n)}
        return rel not in names and not changed
    return False


def _names(region) -> set[str]:
    """The names of the calls on a failure path (its branch and ladder)."""
    return {x.name for part in region for x in cparse.calls(part)}


def _failure_branch(call):
    """The statement run when CALL fails: `if (X(...))`, or the `if (ret)`
    right after `ret = X(...)`."""
    n = call.node
    while n.parent is not None and n.parent.type in ("parenthesized_expression", "unary_expression",
                                                     "binary_expression", "call_expression", "argument_list"):
        n = n.parent
    if n.parent is not None and n.parent.type == "if_statement" and n.parent.child_by_field_name("condition") == n:
        return n.parent.child_by_field_name("consequence")
    stmt = call.node
    while stmt.parent is not None and stmt.parent.type != "compound_statement":
        stmt = stmt.parent
    par = stmt.parent
    if par is None or stmt.type not in ("expression_statement", "declaration"):
        return None
    text = cparse.node_text(stmt)
    m = re.match(r"^\s*(?:\w+\s+)?\**(\w+)\s*=", text)
    if not m:
        return None
    var = m.group(1)
    kids = [k for k in par.named_children if k.type != "comment"]
    i = next((j for j, k in enumerate(kids) if k == stmt), None)
    if i is None or i + 1 >= len(kids) or kids[i + 1].type != "if_statement":
        return None
    nxt = kids[i + 1]
    cond = cparse.node_text(nxt.child_by_field_name("condition") or nxt)
    if not re.fullmatch(r"\(\s*(?:unlikely\s*\(\s*)?" + re.escape(var) + r"(?:\s*<\s*0)?\s*\)?\s*\)", cond.strip()):
        return None
    return nxt.child_by_field_name("consequence")


def _ladder(fn, branch) -> list:
    """The unwind ladder a `goto` in BRANCH leads to (label to end)."""
    labels = [cparse.node_text(g.child_by_field_name("label")) for g in cparse.walk(branch)
              if g.type == "goto_statement" and g.child_by_field_name("label") is not None]
    if not labels:
        return []
    body = fn.node.child_by_field_name("body")
    out = []
    for n in cparse.walk(body):
        if n.type == "labeled_statement" and cparse.node_text(n.child_by_field_name("label")) in labels:
            start = cparse.line_of(n)
            out += [s for s in body.named_children if cparse.line_of(s) >= start]
            break
    return out
