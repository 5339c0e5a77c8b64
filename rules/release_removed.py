"""release-removed (REL004): the patch deletes a release whose acquire stays."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.analysis.rulekit import ITERATOR_PUTS, SCOPED_ITERATORS, acquires_of, is_release
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

# where the resource is among a release's arguments (default: the first)
_RESOURCE_ARG = {"dma_free_coherent": 2, "dma_free_attrs": 2, "free_irq": 1, "release_mem_region": 0,
                 "device_destroy": 1, "dma_unmap_single": 1, "dma_unmap_page": 1}
_EXIT_TYPES = ("return_statement", "goto_statement", "break_statement", "continue_statement")
_LOOPS = ("for_statement", "while_statement", "do_statement")
_CLEANUP_WORDS = re.compile(r"put|free|release|destroy|cleanup|clean_up|unregister|remove|exit|deinit|"
                            r"teardown|uninit|kill|close|stop|disable|unmap|detach|del|drop|undo|fini|unwind",
                            re.I)


_UNDO_WORDS = re.compile(r"(?:^|_)(?:cleanup|deinit|uninit|teardown|exit|fini)(?:_|$)")


def _undoes(name: str) -> bool:
    """A release, or the undo of a set-up step named after it
    (mlx5_cleanup_clock() for mlx5_init_clock(), foo_deinit() for
    foo_init()): such a pair counts only where the function calls both."""
    return is_release(name) or (_UNDO_WORDS.search(name) is not None and bool(acquires_of(name)))


def _norm(expr: str) -> str:
    t = re.sub(r"\s+", "", expr)
    t = re.sub(r"^\((?:const)?(?:struct)?\w+\*?\)", "", t)      # a cast
    return t.lstrip("&")


def _resource(call: cparse.Call) -> str | None:
    i = _RESOURCE_ARG.get(call.name, 0)
    return _norm(call.args[i]) if len(call.args) > i else None


def _member(expr: str) -> str | None:
    m = re.search(r"(?:->|\.)(\w+)$", expr)
    return m.group(1) if m else None


class ReleaseRemoved(Rule):
    """Flags a release (`kfree()`, `of_node_put()`, `put_device()`,
    `pm_runtime_put*()`, `tasklet_kill()`, `unregister_*()`, ...) that the
    patch deletes while what it released is still acquired, and no other
    release is left on the path the deleted one was on.

    ## What it does
    For each call the patch removes that gives something back, it looks at
    the same function after the patch: if the release is not simply moved
    (the same release of the same object, or a call handing the object to a
    cleanup helper, is added), and the object still comes from an acquire
    that this release undoes (`np = of_get_child_by_name()`,
    `for_each_child_of_node(parent, child)`, `pm_runtime_get_sync(dev)`,
    `tasklet_init(&priv->tasklet)` elsewhere in the file), it follows the
    path from where the release was to the function's exit (through a
    `goto` into the unwind ladder) and reports when that path releases it
    nowhere and does not hand it on (returned or stored).

    ## Why is this bad?
    Error paths and teardown callbacks are where releases go missing: the
    reference, memory, registration or usage count taken earlier is never
    given back, and the device, module or namespace can never go away.
    Deleting a release is often a refactoring slip; when it fixes a double
    release, the other release is on the same path, and nothing is said.

    ## Example
         np = of_get_child_by_name(dev->of_node, "ports");
         if (!np)
                 return -ENODEV;
         ret = of_property_read_u32(np, "reg", &reg);
         if (ret) {
        -        of_node_put(np);
                 return ret;
         }

    ## Use instead
    Keep the release on every path that leaves with the object, or jump to
    the label of the unwind ladder that releases it.

    ## References
    Documentation/core-api/kref.rst; scripts/coccinelle/iterators/for_each_child.cocci
    """

    code = "REL004"
    name = "release-removed"
    family = "missing-release"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        self._kb = None
        for fv in ctx.c_files():
            if fv.diff.is_new or not fv.diff.removed():
                continue
            full = fv.has_full_image and fv.pre is not None
            removed = {ln.old_no for ln in fv.diff.removed() if ln.old_no}
            pre_funcs = cparse.functions(fv.pre_tree)
            post_funcs = {f.name: f for f in cparse.functions(fv.post_tree)}
            shown = None if full else fv.shown_lines(True)
            reported = set()
            for pf in pre_funcs:
                if not any(pf.start <= n <= pf.end for n in removed):
                    continue
                post = post_funcs.get(pf.name)
                if post is None:
                    continue
                for got in self._goto_became_return(ctx, fv, pf, post, removed, shown):
                    if (pf.name, got.line) not in reported:
                        reported.add((pf.name, got.line))
                        yield got
                for c in cparse.calls(pf.node):
                    if c.line not in removed or not _undoes(c.name):
                        continue
                    res = _resource(c)
                    if not res or (pf.name, c.name, res) in reported:
                        continue
                    if self._kb is None:
                        self._kb = ctx.knowledge or False
                    got = self._check(fv, pf, post, c, res, shown)
                    if got is not None:
                        reported.add((pf.name, c.name, res))
                        yield got

    def _goto_became_return(self, ctx, fv, pre_fn, post_fn, removed, shown):
        """A `goto` into the unwind ladder replaced by a direct `return`:
        what the ladder releases, and this function took before that
        point, is now kept on that path.  What it took: an acquire the
        release pairs with; a call whose result the ladder releases, when
        the tree's callers release it so or this function's other failure
        paths after it still go to that label; or, for a release that
        undoes this very function (niu_free_channels() in
        niu_alloc_channels()), whatever the function set up by then."""
        for label, ret_line in _replaced_gotos(fv, removed):
            if not (post_fn.start <= ret_line <= post_fn.end):
                continue
            body = post_fn.node.child_by_field_name("body")
            tgt = next((n for n in cparse.walk(body) if n.type == "labeled_statement"
                        and cparse.node_text(n.child_by_field_name("label")) == label), None) if body else None
            if tgt is None or cparse.line_of(tgt) < ret_line:
                continue
            if shown is not None and any(i not in shown for i in range(cparse.line_of(tgt), post_fn.end + 1)):
                continue
            ladder = [c for c in cparse.calls(post_fn.node) if c.line >= cparse.line_of(tgt)]
            for rel in ladder:
                if not _undoes(rel.name):
                    continue
                res = _resource(rel)
                fam = acquires_of(rel.name)
                if not res or not fam:
                    continue
                acq = _acquire_of(post_fn, res, fam)
                support = ""
                if acq is None and post_fn.name in fam:
                    acq = (post_fn.name, post_fn.start, "self")
                if acq is None:
                    # a call the tables do not know: the tree's callers, or
                    # this function's own ladder, say what it hands out
                    got = _unknown_acquire(post_fn, res, ret_line)
                    if got is not None:
                        if self._kb is None:
                            self._kb = ctx.knowledge or False
                        sup = _mined(self._kb, got[0], rel.name, fam) if self._kb else ""
                        if not sup and any(g > got[1] for g in _gotos_to(post_fn, label)):
                            sup = f", and the other failure paths after it still go to {label}"
                        if sup:
                            acq, support = got, sup
                if acq is None or acq[1] >= ret_line:
                    continue
                if shown is not None and acq[1] not in shown:
                    continue
                # released on the way to the return anyway?
                if any(_undoes(c.name) and _resource(c) == res and acq[1] < c.line < ret_line
                       for c in cparse.calls(post_fn.node)):
                    continue
                call = f"{rel.name}({rel.args[_RESOURCE_ARG.get(rel.name, 0)].strip()})"
                if acq[2] == "self":
                    msg = (f"This returns directly where it used to `goto {label}`, but the code at "
                           f"{label} calls {call}, which undoes what {post_fn.name}() has set up by "
                           f"then. Is that left behind on this path now?")
                    related = [Location(fv.path, rel.line, f"{label} undoes it")]
                else:
                    msg = (f"This returns directly where it used to `goto {label}`, but the code at "
                           f"{label} calls {call}, and {res} was taken by {acq[0]}() at line "
                           f"{acq[1]}{support}. Is it leaked on this path now?")
                    related = [Location(fv.path, acq[1], f"{acq[0]}() takes it"),
                               Location(fv.path, rel.line, f"{label} releases it")]
                yield self.finding(fv.path, ret_line, msg, confidence="medium", related=related)
                break

    def _check(self, fv, pre_fn, post_fn, call, res, shown):
        fam = acquires_of(call.name)
        if not fam:
            return None
        # moved, not removed: as many releases of it after the patch as before
        def count(fn):
            return sum(1 for c in cparse.calls(fn.node)
                       if _undoes(c.name) and (c.name == call.name or acquires_of(c.name) & fam)
                       and _resource(c) == res)
        if count(post_fn) >= count(pre_fn):
            return None
        added = fv.added_lines
        base = re.split(r"->|\.", res)[0]
        fn_names = frozenset(c.name for c in cparse.calls(post_fn.node))
        instead = None
        for c in cparse.calls(post_fn.node):
            step = _step_undone(c.name, fn_names, fam)
            if step is not None:
                if c.line in added and any(_norm(a) == res for a in c.args):
                    instead = (c.name, step)    # platform_device_del() for platform_device_put()
                continue
            if c.line in added and _CLEANUP_WORDS.search(c.name) and any(
                    _norm(a) == res or _norm(a).startswith((res + "->", res + ".")) or _norm(a) == base
                    for a in c.args):
                return None        # handed to a cleanup helper instead
        anchor = _anchor(fv, call.line)
        acq = _acquire_of(post_fn, res, fam) or _file_acquire(fv, res, fam)
        if acq is None and anchor is not None:
            acq = _unknown_acquire(post_fn, res, anchor)
            if acq is None and self._kb:
                # what RES hangs off, from a call the tree's pairs vouch for
                got = _unknown_acquire(post_fn, res, anchor, exact=False)
                if got is not None and _mined(self._kb, got[0], call.name, fam):
                    acq = got
        if acq is None:
            return None
        if anchor is None or not (post_fn.start <= anchor <= post_fn.end):
            return None
        if shown is not None and (acq[1] not in shown or anchor not in shown):
            return None
        exit_line = _unreleased_exit(post_fn, anchor, res, fam, call.name, shown, fn_names)
        if exit_line is None:
            return None
        acq_name, acq_line, how = acq
        support = ""
        if how == "value?" and self._kb:
            # the tree's callers of that function: do they give it back so?
            support = _mined(self._kb, acq_name, call.name, fam)
            if support:
                how = "value"
        where = "in this function" if how != "file" else "in this file"
        if exit_line == post_fn.end:
            path = f"{post_fn.name}() now ends"
        else:
            path = f"the path through line {exit_line} now leaves {post_fn.name}()"
        arg = call.args[_RESOURCE_ARG.get(call.name, 0)].strip()
        if not is_release(call.name):
            # the undo of a set-up step (mlx5_cleanup_clock() / mlx5_init_clock())
            msg = (f"This removes {call.name}({arg}), but {acq_name}() {where} (line {acq_line}) "
                   f"stays, and {path} without undoing it. Is that set-up left behind there now?")
        else:
            msg = (f"This removes {call.name}({arg}), "
                   f"but {res} is still taken by {acq_name}() {where} (line {acq_line}){support}, and {path} "
                   f"without releasing it. Is it leaked there now, or is it released somewhere "
                   f"this patch does not show?")
            if instead:
                msg += f" ({instead[0]}() undoes {instead[1]}(), not {acq_name}().)"
        conf = "low" if how == "value?" else "medium"
        return self.finding(fv.path, anchor, msg, confidence=conf,
                            related=[Location(fv.path, acq_line, f"{acq_name}() takes it"),
                                     Location(fv.path, exit_line, "leaves without releasing")])


_STRUCTURAL = re.compile(r"^\s*(?:\}?\s*else\b.*|if\s*\(.*\)\s*\{?|\{|\})\s*$")


_GOTO = re.compile(r"^\s*goto\s+(\w+)\s*;")
_RETURN = re.compile(r"^\s*return\b")


def _replaced_gotos(fv, removed: set[int]) -> list[tuple[str, int]]:
    """(label, post line of the return) for each `goto L;` the patch turns
    into a `return`: a removed goto with an added return beside it."""
    out = []
    for h in fv.diff.hunks:
        lines = h.lines
        for i, ln in enumerate(lines):
            m = _GOTO.match(ln.text) if ln.kind == "-" else None
            if not m:
                continue
            for other in lines[max(0, i - 4): i + 5]:
                if other.kind == "+" and other.new_no and _RETURN.match(other.text):
                    out.append((m.group(1), other.new_no))
                    break
    return out


def _gotos_to(fn, label: str) -> list[int]:
    """The lines of FN's `goto LABEL;` statements."""
    body = fn.node.child_by_field_name("body")
    return [cparse.line_of(n) for n in cparse.walk(body) if n.type == "goto_statement"
            and cparse.node_text(n.child_by_field_name("label")) == label] if body else []


