"""duplicate-definition (DUP005): a macro defined again in the file that already defines it."""
from __future__ import annotations

import re
from collections import Counter

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

_DEFS = ("preproc_def", "preproc_function_def")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)", re.M)
_BRANCHES = ("preproc_if", "preproc_ifdef", "preproc_elif", "preproc_elifdef", "preproc_else")


class DuplicateDefinition(Rule):
    """Flags a `#define` the patch adds for a macro that the same file
    already defines in the same preprocessor branch, with no `#undef` in
    between.

    ## What it does
    Reads every `#define` of the file after the patch, with the
    `#if`/`#ifdef`/`#else` branch it sits in.  For each definition the
    patch adds, it looks for another definition of the same name in the
    same branch (`#ifdef CONFIG_X ... #else ... #endif` alternatives are
    not duplicates) that no `#undef` and no conditional directive
    separate from it.  High confidence
    when the two bodies are the same, medium when they differ (then the
    later one silently wins wherever it is seen first, and the compiler
    warns "redefined").

    ## Why is this bad?
    Two copies of one definition drift apart: the next fix lands in one of
    them, and which one a use gets depends on where it sits in the file.
    An identical copy is usually a merge or rebase leftover; a different
    one changes the meaning of the code between the two.

    ## Example
         #define dir_item_err(eb, slot, fmt, ...)		\\
        	dump_leaf_err(eb, slot, fmt, __VA_ARGS__)
         ...
        +#define dir_item_err(eb, slot, fmt, ...)		\\
        +	dump_leaf_err(eb, slot, fmt, __VA_ARGS__)

    ## Use instead
    Keep one definition, where the file's other definitions are.

    ## References
    gcc -Wall ("X" redefined); Documentation/process/coding-style.rst
    ("Macros, Enums and RTL").
    """

    code = "DUP005"
    name = "duplicate-definition"
    family = "duplicated-helper"
    severity = "info"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            added = fv.added_lines
            new_names = {m.group(1) for h in fv.diff.hunks for ln in h.added()
                         for m in [_DEFINE.match(ln.text)] if m}
            if not new_names:
                continue        # no #define added: nothing to ask
            seen = Counter(_DEFINE.findall(fv.post_text))
            if not any(seen[n] > 1 for n in new_names):
                continue        # (a cheap look at the text before the tree is walked)
            defs: dict[str, list] = {}
            for node in cparse.walk(fv.post_tree.root_node):
                if node.type in _DEFS:
                    name = node.child_by_field_name("name")
                    if name is not None and seen[cparse.node_text(name)] > 1:
                        defs.setdefault(cparse.node_text(name), []).append(node)
            lines = fv.post_text.split("\n")
            for name, nodes in defs.items():
                if len(nodes) < 2:
                    continue
                new = [n for n in nodes if cparse.line_of(n) in added]
                old = [n for n in nodes if cparse.line_of(n) not in added]
                for n in new:
                    twin = next((o for o in old + [x for x in new if x is not n and x.start_byte < n.start_byte]
                                 if _branch(o) == _branch(n) and not _between(lines, name, o, n)), None)
                    if twin is None:
                        continue
                    same = _body(twin) == _body(n)
                    at = cparse.line_of(twin)
                    also = " (also added by this patch)" if at in added else ""
                    if same:
                        msg = (f"Isn't this a second definition of {name}? Line {at}{also} already "
                               f"defines it, with the same body. Is one of them a leftover?")
                    else:
                        msg = (f"{name} is already defined at line {at} of this file, with another body, "
                               f"and nothing #undefs it in between. Which definition is meant to hold here?")
                    yield self.finding(fv.path, cparse.line_of(n), msg, confidence="high" if same else "medium",
                                       end_line=cparse.end_line_of(n),
                                       related=[Location(fv.path, at, f"the other definition of {name}")])
                    break       # one finding per name


def _branch(node) -> tuple:
    """The preprocessor branches NODE sits in, innermost last."""
    out = []
    n = node.parent
    while n is not None:
        if n.type in _BRANCHES:
            out.append((n.start_byte, n.type))
        n = n.parent
    return tuple(reversed(out))


_CONDITIONALS = ("if", "ifdef", "ifndef", "elif", "elifdef", "elifndef", "else", "endif")


def _between(lines: list[str], name: str, a, b) -> bool:
    """An `#undef NAME`, or any conditional directive, between A and B: a
    hunk may show an `#else` without its `#if`, so the parse's branches
    alone are not trusted."""
    lo, hi = sorted((cparse.line_of(a), cparse.line_of(b)))
    for text in lines[lo:hi - 1]:
        t = text.strip()
        if not t.startswith("#"):
            continue
        words = t[1:].split()
        if words and (words[0] in _CONDITIONALS or (words[0] == "undef" and words[-1] == name)):
            return True
    return False


def _body(node) -> str:
    """The definition without its name: parameters and value, blanks folded."""
    parts = [node.child_by_field_name(f) for f in ("parameters", "value")]
    return " ".join(" ".join(cparse.node_text(p).replace("\\\n", " ").split()) for p in parts if p is not None)
