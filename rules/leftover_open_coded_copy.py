"""leftover-open-coded-copy (DUP002): a helper is extracted, a copy stays."""
from __future__ import annotations

import os
import re

from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyModule

dx = LazyModule("reviewbot.tree.dupindex")

EXTRACTED = 0.5      # share of the new helper's body that the patch removed elsewhere
LEFTOVER = 0.7       # share of the helper's body still found, in order, in another function
MIN_TOKENS = 25
SKIP_PREFIXES = ("tools/", "samples/", "scripts/", "Documentation/")


class LeftoverOpenCodedCopy(Rule):
    """Flags a helper extracted from open-coded copies when some copy is
    still open-coded after the series.

    ## What it does
    Finds new functions whose body is mostly code the same patch removes
    (the patch extracts a helper), then looks for the same code still
    open-coded: in the post-image of the files the series touches, and with
    a tree, in the rest of the tree (through the cached function index, else
    the same directory).  A function that calls the helper is not a copy.
    When every former copy now calls the helper, nothing is said.

    ## Why is this bad?
    The point of the helper is one place to fix; a copy left behind keeps
    the old behaviour and drifts ("flow_dissector: Extract
    attach/detach/query helpers" converted all three users at once, which is
    what a reviewer checks for).

    ## Example
        +static void bpf_prog_detach_one(struct bpf_prog __rcu **pprog, ...)
        +{
        +	attached = rcu_dereference_protected(*pprog, lockdep_is_held(lock));
        ...
    while another function of the file still does
            attached = rcu_dereference_protected(net->sk_lookup_prog, ...);
            if (!attached) ...

    ## Use instead
    Convert the remaining copy to call the helper in the same patch (or
    say in the commit message why it must stay different).
    """

    code = "DUP002"
    name = "leftover-open-coded-copy"
    family = "duplicated-helper"
    severity = "info"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        helpers = list(_extracted_helpers(ctx))
        if not helpers:
            return
        finals = _final_images(ctx)
        new_names = {h[1].name for h in helpers} | _new_functions(ctx)
        idx = dx.index_for(ctx.tree_path, ctx.base)
        for path, sp, codes, cov in helpers:
            left = self._leftovers(ctx, path, sp, codes, finals, new_names, idx)
            if not left:
                continue
            lpath, lname, first, last, lcov = left[0]
            where = "this file" if lpath == path else lpath
            others = "" if len(left) == 1 else f" ({len(left) - 1} more place(s) look the same)"
            msg = (f"{sp.name}() takes over code this patch removes, but {lname}() in {where} "
                   f"still open-codes the same steps{others}. "
                   f"Could it call {sp.name}() as well, or is there a reason it has to stay different?")
            conf = "high" if lcov >= 0.85 and os.path.dirname(lpath) == os.path.dirname(path) else "medium"
            if not ctx.has_tree:
                # Without a tree the "leftover" is judged from hunk fragments
                # of the files; on the dccp archive those were mostly wrong.
                conf = "low"
            related = [Location(p, f, f"still open-coded in {n}()") for p, n, f, _, _ in left[:5]]
            yield self.finding(path, sp.start, msg, related=related, confidence=conf,
                               end_line=sp.start + 1)

    def _leftovers(self, ctx, path, sp, codes, finals, new_names, idx):
        call = re.compile(r"\b%s\s*\(" % re.escape(sp.name))
        out = []
        seen = set()
        for fpath, text in sorted(finals.items()):
            if not fpath.endswith((".c", ".h")) or fpath.startswith(SKIP_PREFIXES):
                continue
            for osp, ocodes, olines in dx.function_codes(text):
                if osp.name in new_names or osp.name == sp.name:
                    continue
                hit = _copy_of(codes, osp, ocodes, olines, text, call)
                if hit:
                    seen.add((fpath, osp.name))
                    out.append((fpath, osp.name, *hit))
        if idx is not None:
            for func, _ in idx.query(dx.fingerprints(codes), min_shared=3)[:25]:
                if func.path in finals or func.path.startswith(SKIP_PREFIXES) or (func.path, func.name) in seen:
                    continue
                text = idx.read_blob(func.blob)
                for osp, ocodes, olines in dx.function_codes(text or ""):
                    if osp.name == func.name:
                        hit = _copy_of(codes, osp, ocodes, olines, text, call)
                        if hit:
                            out.append((func.path, func.name, *hit))
        out.sort(key=lambda t: (t[0] != path, -t[4], t[0], t[2]))
        return out


def _copy_of(codes, osp, ocodes, olines, text, call):
    if len(ocodes) < len(codes) * 0.6 or dx.calls_shared(codes, ocodes) < 0.7:
        return None
    lk = dx.likeness(codes, ocodes)
    if lk.coverage < LEFTOVER:
        return None
    if call.search(text, osp.body_off, osp.end_off):
        return None
    return int(olines[lk.other_first]), int(olines[lk.other_last]), lk.coverage


def _extracted_helpers(ctx):
    """(path, span, body codes, coverage) of the new functions of this patch
    whose bodies are mostly code the patch removes."""
    removed = []
    for fv in ctx.c_files():
        for h in fv.diff.hunks:
            removed.extend(ln.text for ln in h.removed())
    if not removed:
        return
    rcodes, _ = dx.tokens_with_lines("\n".join(removed))
    if len(rcodes) < MIN_TOKENS:
        return
    for fv in ctx.c_files():
        added = fv.added_lines
        if not added:
            continue
        old_names = {s.name for s in dx.split_functions(fv.pre_text)} if fv.pre is not None else set()
        for sp in dx.split_functions(fv.post_text):
            if sp.start not in added or sp.end not in added or sp.name in old_names:
                continue
            codes, _ = dx.tokens_with_lines(fv.post_text[sp.body_off:sp.end_off])
            if len(codes) < MIN_TOKENS:
                continue
            lk = dx.likeness(codes, rcodes)
            if lk.coverage >= EXTRACTED:
                yield fv.path, sp, codes, lk.coverage


def _new_functions(ctx) -> set[str]:
    """Names of the functions this patch adds whole (new code is DUP001's
    business, not a leftover)."""
    out = set()
    for fv in ctx.c_files():
        added = fv.added_lines
        if added:
            out.update(sp.name for sp in dx.split_functions(fv.post_text)
                       if sp.start in added and sp.end in added)
    return out


def _final_images(ctx) -> dict[str, str]:
    """Path -> text after the whole series, for the files the series touches
    (the hunks only, when there is no tree)."""
    out: dict[str, str] = {}
    for c in ctx.all_patches or [ctx]:
        for fv in c.files:
            if fv.diff.is_deleted:
                out.pop(fv.diff.old_path, None)
            elif fv.diff.is_c:
                out[fv.path] = fv.post_text
    return out

