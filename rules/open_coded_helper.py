"""open-coded-helper (DUP003): added code that does by hand what a kernel helper does."""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.analysis.helpers import ADDED_ONLY, HELPERS, find_shape
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location


class OpenCodedHelper(Rule):
    """Flags added code that open-codes a kernel helper: above all when the
    same function called that helper before the patch.

    ## What it does
    For each function whose removed lines called a helper of its table
    (`kcalloc()`, `struct_size()`, `memdup_user()`, `FIELD_GET()`,
    `strscpy()`, `sysfs_emit()`, `list_first_entry_or_null()`,
    `dev_err_probe()`, `kfree_sensitive()`, ...) and that calls it fewer
    times after the patch, it looks in the lines the patch adds to the same
    function for the helper's open-coded shape (an allocation sized by a
    run-time multiplication, `kmalloc()` + `copy_from_user()`, a mask and a
    shift, `strncpy()`, `sprintf(buf, ...)`, `list_first_entry()`, ...) and
    says what the helper guarded that the open code does not.  With no
    helper removed, a few exact compositions are asked about too
    (`min(hi, max(lo, v))`, `generic_handle_irq(irq_find_mapping())`,
    `buf[0] << 8 | buf[1]`, the "compatible" string compared by hand,
    `check_mul_overflow()` then `kzalloc()`, `sizeof(a) / sizeof(a[0])`);
    the overflow-prone ones (`kmalloc(n * size)`) only at low confidence.

    ## Why is this bad?
    Most of these helpers exist because the open-coded form went wrong
    somewhere: `kcalloc()` and `struct_size()` check the multiplication
    that sizes an allocation (a wrapped size gives a buffer too small for
    what is then written), `memdup_user()` frees on a faulting copy,
    `strscpy()` terminates the string, `FIELD_GET()` keeps the shift in
    step with the mask.  Replacing the helper by its body throws that away,
    and reviewers ask for the helper in new code ("Reinvention of the
    clamp()?", "please use kcalloc()").

    ## Example
        -	new = kzalloc(struct_size(new, se_slots, numslots), GFP_KERNEL);
        +	mem = numslots * sizeof(struct nfsd4_slot *);
        +	new = kzalloc(sizeof(*new) + mem, GFP_KERNEL);

    ## Use instead
    Keep (or call) the helper: `kzalloc(struct_size(new, se_slots,
    numslots), GFP_KERNEL)`, `kcalloc(n, size, gfp)`, `FIELD_GET(MASK, reg)`.

    ## References
    Documentation/process/deprecated.rst (open-coded arithmetic in allocator
    arguments, strncpy(), strlcpy()); include/linux/overflow.h;
    include/linux/bitfield.h
    """

    code = "DUP003"
    name = "open-coded-helper"
    family = "duplicated-helper"
    severity = "info"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            added = fv.added_lines
            if not added:
                continue
            post_funcs = cparse.functions(fv.post_tree)
            done: set[tuple[str, int]] = set()
            if not fv.diff.is_new and fv.diff.removed():
                yield from self._removed_helpers(fv, post_funcs, added, done)
            yield from self._added_only(fv, post_funcs, added, done)

    # -- a helper the function called before the patch
    def _removed_helpers(self, fv, post_funcs, added, done):
        removed = {ln.old_no for ln in fv.diff.removed() if ln.old_no}
        pre_funcs = cparse.functions(fv.pre_tree)
        seen = set()
        for c in cparse.calls(fv.pre_tree.root_node):
            helper = HELPERS.get(c.name)
            if helper is None or c.line not in removed:
                continue
            pre_fn = cparse.function_at(pre_funcs, c.line)
            key = (pre_fn.name if pre_fn else self._section(fv, c.line, new=False), c.name)
            if key in seen:
                continue
            seen.add(key)
            scope, lines = self._post_scope(fv, post_funcs, key[0], added, pre_fn is not None)
            if scope is None:
                continue
            before = self._count(pre_fn.node if pre_fn else fv.pre_tree.root_node, c.name)
            if self._count(scope, c.name) >= before:
                continue            # still called as often: moved, not open-coded
            for shape in helper.shapes:
                ms = [m for m in find_shape(shape, scope, lines) if (shape, m.line) not in done]
                if not ms:
                    continue
                m = ms[0]
                done.update((s, x.line) for s in helper.shapes for x in ms)
                done.update((s.shape, x.line) for s in ADDED_ONLY for x in ms)
                fname = f"{key[0]}()" if pre_fn else "this code"
                detail = f" (with {m.scope_hint})" if m.scope_hint and "=" in m.scope_hint else ""
                msg = (f"{fname} called {c.name}() before this patch; the added `{_short(m.text)}`"
                       f"{detail} does its job by hand.  {c.name}() {helper.guarded}.  Could it "
                       f"keep using {c.name}()?")
                yield self.finding(fv.path, m.line, msg, confidence="medium",
                                   related=[Location(fv.path, fv.old_line(m.line) or c.line,
                                                     f"the removed {c.name}() call")])
                break

    def _post_scope(self, fv, post_funcs, name, added, by_function):
        if by_function:
            fn = next((f for f in post_funcs if f.name == name), None)
            if fn is None:
                return None, set()
            return fn.node, {n for n in added if fn.start <= n <= fn.end}
        lines = set()
        for h in fv.diff.hunks:
            if h.section.strip() == name:
                lines |= {ln.new_no for ln in h.added() if ln.new_no}
        return fv.post_tree.root_node, lines & added

    @staticmethod
    def _section(fv, old_line, new):
        for h in fv.diff.hunks:
            if h.old_start <= old_line < h.old_start + max(h.old_len, 1):
                return h.section.strip()
        return ""

    @staticmethod
    def _count(node, name):
        return sum(1 for c in cparse.calls(node) if c.name == name)

    # -- no helper removed: the exact compositions
    def _added_only(self, fv, post_funcs, added, done):
        # only the top-level items that hold added lines (a big file's other
        # functions are not searched)
        items = cparse.items_touching(fv.post_tree, added)
        if not items:
            return
        texts = [(item, item.text or b"") for item in items]     # each item's text read once
        for spec in ADDED_ONLY:
            per_fn: set[str] = set()
            for m in (m for item, text in texts for m in find_shape(spec.shape, item, added, text)):
                if (spec.shape, m.line) in done:
                    continue
                fn = cparse.function_at(post_funcs, m.line)
                where = fn.name if fn else ""
                if (spec.shape, where) in per_fn:
                    continue
                per_fn.add((spec.shape, where))
                done.add((spec.shape, m.line))
                helper = spec.helper.replace("{end}", m.scope_hint or "be16")
                msg = (f"Isn't `{_short(m.text)}` an open-coded {helper}? Using the helper "
                       f"would be clearer: {spec.why}.")
                yield self.finding(fv.path, m.line, msg, confidence=spec.confidence)


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[:limit - 5] + " ..."
