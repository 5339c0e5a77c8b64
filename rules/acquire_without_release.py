"""acquire-without-release (REL003): something taken on a path that never gives it back."""
from __future__ import annotations

import re
from typing import NamedTuple

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import STATUS_ACQUIRES, release_names
from reviewbot.analysis import release as rc
from reviewbot.analysis.rt import any_in_range

_PERNET_EXITS = ("exit", "exit_batch", "pre_exit", "exit_batch_rtnl")
_TRANSFER_RE = LazyPattern(r"(add|insert|store|set|assign|queue|attach|link|push|publish|install|"
                          r"hash|enqueue|splice|xchg|cmpxchg)", re.I)
_LOG_RE = LazyPattern(r"^(pr_\w+|dev_(err|warn|info|dbg|notice)\w*|netdev_(err|warn|info|dbg)\w*|"
                     r"WARN\w*|printk\w*|net_\w+_ratelimited|NL_SET_ERR_MSG\w*|trace_\w+|"
                     r"dev_err_probe|BUG_ON|unlikely|likely)$")
_ERROR_RET_RE = LazyPattern(r"^(-\s*E[A-Z0-9]+|NULL|ERR_PTR\b.*|ERR_CAST\b.*|-\d+|false)$")


class _Leak(NamedTuple):
    acquire: cparse.Call
    resource: str
    exit_line: int
    exit_text: str
    ladder: bool          # the function releases the resource elsewhere
    value: bool = False   # the resource is the value the acquire returned