def _anchor(fv, old_no: int) -> int | None:
    """The post-image line the removed line OLD_NO sat before."""
    for h in fv.diff.hunks:
        hit = False
        last = None
        for ln in h.lines:
            if ln.kind == "-" and ln.old_no == old_no:
                hit = True
                continue
            if hit and ln.kind != "-" and ln.new_no:
                if ln.kind == "+" and _STRUCTURAL.match(ln.text):
                    last = ln.new_no
                    continue        # a brace or a branch head: the path goes on below
                return ln.new_no
            if ln.new_no:
                last = ln.new_no
        if hit:
            return last
    return None


def _mined(kb, acquire: str, release: str, fam) -> str:
    """The tree's support for ACQUIRE being undone by RELEASE (or its kin),
    in words, or '' when the mined pairs do not say so."""
    try:
        pairs = kb.release_for(acquire)
    except Exception:
        return ""
    for rel, sup, total, src in pairs:
        if (rel == release or acquires_of(rel) & fam) and sup >= 2 and sup * 2 >= total:
            return (f" (of the {total} callers of {acquire}() in the tree that keep its result, "
                    f"{sup} release it with {rel}())")
    return ""


def _assigned(c: cparse.Call) -> str | None:
    """What a call's result is assigned to (`x = f()`, `T *x = f()`)."""
    n = c.node
    while n.parent is not None and n.parent.type in ("cast_expression", "parenthesized_expression"):
        n = n.parent
    p = n.parent
    if p is not None and p.type == "assignment_expression" and p.child_by_field_name("right") == n:
        return _norm(cparse.node_text(p.child_by_field_name("left")))
    if p is not None and p.type == "init_declarator" and p.child_by_field_name("value") == n:
        d = p.child_by_field_name("declarator")
        while d is not None and d.type != "identifier":
            d = d.child_by_field_name("declarator")
        return cparse.node_text(d) if d is not None else None
    return None


