"""hot-path-list-walk (HOT001): a linear walk over a per-task or
per-object list added to a hook or per-packet path."""
from __future__ import annotations

import re

from reviewbot.analysis import cparse
from reviewbot.engine import PatchContext, Rule
from reviewbot.analysis.lazy import LazyPattern

from reviewbot.analysis.rt import functions_touched, params_of

_LIST_MACRO_RE = LazyPattern(r"^h?list_for_each(?:_entry)?(?:_rcu|_safe|_continue|_from|_reverse)*$")
_WALK_FIELDS = {"next", "prev", "parent", "link", "sibling"}
# LSM hooks that run on every file access, syscall or packet
_HOT_LSM = LazyPattern(r"^(?:file_(?:open|permission|ioctl|lock|fcntl|receive|mprotect)|mmap_\w+|"
                      r"inode_(?:permission|getattr|getsecid|follow_link)|socket_(?:sendmsg|recvmsg|"
                      r"sock_rcv_skb)|sk_\w+|task_(?:kill|getsecid\w*)|cred_getsecid|"
                      r"ipc_permission|path_\w+|bpf\w*|perf_event_\w+)$")
_HOT_NAME_RE = LazyPattern(r"(?:^(?:__)?security_(?:file_open|file_permission|inode_permission|mmap_file|"
                          r"socket_sendmsg|socket_recvmsg|sock_rcv_skb|task_kill)$|_rcv$|_rcv_(?:skb|finish|one)$|"
                          r"_start_xmit$|_xmit$|^(?:__)?bpf_prog_run\w*|_run_filters?$|^__seccomp_filter$)")


class HotPathListWalk(Rule):
    """Flags a linear list walk (`for (p = ...; p; p = p->prev)` or
    `list_for_each_entry()`) that the patch adds to a function on a hot
    path: an LSM hook run on every file access or syscall, a netfilter
    hook, a per-packet receive or transmit function, a BPF/seccomp run
    loop.

    ## What it does
    Finds loops added by the patch (the pre-image of the function has no
    loop with the same header) whose list is reached through `current`
    or through a pointer (a per-task or per-object list, not a global
    table), inside a function that is registered with `LSM_HOOK_INIT()`,
    as a netfilter `.hook` or as `.ndo_start_xmit`, or that is named like
    a per-packet or run path (`*_rcv`, `*_xmit`, `bpf_prog_run*`,
    `*_run_filters`).  Confidence is medium for hooks that run per file
    access, per syscall or per packet, low otherwise; it is a question
    about scalability, not a bug report.

    ## Why is this bad?
    Hooks run on every operation of every task.  A walk over a list whose
    length grows with what users attach (programs stacked per task,
    rules per object) makes each operation O(n), and "n" is under user
    control: "I don't think such 'for' loop can scale. The solution needs
    to work with thousands of containers and thousands of cgroups."

    ## Example
        +	for (prog = current->seccomp.landlock_prog;
        +			prog; prog = prog->prev) {
        +		if (prog->filter == landlock_ret->filter) {
        +			cur_ret = BPF_PROG_RUN(prog->prog, (void *)&ctx);
        +			break;
        +		}
        +	}

    ## Use instead
    Index what the hook needs (per hook, per cgroup, a hash or an
    effective array computed at attach time), so the hot path does O(1)
    work, or show numbers that the list stays short.

    ## References
    https://lore.kernel.org/all/20160827204307.GA43714@ast-mbp.thefacebook.com/
    """

    code = "HOT001"
    name = "hot-path-list-walk"
    family = "performance"
    severity = "info"
    confidence = "medium"

    def check_patch(self, ctx: PatchContext):
        for fv in ctx.c_files():
            added = fv.added_lines
            registered = _registered_hooks(fv.post_text)
            for fn, pre_fn in functions_touched(fv):
                hot = _hotness(fn.name, registered, cparse.node_text(fn.node))
                if hot is None:
                    continue
                conf, why = hot
                pre_heads = {h for h, _, _ in _walks(pre_fn.node)} if pre_fn is not None else set()
                for head, line, source in _walks(fn.node):
                    if line not in added or head in pre_heads:
                        continue
                    if not _per_object(source, params_of(fn.node)):
                        continue
                    msg = (f"{fn.name}() {why}, and this walks the list from {source} on every "
                           "call. How long can that list get (does it grow with what users attach "
                           "per task or per object)? Would an index or a per-hook/effective array "
                           "built at attach time keep this path O(1)?")
                    yield self.finding(fv.path, line, msg, confidence=conf)


