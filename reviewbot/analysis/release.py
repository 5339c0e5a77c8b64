"""Helpers shared by the missing-release rules (REL001-REL003).

Not a rule module (the leading underscore keeps discovery away).
"""
from __future__ import annotations

from reviewbot.analysis import cparse
from reviewbot.engine import FileView, PatchContext
from reviewbot.analysis.rulekit import release_names

# Calls that allocate state which a matching release hook must free, beyond
# the pairs that release_names() knows.
EXTRA_ACQUIRES = {"single_open", "single_open_size", "seq_open", "seq_open_private",
                  "__seq_open_private", "simple_attr_open"}


def visible_lines(fv: FileView, new: bool) -> set[int] | None:
    """Lines of the image the rule can see: None means all (full image)."""
    if (fv.post if new else fv.pre) is not None:
        return None
    return fv.shown_lines(new)


def all_visible(vis: set[int] | None, start: int, end: int) -> bool:
    return vis is None or all(i in vis for i in range(start, end + 1))


def removed_old_lines(fv: FileView) -> set[int]:
    return {ln.old_no for ln in fv.diff.removed() if ln.old_no}


def known_calls(tree) -> "KnownCalls":
    return KnownCalls(tree)


class KnownCalls:
    """The names a file calls (cparse.call_names(tree)), read on the first
    membership test: release_names() asks only about name-derived pairs
    (X_get/X_put, ...), and most functions a patch touches make no such
    call, so most images of a series are never read whole."""

    __slots__ = ("_tree", "_names")

    def __init__(self, tree):
        self._tree = tree
        self._names: frozenset[str] | None = None

    def _get(self) -> frozenset[str]:
        if self._names is None:
            self._names = cparse.call_names(self._tree)
        return self._names

    def __contains__(self, name) -> bool:
        return name in self._get()

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def function_named(tree, name: str):
    for f in cparse.functions(tree):
        if f.name == name:
            return f
    return None


def body_acquires(fn_node, file_calls) -> list[cparse.Call]:
    """Calls in a function body that take something needing a release."""
    out = []
    for c in cparse.calls(fn_node):
        if c.name in EXTRA_ACQUIRES or release_names(c.name, file_calls):
            out.append(c)
    return out


def anchor_line(fv: FileView, start: int, end: int) -> int:
    """A line of [start, end] that the diff shows, added lines first, so that
    the reply can quote it; else start."""
    added = fv.added_lines
    for i in range(start, end + 1):
        if i in added:
            return i
    for h in fv.diff.hunks:
        for ln in h.lines:
            if ln.kind != "-" and ln.new_no and start <= ln.new_no <= end:
                return ln.new_no
    return start


def later_views(ctx: PatchContext, path: str) -> list[FileView]:
    """File views of `path` in the patches after ctx's patch."""
    out = []
    for other in ctx.all_patches or []:
        if other.patch.index <= ctx.patch.index:
            continue
        for fv in other.files:
            if fv.path == path and not fv.diff.is_deleted:
                out.append(fv)
    return out


def series_post_texts(ctx: PatchContext) -> dict[str, str]:
    """The latest post-image text of every C file the series touches."""
    out: dict[str, str] = {}
    for other in sorted(ctx.all_patches or [ctx], key=lambda c: c.patch.index):
        for fv in other.c_files():
            out[fv.path] = fv.post_text
    return out