class AcquireWithoutRelease(Rule):
    """Flags a resource taken in code the series adds (`kzalloc()`,
    `register_*()`, `request_irq()`, `dev_hold()`, `pm_runtime_enable()`,
    `clk_prepare_enable()`, a `pernet_operations` `.init`, ...) that some
    path never releases.

    ## What it does
    For each function the series touches it follows every acquire call in
    added code to the error exits after it (`if (err) return err;`, a
    `goto` into the unwind ladder) and reports an exit that neither
    releases the resource (`kfree()`, `unregister_*()`, `free_irq()`,
    `dev_put()`, ...) before leaving nor jumps to a label that does.  It
    also checks the module's exit side: a registration added in the
    `module_init()` function or a `.probe` must be undone in the
    `module_exit()` function or `.remove` of the same file; and a
    `pernet_operations` whose `.init` takes something needs an `.exit`
    (or `.exit_batch`/`.pre_exit`).  Not reported: `devm_*` and other
    managed calls, `__free()` variables, values returned or stored into a
    longer-lived structure (ownership moves), and gaps that were there
    before the series.

    ## Why is this bad?
    An error path that forgets what was taken before it leaks memory, a
    reference (the device or namespace never goes away), or a
    registration that outlives the module and later calls into freed
    code.  Such paths are rarely tested, so the bug survives until a
    fault-injection run or a syzbot report.

    ## Example
        +	rc = register_pernet_subsys(&dccp_proc_net_ops);
        +	if (rc)
        +		goto out_ackvec_exit;
        +
         	rc = dccp_sysctl_init();
         	if (rc)
         		goto out_ackvec_exit;

    ## Use instead
    Add a step to the unwind ladder and jump to it from every later
    failure:
        	rc = dccp_sysctl_init();
        	if (rc)
        		goto out_unregister_pernet;
        ...
        out_unregister_pernet:
        	unregister_pernet_subsys(&dccp_proc_net_ops);

    ## References
    https://lore.kernel.org/netdev/20200521083435.560256-1-jakub@cloudflare.com/
    """

    code = "REL003"
    name = "acquire-without-release"
    family = "missing-release"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            added = fv.added_lines
            if not added:
                continue
            post_vis = rc.visible_lines(fv, new=True)
            pre_vis = rc.visible_lines(fv, new=False)
            calls_post = rc.known_calls(fv.post_tree)
            calls_pre = rc.known_calls(fv.pre_tree)
            pre_funcs = {f.name: f for f in cparse.functions(fv.pre_tree)}
            ls = sorted(added)
            for fn in cparse.functions(fv.post_tree):
                if not any_in_range(ls, fn.start, fn.end):
                    continue
                leaks = _analyse(fn.node, calls_post, post_vis)
                leaks = [lk for lk in leaks if lk.acquire.line in added or lk.exit_line in added]
                if not leaks:
                    continue
                old = pre_funcs.get(fn.name)
                old_keys = {_key(lk) for lk in _analyse(old.node, calls_pre, pre_vis)} if old else set()
                reported = set()
                for lk in leaks:
                    if _key(lk) in old_keys or (lk.acquire.line, lk.resource) in reported:
                        continue
                    reported.add((lk.acquire.line, lk.resource))
                    yield self._leak_finding(fv, fn, lk, added)
            if fv.has_full_image:
                yield from self._exit_side(fv, added, calls_post)
            yield from self._pernet(fv, added, post_vis, pre_vis, calls_post)

    def _leak_finding(self, fv, fn, lk: _Leak, added):
        rels = release_names(lk.acquire.name, rc.known_calls(fv.post_tree))
        if lk.value:
            what = f"{lk.resource} = {lk.acquire.name}()"
        else:
            what = f"{lk.acquire.name}({_short(lk.acquire)})"
        msg = (f"After {what}, the failure path `{lk.exit_text}` in {fn.name}() leaves "
               f"without {rels[0]}(). Is it leaked there?")
        if lk.ladder:
            msg += " The other failure paths do release it."
        conf = "high" if lk.ladder else "medium"
        if lk.acquire.line not in added:
            # the patch added the exit, not the acquire: quote the exit
            msg = msg.replace(f"After {what},", f"After {what} (line {lk.acquire.line}),", 1)
            return self.finding(fv.path, lk.exit_line, msg, confidence=conf,
                                related=[Location(fv.path, lk.acquire.line, f"{lk.acquire.name}() here")])
        end = lk.exit_line if lk.exit_line - lk.acquire.line <= 12 else None
        return self.finding(fv.path, lk.acquire.line, msg, end_line=end,
                            related=[Location(fv.path, lk.exit_line, "leaves without releasing")],
                            confidence=conf)

    # -- module exit / .remove ---------------------------------------------
    def _exit_side(self, fv, added, file_calls):
        if not _adds_registration(fv.post_tree, added):
            return          # what is checked below starts at an added registration
        tree = fv.post_tree
        funcs = {f.name: f for f in cparse.functions(tree)}
        pairs = _init_exit_pairs(fv.post_text, tree)
        for init, exit_ in pairs:
            fi, fe = funcs.get(init), funcs.get(exit_)
            if fi is None or fe is None:
                continue
            exit_calls = _reachable_calls(fe, funcs, depth=2)
            for c in cparse.calls(fi.node):
                if c.line not in added or not _is_registration(c.name):
                    continue
                rels = release_names(c.name, file_calls)
                if not rels or any(r in exit_calls for r in rels):
                    continue
                if _released_on_success(fi, rels):
                    continue
                msg = (f"{init}() now calls {c.name}(), but {exit_}() does not call "
                       f"{rels[0]}(). Is it undone somewhere else when the module goes away?")
                yield self.finding(fv.path, c.line, msg,
                                   related=[Location(fv.path, fe.start, f"{exit_}()")])

    # -- pernet_operations without an exit -----------------------------------
    def _pernet(self, fv, added, post_vis, pre_vis, file_calls):
        if "pernet_operations" not in fv.post_text:
            return          # no pernet_operations table in the file: nothing to check
        registered = {}
        for c in (c for item in cparse.items_touching(fv.post_tree, added) for c in cparse.calls(item)):
            if c.line in added and c.name.startswith("register_pernet_") and c.args:
                registered[c.args[0].lstrip("&").strip()] = c.line
        pre = {t.name: t for t in cparse.struct_initializers(fv.pre_tree)
               if t.struct == "pernet_operations" and rc.all_visible(pre_vis, t.start, t.end)}
        for t in cparse.struct_initializers(fv.post_tree):
            if t.struct != "pernet_operations" or not rc.all_visible(post_vis, t.start, t.end):
                continue
            touched = any(t.start <= i <= t.end for i in added)
            if not touched and t.name not in registered:
                continue
            init = t.get("init")
            if init is None or any(t.get(m) is not None for m in _PERNET_EXITS):
                continue
            old = pre.get(t.name)
            if old is not None and old.get("init") is not None and not any(old.get(m) for m in _PERNET_EXITS):
                continue
            fn = rc.function_named(fv.post_tree, init)
            if fn is not None and rc.all_visible(post_vis, fn.start, fn.end):
                taken = rc.body_acquires(fn.node, file_calls)
                if not taken:
                    continue
                what, conf = f", which calls {taken[0].name}(),", "medium"
            else:
                what, conf = "", "low"
            line = t.line_of("init") if touched else registered[t.name]
            msg = (f"{t.name} has .init = {init}{what} but no .exit (or .exit_batch/.pre_exit). "
                   f"What releases it when a network namespace is dismantled?")
            yield self.finding(fv.path, line, msg, confidence=conf)


