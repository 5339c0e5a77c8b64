"""uapi-struct-layout (UAPI001): a new uapi struct with a pointer member,
or with reserved/flags fields that the kernel never checks."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.findings import Location
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import matches_any

UAPI_GLOBS = ("include/uapi/*", "arch/*/include/uapi/*")
_RESERVED_RE = LazyPattern(r"^(?:__)?(?:reserved|resv|rsvd|pad|padding|unused|spare)\w*$")
_FLAGS_RE = LazyPattern(r"^\w*flags$")


class UapiStructLayout(Rule):
    """Flags a struct added to a uapi header with a pointer member, or with
    `reserved`/`pad`/`flags` members that the kernel code of the series
    never checks.

    ## What it does
    For each struct the patch adds under `include/uapi/` or
    `arch/*/include/uapi/`: a member declared as a pointer
    (`void __user *addr`) is reported (high confidence).  When the C code
    of the series uses the struct, a reserved or padding member it never
    reads, or a flags member whose unknown bits it never rejects
    (`flags & ~KNOWN`, `if (x.flags)`, `memchr_inv()`), is reported as
    well (medium confidence).

    ## Why is this bad?
    A pointer has 4 bytes for 32-bit userspace and 8 for 64-bit, so the
    struct layout differs under compat and needs translation; uapi uses
    `__u64` and `u64_to_user_ptr()`.  Reserved fields and flags exist so
    the ABI can grow, but only if the kernel rejects non-zero values from
    the start: once old userspace may pass garbage there, the field can
    never be given a meaning.

    ## Example
        +struct kvm_arm_copy_mte_tags {
        +	__u64 guest_ipa;
        +	__u64 length;
        +	void __user *addr;
        +	__u64 flags;
        +	__u64 reserved[2];
        +};

    ## Use instead
        +	__u64 addr;		/* user pointer, via u64_to_user_ptr() */
    and in the ioctl handler:
        if (copy_tags->reserved[0] || copy_tags->reserved[1])
                return -EINVAL;
        if (copy_tags->flags & ~KVM_ARM_TAGS_FROM_GUEST)
                return -EINVAL;

    ## References
    Documentation/driver-api/ioctl.rst ("Interface versions", "32-bit compat mode");
    https://lore.kernel.org/all/20210604114233.GE31173@arm.com/
    """

    code = "UAPI001"
    name = "uapi-struct-layout"
    family = "uapi"
    severity = "warning"
    confidence = "high"

    def check_patch(self, ctx: PatchContext):
        c_files = _series_c_files(ctx)
        for fv in ctx.files:
            if not fv.path.endswith(".h") or not matches_any(fv.path, UAPI_GLOBS):
                continue
            added = fv.added_lines
            for sname, line, members in _new_structs(fv.post_tree, added, fv.post_text):
                c_code = _users_of(c_files, sname)
                used = bool(c_code)
                for mname, mline, mtext, is_ptr in members:
                    if is_ptr:
                        yield self.finding(
                            fv.path, mline,
                            f"struct {sname} is user ABI; `{mtext}` is 4 bytes for 32-bit userspace "
                            "and 8 for 64-bit, so the layout differs under compat. Would a __u64 "
                            "(read with u64_to_user_ptr()) be better here?",
                            related=[Location(fv.path, line, f"struct {sname}")])
                    elif used and _RESERVED_RE.match(mname) and not _accessed(c_code, mname):
                        yield self.finding(
                            fv.path, mline,
                            f"Nothing in this series checks that {mname} of struct {sname} is zero. "
                            "If the kernel accepts garbage there now, can the field ever be given "
                            f"a meaning later? Should the ioctl return -EINVAL when {mname} is not zero?",
                            confidence="medium", related=[Location(fv.path, line, f"struct {sname}")])
                    elif used and _FLAGS_RE.match(mname) and not _flags_checked(c_code, mname):
                        yield self.finding(
                            fv.path, mline,
                            f"Does anything reject unknown bits in {mname} of struct {sname}? "
                            f"Without a check like `if (x.{mname} & ~KNOWN_FLAGS) return -EINVAL;` "
                            "no new flag can be added later without breaking old userspace.",
                            confidence="medium", related=[Location(fv.path, line, f"struct {sname}")])


def _series_c_files(ctx: PatchContext) -> dict:
    latest: dict = {}
    for pc in ctx.all_patches or [ctx]:
        for f in pc.files:
            if f.path.endswith(".c") and not f.diff.is_deleted:
                latest[f.path] = f
    return latest


def _users_of(c_files: dict, sname: str) -> str:
    """The text of the series' C functions that mention struct sname."""
    pat = re.compile(r"\bstruct\s+" + re.escape(sname) + r"\b")
    out = []
    for f in c_files.values():
        if not pat.search(f.post_text):
            continue
        synth = f.synth_lines(True)
        for fn in cparse.functions(f.post_tree):
            if fn.start in synth:
                continue        # rebuilt around hunks: what it checks is not all shown
            text = cparse.node_text(fn.node)
            if pat.search(text):
                out.append(text)
    return "\n".join(out)


def _new_structs(tree, added, text: str):
    raw = text.encode("utf-8", errors="replace")     # (the source as written: __user and all)
    for n in cparse.walk(tree.root_node):
        if n.type != "struct_specifier":
            continue
        name = n.child_by_field_name("name")
        body = n.child_by_field_name("body")
        if name is None or body is None or cparse.line_of(n) not in added:
            continue
        members = []
        for fd in body.named_children:
            if fd.type != "field_declaration":
                continue
            for d in fd.children_by_field_name("declarator"):
                ident = _ident(d)
                if not ident:
                    continue
                is_ptr = d.type in ("pointer_declarator", "function_declarator") or (
                    d.type == "array_declarator" and d.child_by_field_name("declarator") is not None
                    and d.child_by_field_name("declarator").type == "pointer_declarator")
                src = raw[fd.start_byte:fd.end_byte].decode("utf-8", errors="replace")
                members.append((ident, cparse.line_of(fd), " ".join(src.rstrip(";").split()), is_ptr))
        yield cparse.node_text(name), cparse.line_of(n), members


def _ident(d) -> str:
    for n in cparse.walk(d):
        if n.type == "field_identifier":
            return cparse.node_text(n)
    return ""


def _accessed(code: str, member: str) -> bool:
    return re.search(r"(?:\.|->)\s*" + re.escape(member) + r"\b", code) is not None


def _flags_checked(code: str, member: str) -> bool:
    m = re.escape(member)
    acc = r"(?:\.|->)\s*" + m + r"\b"
    pats = (acc + r"\s*&\s*~", acc + r"\s*!=\s*0", r"if\s*\(\s*!?\s*[\w\[\]\.>-]+" + acc + r"\s*\)",
            acc + r"\s*>", r"memchr_inv\([^;]*" + m, r"~[\w\s|()]*&\s*[\w\[\]\.>-]+" + acc,
            acc + r"\s*\)\s*\n?\s*return\s+-EINVAL", r"switch\s*\([\w\[\]\.>-]+" + acc)
    return any(re.search(p, code) for p in pats)