def _derives(res: str, var: str) -> bool:
    return res == var or res.startswith((var + "->", var + "."))


_ACCESSOR = re.compile(r"(_priv|drvdata|_data|container_of|^to_\w+|_of)$")


def _unknown_acquire(fn, res: str, before: int, exact: bool = True) -> tuple[str, int, str] | None:
    """RES assigned from some call before line BEFORE (or, not EXACT, what
    it hangs off): the deleted release says that call hands out something
    to give back (how much that is worth, the tree's pairs tell).
    Accessors (netdev_priv(), dev_get_drvdata(), container_of()) hand out
    nothing."""
    best = None
    for c in cparse.calls(fn.node):
        if c.line >= before or is_release(c.name) or _ACCESSOR.search(c.name):
            continue
        var = _assigned(c)
        if var and (var == res if exact else _derives(res, var)):
            best = (c.name, c.line, "value?")
    return best


def _acquire_of(fn, res: str, fam) -> tuple[str, int, str] | None:
    """An acquire in FN that RES comes from: assigned from one, passed to a
    by-argument one, or the variable of a reference-counting iterator."""
    for c in cparse.calls(fn.node):
        if c.name not in fam:
            continue
        if c.name in ITERATOR_PUTS:
            if c.name not in SCOPED_ITERATORS and any(_norm(a) == res for a in c.args):
                return c.name, c.line, "iterator"
            continue
        var = _assigned(c)
        if var is not None and _derives(res, var):
            return c.name, c.line, "value"
        if any(_norm(a) == res for a in c.args):
            return c.name, c.line, "argument"
    return None