def _key(lk: _Leak) -> tuple:
    return (lk.acquire.name, lk.resource, " ".join(lk.exit_text.split()))


def _short(c: cparse.Call) -> str:
    return c.args[0] if c.args else ""


def _norm(text: str) -> str:
    t = re.sub(r"\s+", "", text)
    t = re.sub(r"^\([^()]*\)", "", t)      # a cast
    return t.lstrip("&")


def _adds_registration(tree, added) -> bool:
    """Whether a call _is_registration() starts on an added line (the items
    whose text cannot name one are not parsed for calls)."""
    return any(c.line in added and _is_registration(c.name)
               for item in cparse.items_touching(tree, added, _REGISTRATION_HINT) for c in cparse.calls(item))


# every name _is_registration() accepts holds one of these
_REGISTRATION_HINT = LazyPattern(rb"register|request_|pm_runtime_enable|clk_prepare_enable")


def _is_registration(name: str) -> bool:
    return (name.startswith(("register_", "__register_", "request_", "misc_register", "genl_register",
                             "pm_runtime_enable", "clk_prepare_enable"))
            or name.endswith("_register"))


def _is_status(name: str) -> bool:
    return name in STATUS_ACQUIRES or _is_registration(name) or name.endswith("_enable") \
        or name.startswith("pm_runtime_get") or name == "pm_runtime_resume_and_get"


def _enclosing_statement(node):
    s = node
    while s.parent is not None and s.parent.type not in ("compound_statement", "translation_unit"):
        s = s.parent
    return s


def _in_condition(call) -> object | None:
    """The if_statement whose condition holds the call, if any."""
    n = call
    while n.parent is not None:
        p = n.parent
        if p.type == "if_statement" and p.child_by_field_name("condition") == n:
            return p
        if p.type in ("compound_statement", "function_definition"):
            return None
        n = p
    return None


def _assigned_var(call):
    """The variable a call's result goes to: `x = f()` / `T *x = f()`."""
    n = call
    while n.parent is not None and n.parent.type in ("cast_expression", "parenthesized_expression"):
        n = n.parent
    p = n.parent
    if p is None:
        return None, None
    if p.type == "assignment_expression" and p.child_by_field_name("right") == n:
        left = p.child_by_field_name("left")
        return cparse.node_text(left), left.type
    if p.type == "init_declarator" and p.child_by_field_name("value") == n:
        d = p.child_by_field_name("declarator")
        while d is not None and d.type != "identifier":
            d = d.child_by_field_name("declarator")
        decl = p.parent
        if decl is not None and "__free(" in cparse.node_text(decl):
            return "__free__", None
        return (cparse.node_text(d), "identifier") if d is not None else (None, None)
    return None, None


def _ancestors(node) -> set:
    out = set()
    n = node.parent
    while n is not None:
        out.add((n.start_byte, n.end_byte, n.type))
        n = n.parent
    return out


def _ident(n) -> tuple:
    return (n.start_byte, n.end_byte, n.type)


def _consequence_of(node):
    """The if_statement whose consequence holds node (nearest), or None."""
    n = node
    while n.parent is not None:
        p = n.parent
        if p.type == "if_statement" and p.child_by_field_name("consequence") == n:
            return p
        if p.type == "function_definition":
            return None
        n = p
    return None


def _mentions(text: str, name: str) -> bool:
    return bool(name) and re.search(r"(?<![\w.>])" + re.escape(name) + r"(?!\w)", text) is not None


