"""saved-callback-not-restored (REL002): an original callback is saved and never used."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis import release as rc

_PREFIX_RE = LazyPattern(r"^(saved|save|orig|original|old|prev)_(\w+)$")
# an item without one of those prefixes anywhere cannot hold a save
_PREFIX_HINT = LazyPattern(rb"(?:saved?|orig(?:inal)?|old|prev)_")


class SavedCallbackNotRestored(Rule):
    """Flags a saved original callback (`psock->saved_close = prot->close`,
    `x->orig_data_ready = sk->sk_data_ready`) that nothing calls or puts back.

    ## What it does
    Finds assignments the series adds whose target is a member named
    `save_*`, `saved_*`, `orig_*`, `old_*` or `prev_*` and whose source is
    the member of the same name (`saved_close` <- `->close`,
    `saved_data_ready` <- `->sk_data_ready`).  It then looks for any other
    use of that saved member (a call through it, a restore
    `sk->sk_data_ready = psock->saved_data_ready`, a test) in the series'
    version of every file the series touches.  None found is reported.
    Only members the series itself declares are judged (a member declared
    elsewhere may be used elsewhere), unless the declaration is in view.

    ## Why is this bad?
    Code saves a callback because it replaces it: the replacement must
    chain to the original, and teardown must put it back.  A saved
    callback that is never used means the original is silently lost (the
    socket stops waking its readers, the protocol's unhash never runs) and
    after teardown the object keeps calling a handler of a module that may
    be gone.

    ## Example
        +	psock->saved_state_change = sk->sk_state_change;
        +	sk->sk_state_change = sk_psock_state_change;

    ## Use instead
    Chain to the saved callback from the replacement and restore it on
    teardown:
        	psock->saved_state_change(sk);
        	...
        	sk->sk_state_change = psock->saved_state_change;

    ## References
    https://lore.kernel.org/netdev/ (bpf PATCH 4/6 "bpf: sockmap, tcp_disconnect to listen transition", 2018)
    """

    code = "REL002"
    name = "saved-callback-not-restored"
    family = "missing-release"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        saves = []      # (fv, line, field, source, text)
        for fv in ctx.c_files():
            added = fv.added_lines
            if not added:
                continue
            for line, field, source, text in _saves(fv.post_tree, added):
                saves.append((fv, line, field, source, text))
        if not saves:
            return
        texts = rc.series_post_texts(ctx)
        added_text = _series_added_text(ctx)
        seen = set()
        for fv, line, field, source, text in saves:
            if field in seen:
                continue
            seen.add(field)
            declared_new = _declares(added_text, field)
            if not declared_new and not (fv.has_full_image and any(_declares(t, field) for p, t in texts.items()
                                                                      if p.endswith(".c"))):
                continue        # declared elsewhere: its users may be elsewhere too
            uses = [(p, ln) for p, t in texts.items() for ln in _uses(t, field)]
            if uses:
                continue
            msg = (f"{field} keeps the original {source}, but nothing in this series calls it "
                   f"or puts it back. Should the replacement chain to it, and should teardown "
                   f"restore it?")
            yield self.finding(fv.path, line, msg, confidence="medium")


def _saves(tree, added: set[int]):
    """(line, saved member, source member, text) for `a->saved_x = b->x`."""
    for n in (n for item in cparse.items_touching(tree, added, _PREFIX_HINT)
              for n in cparse.query_nodes(item, "assignment_expression call_expression")):
        left = right = None
        if n.type == "assignment_expression":
            op = n.child_by_field_name("operator")
            if op is not None and cparse.node_text(op) != "=":
                continue
            left, right = n.child_by_field_name("left"), n.child_by_field_name("right")
        elif n.type == "call_expression":
            fn = n.child_by_field_name("function")
            args = n.child_by_field_name("arguments")
            if fn is None or cparse.node_text(fn) != "WRITE_ONCE" or args is None:
                continue
            named = [a for a in args.named_children if a.type != "comment"]
            if len(named) != 2:
                continue
            left, right = named
        else:
            continue
        line = cparse.line_of(n)
        if line not in added or left is None or right is None:
            continue
        if left.type != "field_expression" or right.type != "field_expression":
            continue
        lf = left.child_by_field_name("field")
        rf = right.child_by_field_name("field")
        if lf is None or rf is None:
            continue
        field, source = cparse.node_text(lf), cparse.node_text(rf)
        m = _PREFIX_RE.match(field)
        if not m:
            continue
        stem = m.group(2)
        if not (source == stem or source.endswith("_" + stem) or stem.endswith("_" + source)):
            continue
        yield line, field, source, cparse.node_text(n)


def _declares(text: str, field: str) -> bool:
    f = re.escape(field)
    return bool(re.search(rf"\(\s*\*\s*{f}\s*\)\s*\(", text)
                or re.search(rf"^\s*[\w\s\*]+[\s\*]{f}\s*;", text, re.M))


def _uses(text: str, field: str) -> list[int]:
    """Lines where the member is read (not the target of a plain `=`)."""
    out = []
    for m in re.finditer(rf"(->|\.)\s*{re.escape(field)}\b", text):
        rest = text[m.end():m.end() + 3]
        if re.match(r"\s*=(?!=)", rest):
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        line_text = text[start:text.find("\n", m.end()) if "\n" in text[m.end():] else len(text)]
        if re.match(rf"\s*WRITE_ONCE\s*\(\s*[\w>\-.]*{re.escape(field)}\s*,\s*\w+\s*->", line_text):
            continue    # WRITE_ONCE(x->saved, y->cb) is a save, not a use
        out.append(text.count("\n", 0, m.start()) + 1)
    return out


def _series_added_text(ctx: PatchContext) -> str:
    return "\n".join(ln.text for other in (ctx.all_patches or [ctx])
                     for fv in other.c_files() for ln in fv.diff.added())