def _file_acquire(fv, res: str, fam) -> tuple[str, int, str] | None:
    """For a struct member (priv->tasklet): an acquire of the same member
    anywhere in the file (set up in probe, torn down in remove)."""
    mem = _member(res)
    if mem is None:
        return None
    for f in cparse.functions(fv.post_tree):
        for c in cparse.calls(f.node):
            if c.name not in fam or c.name in ITERATOR_PUTS:
                continue
            var = _assigned(c)
            # priv->x = acquire(), acquire(&priv->x), or a local named like
            # the member (phydev = phy_connect(), later dev->phydev)
            if (var is not None and (_member(var) == mem or var == mem)) or any(
                    _member(_norm(a)) == mem for a in c.args):
                return c.name, c.line, "file"
    return None


# clean-ups that undo a later step of a two-step set-up (platform_device_del()
# undoes platform_device_add(), not platform_device_alloc())
_STEP_UNDO = (("_del", ("_add",)), ("_remove", ("_add", "_insert")), ("_stop", ("_start",)),
              ("_disable", ("_enable",)))


def _step_undone(name: str, fn_names: frozenset, fam) -> str | None:
    """The later set-up step (called in the function, FN_NAMES) that NAME
    undoes instead of an acquire of FAM, or None."""
    for suf, steps in _STEP_UNDO:
        if name.endswith(suf):
            others = [name[: -len(suf)] + s for s in steps]
            if any(o in fam for o in others):
                return None
            return next((o for o in others if o in fn_names), None)
    return None