def _analyse(fn_node, file_calls: set[str], vis: set[int] | None) -> list[_Leak]:
    body = fn_node.child_by_field_name("body")
    if body is None:
        return []
    # (the function's call names: its body's, and the few a declarator
    # may hold; remembered for the other rules)
    if not any(release_names(n, file_calls) for n in cparse.node_call_names(fn_node)):
        return []           # acquires nothing that needs a release
    calls = cparse.calls(body)
    exits = [n for n in cparse.walk(body) if n.type in ("return_statement", "goto_statement")]
    labels = {}
    for n in cparse.walk(body):
        if n.type == "labeled_statement":
            lab = n.child_by_field_name("label")
            if lab is not None:
                labels[cparse.node_text(lab)] = n
    fn_end = cparse.end_line_of(fn_node)
    out: list[_Leak] = []
    for c in calls:
        rels = release_names(c.name, file_calls)
        if not rels:
            continue
        var, vtype = _assigned_var(c.node)
        if var == "__free__":
            continue
        status = _is_status(c.name)
        if status or var is None:
            if not c.args:
                continue
            resource = _norm(c.args[0])
            check_var = var if var and vtype == "identifier" else None
        else:
            if vtype != "identifier":
                continue            # stored straight into a structure
            resource = var
            check_var = var
        if not resource:
            continue
        stmt = _enclosing_statement(c.node)
        block = stmt.parent
        if block is None:
            continue
        cond_if = _in_condition(c.node)
        fail_if = cond_if
        if fail_if is None and check_var:
            for sib in block.named_children:
                if sib.start_byte <= stmt.start_byte or sib.type != "if_statement":
                    continue
                cond = sib.child_by_field_name("condition")
                if cond is not None and _mentions(cparse.node_text(cond), check_var):
                    fail_if = sib
                break           # only the statement right after the acquire
        rel_calls = [r for r in calls if r.name in rels and r.args and _norm(r.args[0]) == _norm(resource)]
        # Any release of that kind counts as this resource's release on an
        # exit path: the same object often goes by another name there
        # (`priv->subsys` vs `bus->p->subsys`), and some are released by
        # name (`proc_mkdir()` / `remove_proc_entry("bus/input", NULL)`).
        rel_any = [r for r in calls if r.name in rels]
        ladder = any(r.line > c.line for r in rel_calls)
        if status and var is None and not ladder and c.name not in STATUS_ACQUIRES \
                and not _is_registration(c.name):
            continue
        # refcount-style acquires on an argument are reported only against a ladder
        if (status or var is None) and not _is_registration(c.name) and not ladder \
                and c.name not in ("request_irq", "request_threaded_irq", "clk_prepare_enable"):
            continue
        block_id = _ident(block)
        for ex in exits:
            if ex.start_byte <= stmt.end_byte:
                continue
            anc = _ancestors(ex)
            if block_id not in anc:
                continue
            if fail_if is not None and _ident(fail_if) in anc:
                continue
            ex_line = cparse.line_of(ex)
            if vis is not None and not all(i in vis for i in range(c.line, ex_line + 1)):
                break
            ex_text = " ".join(cparse.node_text(ex).split())
            if ex.type == "return_statement":
                expr = ex_text[len("return"):].rstrip(";").strip()
                if var and _mentions(expr, resource):
                    break           # ownership goes to the caller
                if not expr or expr == "0":
                    continue
                if not (_ERROR_RET_RE.match(expr) or _consequence_of(ex) is not None):
                    continue
                if _released_before(ex, c, rel_any, calls, resource, anc):
                    continue
            else:
                lab = ex.child_by_field_name("label")
                target = labels.get(cparse.node_text(lab)) if lab is not None else None
                if target is None or cparse.line_of(target) < c.line:
                    continue
                if _consequence_of(ex) is None:
                    continue
                if vis is not None and not all(i in vis for i in range(cparse.line_of(target), fn_end + 1)):
                    continue
                if _released_before(ex, c, rel_any, calls, resource, anc):
                    continue
                tl = cparse.line_of(target)
                if any(r.line >= tl for r in rel_any) or any(
                        r.line >= tl and r.name not in rels and _passes(r, resource) for r in calls):
                    continue
            if not var or not _transferred_before(body, resource, c, ex, rel_calls):
                out.append(_Leak(c, resource, ex_line, ex_text, ladder, value=not status and var is not None))
                break
    return out


def _passes(call: cparse.Call, resource: str) -> bool:
    return any(_norm(a) == resource or _norm(a).startswith(resource + "->") for a in call.args)


