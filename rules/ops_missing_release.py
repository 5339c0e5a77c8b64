"""ops-missing-release (REL001): an ops table with an acquire hook and no release hook."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import (LIFECYCLE_MEMBERS, OPS_ALWAYS_ACQUIRE, OPS_MEMBER_PAIRS,
                               OPS_NOOP_VALUES, OPS_TYPED_PAIRS)
from reviewbot.analysis import release as rc
from reviewbot.analysis.rt import any_in_range

# Tables handled elsewhere: pernet_operations by acquire-without-release (REL003).
_SKIP_TYPES = {"pernet_operations"}
_TWIN_SIMILARITY = 0.5


class OpsMissingRelease(Rule):
    """Flags an ops table (a designated initialiser of `struct proto`,
    `bpf_map_ops`, `file_operations`, `platform_driver`, `net_device_ops`, ...)
    that the series leaves with an acquire-side hook but without the
    matching release-side hook, or with a lifecycle hook that its twin
    table of the same type in the same file has.

    ## What it does
    Reads every `struct T name = { .member = value, ... }` in the files the
    patch touches, before and after the patch, and reports two shapes the
    patch introduces (a gap already there before, in a table the patch does
    not create, is not reported):

    * an acquire hook (`.open`, `.init`, `.map_alloc`, `.hash`, `.probe`,
      `.ndo_open`, `.ndo_init`, seq `.start`) with none of its release
      hooks (`.release`/`.close`, `.exit`/`.destroy`/..., `.map_free`,
      `.unhash`, `.remove`, `.ndo_stop`, `.ndo_uninit`, seq `.stop`).
      When the hook's function is in view it must itself acquire something
      that is not device-managed (`single_open()`, `kzalloc()`,
      `request_irq()`, `register_*()`, ...); `simple_open` and friends
      need no release;
    * twin tables: two tables of one struct type in one file that share
      most members, where one carries a lifecycle hook (`.map_release_uref`,
      `.unhash`, `.release`, `.map_free`, ...) and the other, new or changed
      by the series, does not.

    ## Why is this bad?
    The release hook is where the references, sockets, maps and programs
    taken by the acquire hook are dropped; without it they leak until
    reboot.  Twin tables drift: sockhash's `bpf_map_ops` lost
    `.map_release_uref` when it was ported next to sockmap's, so programs
    attached to a sockhash were never released (fixed by "bpf: sockhash,
    add release routine").

    ## Example
        const struct bpf_map_ops sock_map_ops = {
        	.map_alloc		= sock_map_alloc,
        	.map_free		= sock_map_free,
        	.map_release_uref	= sock_map_release_progs,
        };
        const struct bpf_map_ops sock_hash_ops = {
        	.map_alloc		= sock_hash_alloc,
        	.map_free		= sock_hash_free,
        -	.map_release_uref	= sock_hash_release_progs,
        };

    ## Use instead
    Give every table the release hook that undoes its acquire hook:
        	.map_release_uref	= sock_hash_release_progs,

    ## References
    https://lore.kernel.org/netdev/ (bpf PATCH 5/6 "bpf: sockhash, add release routine", 2018)
    """

    code = "REL001"
    name = "ops-missing-release"
    family = "missing-release"
    severity = "warning"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            if not fv.added_lines and not fv.diff.removed():
                continue
            if not _may_touch_table(fv):
                continue        # no table gains or loses a line: nothing to compare
            post_vis = rc.visible_lines(fv, new=True)
            pre_vis = rc.visible_lines(fv, new=False)
            post = [t for t in cparse.struct_initializers(fv.post_tree)
                    if t.struct not in _SKIP_TYPES and rc.all_visible(post_vis, t.start, t.end)]
            if not post:
                continue
            pre = {(t.struct, t.name): t for t in cparse.struct_initializers(fv.pre_tree)
                   if rc.all_visible(pre_vis, t.start, t.end)}
            pre_touched = _pre_touched(fv, pre)
            added = sorted(fv.added_lines)
            touched = {(t.struct, t.name) for t in post if any_in_range(added, t.start, t.end)} | pre_touched
            later = rc.later_views(ctx, fv.path)
            file_calls = None
            for t in post:
                key = (t.struct, t.name)
                if key not in touched:
                    continue
                if file_calls is None:
                    file_calls = rc.known_calls(fv.post_tree)
                yield from self._hook_pairs(fv, t, pre.get(key), file_calls, later, post_vis)
            yield from self._twins(fv, post, pre, touched, later)

    # -- acquire hook without release hook ---------------------------------
    def _hook_pairs(self, fv, t, old, file_calls, later, post_vis):
        pairs = dict(OPS_MEMBER_PAIRS)
        pairs.update(OPS_TYPED_PAIRS.get(t.struct, {}))
        for acq, rels in pairs.items():
            value = t.get(acq)
            if value is None or any(t.get(r) is not None for r in rels):
                continue
            if old is not None and old.get(acq) is not None and not any(old.get(r) for r in rels):
                continue        # the gap was there before the series
            if value in OPS_NOOP_VALUES or not value.replace("_", "").isalnum():
                continue
            what, conf = self._acquire_evidence(fv, acq, value, file_calls, post_vis)
            if conf is None:
                continue
            if _fixed_later(later, t, rels):
                continue
            rel_text = " or ".join(f".{r}" for r in rels[:3])
            line = t.line_of(acq) or t.start
            msg = (f"{t.name} sets .{acq} = {value}{what}, but no {rel_text}. "
                   f"What undoes {value}() when the {_object(t.struct)} goes away?")
            yield self.finding(fv.path, rc.anchor_line(fv, line, line), msg, confidence=conf)

    def _acquire_evidence(self, fv, acq, value, file_calls, post_vis):
        fn = rc.function_named(fv.post_tree, value)
        if fn is not None and rc.all_visible(post_vis, fn.start, fn.end):
            taken = rc.body_acquires(fn.node, file_calls)
            if taken:
                return f" (which calls {taken[0].name}())", "medium"
            if acq in OPS_ALWAYS_ACQUIRE:
                return "", "medium"
            return "", None
        return "", ("medium" if acq in OPS_ALWAYS_ACQUIRE else "low")

    # -- twin tables -------------------------------------------------------
    def _twins(self, fv, post, pre, touched, later):
        by_type: dict[str, list] = {}
        for t in post:
            by_type.setdefault(t.struct, []).append(t)
        for struct, tables in by_type.items():
            if len(tables) < 2:
                continue
            touched_tables = [a for a in tables if (struct, a.name) in touched]
            for b in tables:
                bkey = (struct, b.name)
                old_b = pre.get(bkey)
                missing: dict[str, tuple] = {}
                # a pair neither of which the series touches is skipped: when b
                # is not touched, only the touched tables can pair with it
                for a in (tables if bkey in touched else touched_tables):
                    if a is b or not _twins(a, b):
                        continue
                    akey = (struct, a.name)
                    if bkey not in touched and akey not in touched:
                        continue
                    old_a = pre.get(akey)
                    for m in sorted((a.names & LIFECYCLE_MEMBERS) - b.names):
                        if m in missing:
                            continue
                        if old_b is None:
                            conf = "medium"          # a new table without the hook
                        elif old_b.get(m) is not None:
                            conf = "high"            # the series removed it
                        elif old_a is not None and old_a.get(m) is None and akey in touched:
                            conf = "low"             # added to one twin only
                        else:
                            continue                 # pre-existing difference
                        missing[m] = (a, conf)
                if not missing or _fixed_later(later, b, tuple(missing)):
                    continue
                order = ("high", "medium", "low")
                conf = min((c for _, c in missing.values()), key=order.index)
                names = sorted(missing)
                a0 = missing[names[0]][0]
                hooks = ", ".join(f".{m}" for m in names)
                if conf == "high":
                    msg = (f"This drops {hooks} from {b.name}, but {a0.name} still sets it "
                           f"({a0.get(names[0])}). What releases it for {b.name} now?")
                elif conf == "medium":
                    msg = (f"{a0.name} sets {hooks} ({a0.get(names[0])}), but {b.name} does not. "
                           f"Does {b.name} not need the same release, or is it missing here?")
                else:
                    msg = (f"This gives {a0.name} {hooks} ({a0.get(names[0])}). Does its twin "
                           f"{b.name} need the same?")
                related = [Location(fv.path, a.line_of(m), f"{a.name} sets .{m}")
                           for m, (a, _) in sorted(missing.items())]
                line = rc.anchor_line(fv, b.start, b.end)
                if conf == "high":
                    line = _after_removed(fv, names[0], b) or line
                yield self.finding(fv.path, line, msg, related=related, confidence=conf)


# a designated initialiser (what cparse.struct_initializers() reads) has
# `.member =` in its text
_MEMBER_INIT = LazyPattern(rb"\.[A-Za-z_]\w*\s*=")


def _may_touch_table(fv) -> bool:
    """False when no added line (in the post-image) and no removed line
    (in the pre-image) lies in a top-level item that could hold a table:
    then the patch touches no table (a cheap test before reading them all)."""
    if cparse.items_touching(fv.post_tree, fv.added_lines, _MEMBER_INIT):
        return True
    gone = rc.removed_old_lines(fv)
    return bool(gone) and bool(cparse.items_touching(fv.pre_tree, gone, _MEMBER_INIT))


def _pre_touched(fv, pre) -> set:
    """Pre-image tables that lost lines in this patch."""
    gone = sorted(rc.removed_old_lines(fv))
    return {k for k, t in pre.items() if any_in_range(gone, t.start, t.end)}


def _after_removed(fv, member, table) -> int | None:
    """The post-image line that follows the removed `.member = ...` line, so
    that the quote ends on the removal."""
    pat = re.compile(r"^\s*\." + re.escape(member) + r"\s*=")
    for h in fv.diff.hunks:
        for i, ln in enumerate(h.lines):
            if ln.kind == "-" and pat.match(ln.text):
                for nxt in h.lines[i + 1:]:
                    if nxt.kind != "-" and nxt.new_no and table.start <= nxt.new_no <= table.end:
                        return nxt.new_no
    return None


def _twins(a, b) -> bool:
    if len(a.members) < 3 or len(b.members) < 3:
        return False
    na, nb = a.member_names, b.member_names
    return len(na & nb) / len(na | nb) >= _TWIN_SIMILARITY


def _fixed_later(later, t, rels) -> bool:
    """A later patch of the series gives the table one of the hooks."""
    for fv in later:
        for u in cparse.struct_initializers(fv.post_tree):
            if (u.struct, u.name) == (t.struct, t.name) and any(u.get(r) is not None for r in rels):
                return True
    return False


def _object(struct: str) -> str:
    return {"file_operations": "file", "bpf_map_ops": "map", "proto": "socket",
            "net_device_ops": "device", "platform_driver": "device", "pci_driver": "device",
            "seq_operations": "iteration"}.get(struct, "object")
