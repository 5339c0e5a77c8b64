"""private-copy-of-helper (DUP004): a new static function takes over from a shared helper it copies."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location

LIKE = 0.6          # share of the new function's tokens found, in order, in the helper's body
MIN_TAIL = 5        # shortest name part that counts as the helper's name in the copy's


class PrivateCopyOfHelper(Rule):
    """Flags a new static function that the patch switches calls to, away
    from an existing helper it duplicates.

    ## What it does
    For each static function the patch adds (P), it looks at the calls the
    patch removes from the same file: a helper H whose calls drop while
    calls to P appear, and that P itself does not call (a wrapper is not a
    copy).  P counts as a private copy of H when its name carries H's (less
    a subsystem prefix, plus at most short tags: `rtl_get_tid_h` for
    `ieee80211_get_tid`), or, with the
    tree's knowledge base, when P's body is found in H's definition
    (token likeness of 60% or more).

    ## Why is this bad?
    The shared helper is where fixes land: a private copy keeps the old
    behaviour (and its bugs) and is one more place to maintain.  Reviewers
    ask "isn't this ieee80211_get_tid()?" and the copy usually goes again
    in a later cleanup.

    ## Example
        +static inline u16 get_tid_h(struct ieee80211_hdr *hdr)
        +{
        +	return (ieee80211_get_qos_ctl(hdr))[0] & IEEE80211_QOS_CTL_TID_MASK;
        +}
        ...
        -	tid = ieee80211_get_tid(hdr);
        +	tid = get_tid_h(hdr);

    ## Use instead
    Keep calling the shared helper; if it lacks something, extend it for
    every user.
    """

    code = "DUP004"
    name = "private-copy-of-helper"
    family = "duplicated-helper"
    severity = "info"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        # across the patch's files: a header may add the copy, a .c file
        # switch its calls
        gone: set[str] = set()
        pre_n: dict[str, int] = {}
        post_n: dict[str, int] = {}
        new_funcs, uses = [], {}
        # nothing to ask unless this patch removes a call (to the helper)
        if not any(fv.diff.removed() and not fv.diff.is_new and fv.added_lines and any(
                "(" in ln.text for ln in fv.diff.removed()) for fv in ctx.c_files()):
            return
        for fv in ctx.c_files():
            added = fv.added_lines
            if not added:
                continue
            post_calls = cparse.calls(fv.post_tree.root_node)
            _add(post_n, post_calls)
            for f in cparse.functions(fv.post_tree):
                if f.start in added and f.end in added \
                        and cparse.node_text(f.node).lstrip().startswith("static"):
                    new_funcs.append((fv, f))
            for c in post_calls:
                if c.line in added:
                    uses.setdefault(c.name, []).append((fv.path, c.line))
            if fv.diff.removed() and not fv.diff.is_new:
                removed = {ln.old_no for ln in fv.diff.removed() if ln.old_no}
                pre_calls = cparse.calls(fv.pre_tree.root_node)
                _add(pre_n, pre_calls)
                gone |= {c.name for c in pre_calls if c.line in removed}
        gone = {h for h in gone if post_n.get(h, 0) < pre_n.get(h, 0)}
        if not gone:
            return
        for fv, p in new_funcs:
            calls_p = [(path, line) for path, line in uses.get(p.name, ())
                       if not (path == fv.path and p.start <= line <= p.end)]
            if not calls_p or any(c.name in gone for c in cparse.calls(p.node)):
                continue
            for h in sorted(gone):
                if h == p.name or not _name_carries(p.name, h) and not self._body_alike(ctx, p, h):
                    continue
                msg = (f"Isn't the new {p.name}() a private copy of {h}()? The patch replaces "
                       f"calls to {h}() with it; the shared helper is where fixes land, so "
                       f"could the calls stay on {h}()?")
                yield self.finding(fv.path, p.start, msg, end_line=p.end,
                                   related=[Location(calls_p[0][0], calls_p[0][1],
                                                     f"a call switched to {p.name}()")])
                break

    def _body_alike(self, ctx, p, h) -> bool:
        """P's tokens are found, in order, in H's definition (through the
        tree's knowledge base, when there is one)."""
        kb = ctx.knowledge       # None without an index (or an unreadable one)
        if kb is None or ctx.tree_reader is None:
            return False
        defs = [d for d in kb.definitions(h) if not d.get("macro") and not d.get("stub")]
        if not defs:
            return False
        d = defs[0]
        try:
            text = ctx.tree_reader(d["path"])
        except Exception:
            return False
        if not text:
            return False
        from reviewbot.tree import dupindex as dx
        body = "\n".join(text.splitlines()[d["line"] - 1:d["end"]])
        mine = dx.code_tokens(_body(cparse.node_text(p.node)))
        theirs = dx.code_tokens(_body(body))
        if len(mine) < 8 or not len(theirs):
            return False
        return dx.likeness(mine, theirs).coverage >= LIKE


def _body(text: str) -> str:
    i = text.find("{")
    return text[i:] if i >= 0 else text


def _add(counts: dict[str, int], calls) -> None:
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1


def _name_carries(p: str, h: str) -> bool:
    """P's name holds H's, less H's first word when two or more are left
    (`ieee80211_get_tid` -> `get_tid`)."""
    words = [w for w in h.strip("_").split("_") if w]
    tail = "_".join(words[1:])
    if len(words) < 3 or len(tail) < MIN_TAIL:
        tail = h            # one word left is too little to tell a copy (USER_/OPTLEN_SOCKPTR)
    m = re.search(rf"(?:^|_){re.escape(tail)}(?:_|$)", p)
    if m is None:
        return False
    # what P adds around it is a short tag (`rtl_`, `_h`), not words saying
    # it does something else (`aggr_free_lines` is not a copy of `aggr_free`)
    rest = (p[:m.start()] + "_" + p[m.end():]).split("_")
    return all(len(w) <= 3 for w in rest if w)