def _released_before(ex, acq, rel_calls, calls, resource, anc) -> bool:
    """A release (or any non-logging call, taken as a destructor) between
    the acquire and the exit, in a block the exit is inside."""
    for r in calls:
        if not (acq.line < r.line <= cparse.line_of(ex)) or r.node.start_byte <= acq.node.end_byte:
            continue
        blk = r.node
        while blk is not None and blk.type != "compound_statement":
            blk = blk.parent
        if blk is None or _ident(blk) not in anc:
            continue
        if r in rel_calls:
            return True
        cons = _consequence_of(ex)
        branch = cons.child_by_field_name("consequence") if cons is not None else None
        if branch is not None and branch.start_byte <= r.node.start_byte and not _LOG_RE.match(r.name):
            return True     # (a call in the condition is what failed, not a clean-up)
    return False


def _transferred_before(body, var, acq, ex, rel_calls=()) -> bool:
    """Whether VAR is handed on (stored in a structure, passed to a call
    that adds, sets, queues ... it) between the acquire and the exit.  A
    hand-over the function itself releases VAR after is not one
    (`platform_set_drvdata(pdev, mci)` with `edac_mc_free(mci)` in the
    unwind ladder): the function still owns it.  A release in the
    hand-over's own failure branch does not count (after a failed
    devm_add_action_or_reset() the object is still the function's)."""
    for n in cparse.walk(body):
        if not (acq.node.end_byte < n.start_byte < ex.start_byte) or not _hands_over(n, var):
            continue
        fail = _failure_branch(n) if n.type == "call_expression" else None
        if any(r.node.start_byte > n.end_byte and not (fail is not None and
               fail.start_byte <= r.node.start_byte < fail.end_byte) for r in rel_calls):
            continue
        return True
    return False


def _hands_over(n, var) -> bool:
    if n.type == "assignment_expression":
        right = n.child_by_field_name("right")
        left = n.child_by_field_name("left")
        return right is not None and _norm(cparse.node_text(right)) == var and left is not None \
            and left.type != "identifier"
    if n.type == "call_expression":
        fn = n.child_by_field_name("function")
        args = n.child_by_field_name("arguments")
        if fn is None or args is None:
            return False
        return bool(_TRANSFER_RE.search(cparse.node_text(fn))) and any(
            _norm(cparse.node_text(a)) == var or _norm(cparse.node_text(a)).startswith(var + "->")
            for a in args.named_children)
    return False


def _failure_branch(call):
    """The if statement that handles CALL failing: the one whose condition
    holds it, or the statement right after it when that is an if."""
    got = _in_condition(call)
    if got is not None:
        return got
    stmt = _enclosing_statement(call)
    nxt = stmt.next_named_sibling
    while nxt is not None and nxt.type == "comment":
        nxt = nxt.next_named_sibling
    return nxt if nxt is not None and nxt.type == "if_statement" else None


def _init_exit_pairs(text: str, tree) -> list[tuple[str, str]]:
    out = []
    mi = me = None
    if "module_init(" in text and "module_exit(" in text:      # cheap test first: big files
        mi = re.search(r"^module_init\((\w+)\)", text, re.M)
        me = re.search(r"^module_exit\((\w+)\)", text, re.M)
    if mi and me:
        out.append((mi.group(1), me.group(1)))
    for t in cparse.struct_initializers(tree):
        for acq, rels in (("probe", ("remove", "remove_new")),):
            a = t.get(acq)
            for r in rels:
                if a and t.get(r):
                    out.append((a, t.get(r)))
    return out


def _reachable_calls(fn, funcs, depth: int) -> set[str]:
    seen = {fn.name}
    names: set[str] = set()
    frontier = [fn]
    for _ in range(depth + 1):
        nxt = []
        for f in frontier:
            for c in cparse.calls(f.node):
                names.add(c.name)
                if c.name in funcs and c.name not in seen:
                    seen.add(c.name)
                    nxt.append(funcs[c.name])
        frontier = nxt
    return names


def _released_on_success(fn, rels) -> bool:
    """The init function itself undoes it outside its unwind ladder."""
    first_label = min((cparse.line_of(n) for n in cparse.walk(fn.node) if n.type == "labeled_statement"),
                      default=fn.end + 1)
    for c in cparse.calls(fn.node):
        if c.name in rels and c.line < first_label and _consequence_of(c.node) is None:
            return True
    return False