def _releases(node, res: str, fam, name: str, fn_names: frozenset = frozenset()) -> bool:
    for c in cparse.calls(node):
        if _undoes(c.name) and (c.name == name or acquires_of(c.name) & fam) and _resource(c) == res:
            return True
        if _CLEANUP_WORDS.search(c.name) and any(_norm(a) == res for a in c.args) and c.name != name \
                and is_release(name) and _step_undone(c.name, fn_names, fam) is None:
            return True     # handed to a helper that may release it (not for a set-up step's
            #                 undo: mlx5_cleanup_clock(dev) is not done by another cleanup of dev)
    return False


def _hands_on(node, res: str) -> bool:
    """RES returned, or stored somewhere that outlives the function."""
    for n in cparse.walk(node):
        if n.type == "return_statement" and re.search(r"(?<![\w>.])" + re.escape(res) + r"(?![\w])",
                                                      cparse.node_text(n)):
            return True
        if n.type == "assignment_expression":
            right = n.child_by_field_name("right")
            left = n.child_by_field_name("left")
            if right is not None and _norm(cparse.node_text(right)) == res and left is not None \
                    and left.type != "identifier":
                return True
    return False


def _branches(stmt) -> list[list]:
    """The statement lists nested directly in STMT: an if's branches, a
    loop's body, a labeled statement's statement, a block's statements."""
    if stmt.type == "compound_statement":
        return [[c for c in stmt.named_children if c.type != "comment"]]
    out = []
    if stmt.type == "if_statement":
        for field in ("consequence", "alternative"):
            b = stmt.child_by_field_name(field)
            if b is not None:
                if b.type == "else_clause":
                    b = next((c for c in b.named_children), None)
                if b is not None:
                    out.append(_as_list(b))
    elif stmt.type in _LOOPS or stmt.type in ("labeled_statement", "case_statement", "switch_statement"):
        for c in stmt.named_children:
            if c.type in ("compound_statement",) or c.type.endswith("_statement"):
                out.append(_as_list(c))
    return out