def _registered_hooks(text: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r"LSM_HOOK_INIT\(\s*(\w+)\s*,\s*(\w+)\s*\)", text or ""):
        out[m.group(2)] = "lsm:" + m.group(1)
    for m in re.finditer(r"\.hook\s*=\s*(\w+)\s*,", text or ""):
        out.setdefault(m.group(1), "netfilter")
    for m in re.finditer(r"\.ndo_start_xmit\s*=\s*(\w+)", text or ""):
        out.setdefault(m.group(1), "xmit")
    return out


def _hotness(name: str, registered: dict, body: str):
    kind = registered.get(name)
    if kind and kind.startswith("lsm:"):
        hook = kind[4:]
        if _HOT_LSM.match(hook):
            return "medium", f"is the {hook} LSM hook, run by every task on every {hook.replace('_', ' ')}"
        return "low", f"is the {hook} LSM hook"
    if kind == "netfilter" or ("const struct nf_hook_state *" in body.split("{", 1)[0]):
        return "medium", "is a netfilter hook, run for every packet"
    if kind == "xmit":
        return "medium", "is the transmit path, run for every packet"
    if _HOT_NAME_RE.search(name):
        return "low", "looks like a per-packet or per-call path"
    return None


def _walks(fn_node):
    """(normalised header, line, list source text) of every list walk."""
    for n in cparse.walk(fn_node):
        if n.type == "for_statement":
            upd = n.child_by_field_name("update")
            if upd is None or upd.type != "assignment_expression":
                continue
            left, right = upd.child_by_field_name("left"), upd.child_by_field_name("right")
            if left is None or right is None or right.type != "field_expression":
                continue
            var = cparse.node_text(left)
            field = right.child_by_field_name("field")
            base = right.child_by_field_name("argument")
            if base is None or field is None or cparse.node_text(base) != var \
                    or cparse.node_text(field) not in _WALK_FIELDS:
                continue
            init = n.child_by_field_name("initializer")
            source = cparse.node_text(init.child_by_field_name("right")) if (
                init is not None and init.type == "assignment_expression") else _initial_value(fn_node, var, n)
            header = re.sub(r"\s+", " ", cparse.node_text(n).split("{", 1)[0].split(")")[0])
            yield header, cparse.line_of(n), source or var
        elif n.type == "call_expression":
            fn = n.child_by_field_name("function")
            if fn is None or not _LIST_MACRO_RE.match(cparse.node_text(fn)):
                continue
            args = n.child_by_field_name("arguments")
            named = [a for a in (args.named_children if args is not None else []) if a.type != "comment"]
            if len(named) < 2:
                continue
            head = cparse.node_text(named[1])
            yield re.sub(r"\s+", " ", cparse.node_text(n)), cparse.line_of(n), head


def _initial_value(fn_node, var: str, loop) -> str:
    """The last value given to `var` before the loop."""
    best = ""
    for n in cparse.walk(fn_node):
        if n.start_byte >= loop.start_byte:
            continue
        if n.type == "init_declarator" and cparse.node_text(n.child_by_field_name("declarator") or n).lstrip("* ") == var:
            v = n.child_by_field_name("value")
            best = cparse.node_text(v) if v is not None else best
        elif n.type == "assignment_expression" and cparse.node_text(n.child_by_field_name("left") or n) == var:
            best = cparse.node_text(n.child_by_field_name("right") or n)
    return best


def _per_object(source: str, params: set[str]) -> bool:
    s = re.sub(r"\s+", "", source)
    if re.search(r"\bcurrent\b", s):
        return True
    if "->" not in s:
        return False
    return True