def _as_list(node) -> list:
    if node.type == "compound_statement":
        return [c for c in node.named_children if c.type != "comment"]
    return [node]


def _unreleased_exit(fn, anchor: int, res: str, fam, name: str, shown, fn_names: frozenset) -> int | None:
    """Follow the statements from ANCHOR to the function's exit; the exit's
    line when nothing on the way releases RES or hands it on, else None."""
    body = fn.node.child_by_field_name("body")
    if body is None:
        return None
    labels = {}
    for n in cparse.walk(body):
        if n.type == "labeled_statement":
            lab = n.child_by_field_name("label")
            if lab is not None:
                labels[cparse.node_text(lab)] = n
    # the chain of statement lists from the body down to the anchor
    chain = []          # (list, index, holder statement)
    cur, holder = _as_list(body), None
    for _ in range(32):
        idx = next((i for i, s in enumerate(cur) if cparse.end_line_of(s) >= anchor), None)
        if idx is None:
            chain.append((cur, len(cur), holder))
            break
        s = cur[idx]
        inner = None
        if cparse.line_of(s) < anchor or (s.type not in _EXIT_TYPES and s.type != "expression_statement"
                                         and cparse.line_of(s) <= anchor < cparse.end_line_of(s)):
            for br in _branches(s):
                if br and cparse.line_of(br[0]) <= anchor <= cparse.end_line_of(br[-1]) + 1 and (
                        cparse.line_of(br[0]) >= cparse.line_of(s)):
                    inner = br
                    break
        chain.append((cur, idx, holder))
        if inner is None or s.type in _LOOPS and False:
            break
        cur, holder = inner, s
    seen_labels = set()
    for level in range(len(chain) - 1, -1, -1):
        lst, idx, holder = chain[level]
        for st in lst[idx:]:
            if st.type == "comment":
                continue
            if shown is not None and any(i not in shown for i in range(cparse.line_of(st), cparse.end_line_of(st) + 1)):
                return None
            if _releases(st, res, fam, name, fn_names) or _hands_on(st, res):
                return None
            ex = _first_exit(st)
            if ex is None:
                continue
            if ex.type == "goto_statement":
                lab = ex.child_by_field_name("label")
                tgt = labels.get(cparse.node_text(lab)) if lab is not None else None
                lname = cparse.node_text(lab) if lab is not None else ""
                if tgt is None or lname in seen_labels:
                    return None
                seen_labels.add(lname)
                if shown is not None and any(i not in shown for i in range(cparse.line_of(tgt), fn.end + 1)):
                    return None
                # the ladder from the label down to the function's end
                tail = [s for s in body.named_children if cparse.line_of(s) >= cparse.line_of(tgt)]
                if any(_releases(s, res, fam, name, fn_names) or _hands_on(s, res) for s in tail):
                    return None
                return cparse.line_of(ex)
            if ex.type == "return_statement":
                return cparse.line_of(ex)
            return None        # break/continue: where the loop goes next is not followed
        # fell off the end of this list: on after the statement holding it
        if holder is not None and holder.type in _LOOPS:
            return None        # the loop goes round again
    return fn.end


def _block_of(stmt, line: int):
    """The compound statement inside STMT (a branch, a loop body, a case)
    that holds LINE, if any."""
    if stmt.type == "compound_statement":
        return stmt
    for ch in stmt.named_children:
        if cparse.line_of(ch) <= line <= cparse.end_line_of(ch):
            if ch.type == "compound_statement":
                return ch
            got = _block_of(ch, line)
            if got is not None:
                return got
    return None


def _first_exit(stmt):
    """The exit STMT takes when it runs straight through: STMT itself, or
    the last statement of an unconditional block."""
    if stmt.type in _EXIT_TYPES:
        return stmt
    if stmt.type == "labeled_statement":
        kids = [c for c in stmt.named_children if c.type != "statement_identifier"]
        return _first_exit(kids[-1]) if kids else None
    if stmt.type == "compound_statement":
        for ch in stmt.named_children:
            got = _first_exit(ch)
            if got is not None:
                return got
    return None
