"""Shared lock-flow analysis for the `locking` family (LCK001-LCK005).

Not a rule module (the leading underscore keeps discovery away).  It walks
one C function at a time, statement by statement, keeping the *set of
possible lock states* (each a frozenset of held locks) so that branches,
`goto` unwind ladders, loops and `switch` are followed path by path:

* `spin_lock()`/`mutex_lock()`/... add a held lock, the release call of the
  same lock removes it; `spin_trylock()`/`mutex_lock_interruptible()` only
  hold the lock on the branch where they succeeded;
* `guard()` / `scoped_guard()` hold a lock to the end of their scope and
  need no unlock;
* a same-file function whose every exit still holds a lock it took (a
  `foo_lock()` or `__acquires()` wrapper) acts as that acquire at the call
  site, with the caller's arguments substituted;
* a lock taken inside one branch and still held when the branch ends is
  "conditional": rules do not report imbalances of it (the usual
  `if (x) lock(); ... if (x) unlock();` shape).

Lock identity follows lockdep's classes roughly: a global lock by its name,
a struct field lock by the field (`sk_callback_lock` for any socket), and a
generically named field (`lock`, `mutex`, ...) by the struct type of its
base variable (`bpf_shtab_bucket.lock`), else by the parent field
(`buckets.lock`); a lock whose class cannot be told is "unstable" and only
ever matches itself inside one function.
"""
from __future__ import annotations

import bisect
import dataclasses
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

from reviewbot.analysis import cparse
from reviewbot.analysis.lazy import LazyPattern

# ---------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------

# acquire call -> kind.  Kinds: spin (spinning locks, atomic), mutex, rwsem,
# sock (lock_sock: sleeping), rcu, irq, bh, preempt (pseudo locks).
ACQUIRE = {}
for _n in ("spin_lock", "spin_lock_nested", "raw_spin_lock", "raw_spin_lock_nested",
           "read_lock", "write_lock", "write_lock_nested"):
    ACQUIRE[_n] = "spin"
    for _s in ("_bh", "_irq", "_irqsave", "_irqsave_nested"):
        if not _n.endswith("_nested"):
            ACQUIRE[_n + _s] = "spin"
ACQUIRE.update({
    "spin_lock_irqsave_nested": "spin", "spin_lock_bh_nested": "spin",
    "bh_lock_sock": "spin", "bh_lock_sock_nested": "spin",
    "mutex_lock": "mutex", "mutex_lock_nested": "mutex", "mutex_lock_io": "mutex",
    "down": "rwsem", "down_read": "rwsem", "down_write": "rwsem", "down_read_nested": "rwsem",
    "down_write_nested": "rwsem",
    "lock_sock": "sock", "lock_sock_nested": "sock", "lock_sock_fast": "sock",
    "rcu_read_lock": "rcu", "rcu_read_lock_bh": "rcu", "rcu_read_lock_sched": "rcu",
    "srcu_read_lock": "rcu",
    "local_irq_save": "irq", "local_irq_disable": "irq",
    "local_bh_disable": "bh", "preempt_disable": "preempt",
})
RELEASE = {}
for _n in ("spin_unlock", "raw_spin_unlock", "read_unlock", "write_unlock"):
    RELEASE[_n] = "spin"
    for _s in ("_bh", "_irq", "_irqrestore"):
        RELEASE[_n + _s] = "spin"
RELEASE.update({
    "bh_unlock_sock": "spin", "mutex_unlock": "mutex",
    "up": "rwsem", "up_read": "rwsem", "up_write": "rwsem",
    "release_sock": "sock", "unlock_sock_fast": "sock",
    "rcu_read_unlock": "rcu", "rcu_read_unlock_bh": "rcu", "rcu_read_unlock_sched": "rcu",
    "srcu_read_unlock": "rcu",
    "local_irq_restore": "irq", "local_irq_enable": "irq",
    "local_bh_enable": "bh", "preempt_enable": "preempt", "preempt_enable_no_resched": "preempt",
})
# succeed -> nonzero
TRYLOCK = {}
for _n in ("spin_trylock", "raw_spin_trylock", "read_trylock", "write_trylock"):
    for _s in ("", "_bh", "_irq", "_irqsave"):
        TRYLOCK[_n + _s] = "spin"
TRYLOCK.update({"mutex_trylock": "mutex", "down_read_trylock": "rwsem",
                "down_write_trylock": "rwsem", "mutex_trylock_recursive": "mutex"})
# succeed -> zero
ZEROLOCK = {
    "mutex_lock_interruptible": "mutex", "mutex_lock_killable": "mutex",
    "mutex_lock_interruptible_nested": "mutex", "mutex_lock_killable_nested": "mutex",
    "down_interruptible": "rwsem", "down_killable": "rwsem", "down_trylock": "rwsem",
    "down_read_interruptible": "rwsem", "down_read_killable": "rwsem",
    "down_write_killable": "rwsem",
    # IIO's direct mode is a mutex held until released (0 on success)
    "iio_device_claim_direct_mode": "mutex", "iio_device_claim_buffer_mode": "mutex",
}
RELEASE.update({"iio_device_release_direct_mode": "mutex", "iio_device_release_buffer_mode": "mutex"})
# well-known lock wrappers: a global lock by name, or the lock of the object
# the argument names (by the wrapper's name and the argument's class)
ACQUIRE.update({
    "rtnl_lock": "mutex", "rtnl_lock_killable": "mutex", "cpus_read_lock": "rwsem",
    "cpus_write_lock": "rwsem", "console_lock": "mutex", "hci_dev_lock": "mutex",
    "inode_lock": "rwsem", "inode_lock_shared": "rwsem", "inode_lock_nested": "rwsem",
    "mmap_read_lock": "rwsem", "mmap_write_lock": "rwsem", "lock_page": "mutex", "folio_lock": "mutex",
    "filemap_invalidate_lock": "rwsem", "filemap_invalidate_lock_shared": "rwsem",
    "device_lock": "mutex", "netif_tx_lock": "spin", "netif_tx_lock_bh": "spin",
    "netif_addr_lock_bh": "spin", "xa_lock": "spin", "xa_lock_bh": "spin", "xa_lock_irq": "spin",
    "xa_lock_irqsave": "spin", "sb_start_write": "rwsem", "lock_buffer": "mutex",
    "mt_lock": "mutex",
})
RELEASE.update({
    "rtnl_unlock": "mutex", "cpus_read_unlock": "rwsem", "cpus_write_unlock": "rwsem",
    "console_unlock": "mutex", "hci_dev_unlock": "mutex", "inode_unlock": "rwsem",
    "inode_unlock_shared": "rwsem", "mmap_read_unlock": "rwsem", "mmap_write_unlock": "rwsem",
    "unlock_page": "mutex", "folio_unlock": "mutex", "filemap_invalidate_unlock": "rwsem",
    "filemap_invalidate_unlock_shared": "rwsem", "device_unlock": "mutex", "netif_tx_unlock": "spin",
    "netif_tx_unlock_bh": "spin", "netif_addr_unlock_bh": "spin", "xa_unlock": "spin",
    "xa_unlock_bh": "spin", "xa_unlock_irq": "spin", "xa_unlock_irqrestore": "spin",
    "sb_end_write": "rwsem", "unlock_buffer": "mutex", "mt_unlock": "mutex",
})
# wrappers whose lock is one global, whatever the arguments
GLOBAL_KEY = {"rtnl_lock": "rtnl_mutex", "rtnl_lock_killable": "rtnl_mutex", "rtnl_unlock": "rtnl_mutex",
              "cpus_read_lock": "cpu_hotplug_lock", "cpus_read_unlock": "cpu_hotplug_lock",
              "cpus_write_lock": "cpu_hotplug_lock", "cpus_write_unlock": "cpu_hotplug_lock",
              "console_lock": "console_sem", "console_unlock": "console_sem"}
# wrappers named after what they lock: the key is the wrapper's (acquire) name
# and the argument's class
_WRAP_NAMES = {"hci_dev", "inode", "inode_shared", "mmap_read", "mmap_write", "page", "folio",
               "filemap_invalidate", "filemap_invalidate_shared", "device", "netif_tx", "netif_tx_bh",
               "netif_addr_bh", "buffer", "mt", "sb_write"}
NOARG_KEY = {"rcu": "rcu", "irq": "irq", "bh": "bh", "preempt": "preempt"}
RCU_KEYS = {"rcu", "rcu_bh", "rcu_sched", "srcu"}
PSEUDO = {"irq", "bh", "preempt"} | RCU_KEYS
# kinds in which sleeping is a bug
ATOMIC_KINDS = {"spin", "rcu", "irq", "bh", "preempt"}
GENERIC_FIELDS = {"lock", "mutex", "mtx", "sem", "rwsem", "spinlock", "slock", "rwlock",
                  "lk", "lck", "mlock", "rlock", "wlock", "lock_", "_lock"}
SKIP_FN_RE = LazyPattern(r"(^|_)(lock|locked|acquire|acquires|get_lock|grab|trylock|hold)(_|$)|"
                        r"(_start|_begin|_enter)$|lock$", re.I)
GUARD_SPIN = LazyPattern(r"spinlock|raw_spinlock|rwlock|read_lock|write_lock|rcu|irq|preempt|bh")

# ---------------------------------------------------------------------------
# lock identity
# ---------------------------------------------------------------------------


class Held(NamedTuple):
    key: str          # lock class
    kind: str         # spin/mutex/rwsem/sock/rcu/irq/bh/preempt
    line: int         # where it was taken
    expr: str         # the lock expression as written (for messages)
    call: str         # the acquiring call
    how: str = ""     # "", "guard", "cond" (trylock branch), "wrap:<fn>"

    @property
    def stable(self) -> bool:
        return not self.key.startswith("?")


_TYPE_RE = LazyPattern(r"^(?:const\s+)?(?:struct|union)\s+(\w+)")


def declared_types(fn_node) -> dict[str, str]:
    """Variable -> struct type name, from the function's parameters and
    local declarations (pointer or not)."""
    out: dict[str, str] = {}
    for n in cparse.query_nodes(fn_node, "parameter_declaration declaration"):
        t = n.child_by_field_name("type")
        if t is None or t.type != "struct_specifier":
            continue
        name = t.child_by_field_name("name")
        if name is None:
            continue
        tname = cparse.node_text(name)
        for d in n.children_by_field_name("declarator"):
            v = cparse._declarator_name(d)
            if v:
                out.setdefault(v, tname)
    return out


def _strip(expr: str) -> str:
    e = expr.strip()
    while True:
        old = e
        if e.startswith("&"):
            e = e[1:].strip()
        if e.startswith("(") and e.endswith(")"):
            e = e[1:-1].strip()
        if e == old:
            return e


_SPLIT_RE = LazyPattern(r"->|\.")


def lock_key(expr: str, types: dict[str, str]) -> str:
    """The class of the lock at `expr` (see the module docstring)."""
    e = re.sub(r"\s+", "", _strip(expr))
    parts = _SPLIT_RE.split(e)
    if len(parts) == 1:
        name = re.sub(r"\[.*\]$", "", parts[0])
        if name in types or not re.match(r"^\w+$", name):
            return "?" + e       # a local lock pointer: cannot tell its class
        return name
    fld = re.sub(r"\[.*\]$", "", parts[-1])
    if fld not in GENERIC_FIELDS and len(fld) > 4:
        return fld
    base = parts[-2]
    bname = re.sub(r"\[.*\]$", "", base)
    if len(parts) == 2 and bname in types:
        return f"{types[bname]}.{fld}"
    if len(parts) > 2:
        return f"{bname}.{fld}"
    return "?" + e


def lock_base(expr: str) -> str:
    """The object a lock lives in: `sk` for `&sk->sk_lock`, `b` for `&b->lock`."""
    e = re.sub(r"\s+", "", _strip(expr))
    m = re.match(r"^(.*?)(->|\.)[A-Za-z_]\w*(\[[^\]]*\])?$", e)
    return m.group(1) if m else ""


def key_of_call(name: str, kind: str, args: tuple[str, ...], types: dict[str, str]) -> tuple[str, str]:
    """(key, expr) of the lock an acquire/release call names."""
    if name in GLOBAL_KEY:
        return GLOBAL_KEY[name], GLOBAL_KEY[name]
    if name.startswith("iio_device_"):
        arg = _strip(args[0]) if args else ""
        return f"iio_dev.{name.split('_')[-2]}_mode", arg or name
    if _wrap_stem(name) in _WRAP_NAMES:
        arg = _strip(args[0]) if args else ""
        base = re.sub(r"\s+", "", arg)
        cls = types.get(base, "") if re.match(r"^\w+$", base) else lock_key(arg, types).lstrip("?")
        return f"{_wrap_stem(name)}({cls or base})", arg or name
    if kind == "rcu":
        # flavours are separate read-side sections: rcu_read_lock_bh() is not
        # ended by rcu_read_unlock()
        return ("srcu" if name.startswith("srcu") else "rcu_bh" if "_bh" in name
                else "rcu_sched" if "_sched" in name else "rcu"), name
    if kind in NOARG_KEY:
        return NOARG_KEY[kind], name
    if not args:
        return "?" + name, name
    if kind == "sock":
        return ("sk_lock.slock" if name.startswith("bh_") else "sk_lock"), _strip(args[0])
    if name.startswith("bh_lock_sock") or name == "bh_unlock_sock":
        return "sk_lock.slock", _strip(args[0])
    return lock_key(args[0], types), _strip(args[0])


def _wrap_stem(name: str) -> str:
    """The lock a wrapper is named for: inode_lock / inode_unlock -> inode,
    lock_page / unlock_page -> page, sb_start_write / sb_end_write -> sb_write."""
    if name in ("sb_start_write", "sb_end_write"):
        return "sb_write"
    parts = [p for p in name.split("_") if p not in ("lock", "unlock", "nested")]
    return "_".join(parts)


def paired_wrapper(name: str, fn_calls) -> tuple[str, str] | None:
    """("acquire" | "release", acquire name) for a call named like a lock
    wrapper (X_lock / X_unlock, lock_X / unlock_X) whose other half the
    same function also calls: the kernel's naming convention, taken as a
    lock of its own class (local to the function)."""
    toks = name.split("_")
    if "lock" in toks and not any(t in toks for t in ("init", "is", "held", "assert", "class", "key")):
        other = "_".join("unlock" if t == "lock" else t for t in toks)
        if other in fn_calls:
            return "acquire", name
    if "unlock" in toks:
        other = "_".join("lock" if t == "unlock" else t for t in toks)
        if other in fn_calls:
            return "release", other
    return None


def display(h: Held) -> str:
    if h.key in PSEUDO:
        return {"rcu": "the RCU read lock", "rcu_bh": "the RCU-bh read lock",
                "rcu_sched": "the RCU-sched read lock", "srcu": "the SRCU read lock",
                "irq": "interrupts disabled", "bh": "bottom halves disabled",
                "preempt": "preemption disabled"}[h.key]
    if re.match(r"^\w+$", h.expr) and h.kind != "sock":
        return f"the lock '{h.expr}'"
    return h.expr


# ---------------------------------------------------------------------------
# the walker
# ---------------------------------------------------------------------------

MAX_STATES = 48


class CallEvent(NamedTuple):
    name: str
    args: tuple[str, ...]
    line: int
    node: object
    states: frozenset          # frozenset of frozenset[Held] before the call


class Exit(NamedTuple):
    line: int                  # the return statement (or closing brace)
    states: frozenset
    via: dict                  # state -> goto line that led here (if any)


@dataclass
class Summary:
    """What a same-file function does to locks, seen from a caller."""
    name: str
    params: list[str]
    acquires: list[tuple[str, str, str]] = field(default_factory=list)   # (call, kind, arg template)
    releases: list[tuple[str, str, str]] = field(default_factory=list)
    takes: set[str] = field(default_factory=set)        # every stable key it takes (transitively later)
    cond_takes: set[str] = field(default_factory=set)   # keys of `takes` taken only under an if/switch
    take_sites: dict = field(default_factory=dict)      # key -> line
    sleeps: str | None = None                           # a direct sleeping call, unconditional
    sleep_line: int | None = None
    sleep_end: int | None = None


@dataclass
class Flow:
    fn: cparse.Function
    types: dict[str, str]
    calls: list[CallEvent] = field(default_factory=list)
    exits: list[Exit] = field(default_factory=list)
    acquires: list[tuple[Held, frozenset]] = field(default_factory=list)  # held lock, states before
    conds: list[tuple[object, frozenset]] = field(default_factory=list)   # condition node, states
    accesses: list[tuple[object, frozenset, bool]] = field(default_factory=list)  # field expr, states, write?
    conditional: set[str] = field(default_factory=set)   # keys taken in a branch, released outside
    uncertain: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)      # keys some call releases
    too_complex: bool = False
    annotated: bool = False    # __acquires/__releases/__must_hold
    handed: dict = field(default_factory=dict)   # key -> calls a held lock's expression went to (uncertain)
    flagged: set = field(default_factory=set)    # keys a flag variable follows (Walker(flags=True))


def _call_name(node) -> str:
    fn = node.child_by_field_name("function")
    return cparse.node_text(fn) if fn is not None else ""


def _call_args(node) -> tuple[str, ...]:
    argl = node.child_by_field_name("arguments")
    if argl is None:
        return ()
    return tuple(cparse.node_text(a) for a in argl.named_children if a.type != "comment")


def _missing_semicolon(stmt) -> bool:
    return (stmt.type == "expression_statement" and stmt.children
            and stmt.children[-1].type == ";" and stmt.children[-1].end_byte == stmt.children[-1].start_byte)


_LOOP_MACRO = LazyPattern(r"for_each|foreach|_for_|^for_|while_each|_loop")


class Walker:
    def __init__(self, fn: cparse.Function, summaries: dict[str, Summary] | None = None,
                 flags: bool = False, entry: tuple = (), extern: dict | None = None):
        # extern: call name -> ("acquire" | "release", acquire name): a pair
        # of lock wrappers the caller vouches for (the tree's), a lock of
        # its own class named by the acquire and its first argument
        self.extern = extern or {}
        self.flag_keys: dict[str, str] = _lock_flags(fn.node, declared_types(fn.node)) if flags else {}
        self.entry = frozenset(entry)
        self.fn = fn
        self.types = declared_types(fn.node)
        self.summaries = summaries or {}
        self.flow = Flow(fn, self.types)
        self.labels_seen: set[str] = set()
        self.pending: dict[str, set] = {}
        self.loop_stack: list[set] = []
        self.via: dict = {}
        self.guards: list[list[Held]] = []
        self.var_status: dict[str, Held] = {}   # ret = mutex_lock_interruptible(): var -> lock

    # -- state helpers ------------------------------------------------------
    def _cap(self, states: set) -> frozenset:
        if len(states) > MAX_STATES:
            self.flow.too_complex = True
            states = set(sorted(states, key=lambda s: sorted((h.key, h.line) for h in s))[:MAX_STATES])
        return frozenset(states)

    @staticmethod
    def _add(states, h: Held):
        return frozenset(frozenset(s | {h}) for s in states)

    @staticmethod
    def _remove(states, key: str):
        out = set()
        for s in states:
            drop = [h for h in s if h.key == key]
            if drop:
                # release the most recent one
                last = max(drop, key=lambda h: h.line)
                s = s - {last}
            out.add(frozenset(s))
        return frozenset(out)

    # -- entry ----------------------------------------------------------------
    def run(self) -> Flow:
        node = self.fn.node
        decl = node.child_by_field_name("declarator")
        if decl is not None and re.search(r"__(acquires|releases|must_hold)\s*\(", cparse.node_text(decl)):
            self.flow.annotated = True
        body = node.child_by_field_name("body")
        if body is None:
            return self.flow
        self.flow.flagged = set(self.flag_keys.values())
        start = frozenset({self.entry})
        end = self.stmt(body, start)
        if end:
            self.flow.exits.append(Exit(cparse.end_line_of(body), end, dict(self.via)))
        return self.flow

    # -- expressions ----------------------------------------------------------
    def expr(self, node, states, cond_ctx: bool = False):
        """Apply the calls in an expression (pre-order), record accesses."""
        if node is None or not states:
            return states
        # record field accesses (for LCK005)
        for n in cparse.query_nodes(node, "field_expression"):
            par = n.parent
            write = (par is not None and par.type in ("assignment_expression", "update_expression")
                     and par.child_by_field_name("left") == n) or (
                par is not None and par.type == "update_expression")
            self.flow.accesses.append((n, states, write))
        calls = list(cparse.query_nodes(node, "call_expression"))
        # inner calls are evaluated before outer ones
        calls.sort(key=lambda n: (n.end_byte, -n.start_byte))
        for c in calls:
            states = self.call(c, states)
        return states

    def call(self, node, states):
        name = _call_name(node)
        args = _call_args(node)
        line = cparse.line_of(node)
        self.flow.calls.append(CallEvent(name, args, line, node, states))
        fnode = node.child_by_field_name("function")
        # guard(mutex)(&l): held to the end of the enclosing block
        if fnode is not None and fnode.type == "call_expression" and _call_name(fnode) == "guard":
            gargs = _call_args(fnode)
            kind = "spin" if gargs and GUARD_SPIN.search(gargs[0]) else "mutex"
            if gargs and gargs[0].startswith("rcu"):
                kind = "rcu"
            key, expr = (("rcu", "rcu") if kind == "rcu" else
                         (lock_key(args[0], self.types), _strip(args[0])) if args else ("?guard", "guard"))
            h = Held(key, kind, line, expr, "guard", "guard")
            if self.guards:
                self.guards[-1].append(h)
            self.flow.acquires.append((h, states))
            return self._add(states, h)
        if name in ACQUIRE:
            kind = ACQUIRE[name]
            key, expr = key_of_call(name, kind, args, self.types)
            h = Held(key, kind, line, expr, name)
            self.flow.acquires.append((h, states))
            return self._add(states, h)
        if name in RELEASE:
            kind = RELEASE[name]
            key, _ = key_of_call(name, kind, args, self.types)
            self.flow.released.add(key)
            return self._remove(states, key)
        if name in TRYLOCK or name in ZEROLOCK:
            # not as an if condition (handled in if_stmt): assume taken, uncertain
            kind = TRYLOCK.get(name) or ZEROLOCK[name]
            key, expr = key_of_call(name, kind, args, self.types)
            h = Held(key, kind, line, expr, name, "cond")
            self.flow.uncertain.add(key)
            par = node.parent
            if par is not None and par.type == "assignment_expression":
                left = par.child_by_field_name("left")
                if left is not None and name in ZEROLOCK:
                    self.var_status[cparse.node_text(left)] = h
            self.flow.acquires.append((h, states))
            return self._add(states, h)
        if args and not name.startswith(("lockdep_", "WARN", "BUG", "spin_is_locked", "mutex_is_locked")):
            # a held lock handed to another function ("releases @lock"): its fate is unknown here
            passed = {_strip(a) for a in args}
            for s in states:
                for h in s:
                    if h.expr in passed and h.key not in PSEUDO and h.kind != "sock":
                        self.flow.uncertain.add(h.key)
                        self.flow.handed.setdefault(h.key, set()).add(name)
        if name not in self.summaries and name not in TRYLOCK and name not in ZEROLOCK:
            pair = self.extern.get(name) or paired_wrapper(name, self.fn.call_names)
            if pair is not None:
                key = "?" + pair[1] + "(" + (re.sub(r"\s+", "", _strip(args[0])) if args else "") + ")"
                if pair[0] == "release":
                    self.flow.released.add(key)
                    return self._remove(states, key)
                h = Held(key, "wrap", line, _strip(args[0]) if args else name, name)
                self.flow.acquires.append((h, states))
                return self._add(states, h)
        summ = self.summaries.get(name)
        if summ is not None and summ.name != self.fn.name:
            subst = dict(zip(summ.params, args))
            # a drop-and-retake helper (releases and re-acquires one lock) is neutral
            both = {t for _, _, t in summ.acquires} & {t for _, _, t in summ.releases}
            for call, kind, tmpl in summ.releases:
                if tmpl in both:
                    continue
                expr = _subst(tmpl, subst)
                key, _ = key_of_call(call, kind, (expr,) if tmpl else (), self.types)
                self.flow.released.add(key)
                states = self._remove(states, key)
            for call, kind, tmpl in summ.acquires:
                if tmpl in both:
                    continue
                expr = _subst(tmpl, subst)
                key, expr = key_of_call(call, kind, (expr,) if tmpl else (), self.types)
                h = Held(key, kind, line, expr, name, "wrap:" + name)
                self.flow.acquires.append((h, states))
                states = self._add(states, h)
        return states

    # -- conditions -----------------------------------------------------------
    def _cond_lock(self, cond):
        """For `if (trylock(x))`-like conditions: (Held, taken_on_then)."""
        n = cond
        neg = False
        while True:
            if n.type == "parenthesized_expression" and n.named_child_count == 1:
                n = n.named_children[0]
            elif n.type == "unary_expression" and cparse.node_text(n).startswith("!"):
                neg = not neg
                n = n.named_children[-1]
            elif n.type == "call_expression" and _call_name(n) in ("likely", "unlikely") and _call_args(n):
                argl = n.child_by_field_name("arguments")
                n = argl.named_children[0]
            else:
                break
        cmp_zero = None
        if n.type == "binary_expression":
            op = n.child_by_field_name("operator")
            right = n.child_by_field_name("right")
            left = n.child_by_field_name("left")
            opt = cparse.node_text(op) if op is not None else ""
            if right is not None and cparse.node_text(right).strip() == "0" and opt in ("==", "!=", "<"):
                cmp_zero = opt
                n = left
        name = ""
        h = None
        if n is not None and n.type == "call_expression":
            name = _call_name(n)
            if name in TRYLOCK or name in ZEROLOCK:
                kind = TRYLOCK.get(name) or ZEROLOCK[name]
                key, expr = key_of_call(name, kind, _call_args(n), self.types)
                h = Held(key, kind, cparse.line_of(n), expr, name, "cond")
        elif n is not None and n.type == "identifier" and cparse.node_text(n) in self.var_status:
            h = self.var_status[cparse.node_text(n)]
            name = h.call
        if h is None:
            return None
        nonzero_then = True      # the condition is true when the call returned nonzero
        if cmp_zero == "==":
            nonzero_then = False
        if neg:
            nonzero_then = not nonzero_then
        success_nonzero = name in TRYLOCK
        return h, (nonzero_then == success_nonzero), n.type == "identifier"

    def _flag_cond(self, cond):
        """(key, true on then) for `if (flag)` / `if (!flag)` on a flag
        variable that follows a lock (see _lock_flags())."""
        n, neg = cond, False
        while True:
            if n.type == "parenthesized_expression" and n.named_child_count == 1:
                n = n.named_children[0]
            elif n.type == "unary_expression" and cparse.node_text(n).startswith("!"):
                neg, n = not neg, n.named_children[-1]
            else:
                break
        if n.type == "identifier" and cparse.node_text(n) in self.flag_keys:
            return self.flag_keys[cparse.node_text(n)], not neg
        return None

    # -- statements -----------------------------------------------------------
    def block(self, children, states):
        i = 0
        kids = [c for c in children if c.is_named and c.type != "comment"]
        while i < len(kids):
            st = kids[i]
            if _missing_semicolon(st) and i + 1 < len(kids):
                call = st.named_children[0] if st.named_children else None
                cname = _call_name(call) if call is not None and call.type == "call_expression" else ""
                if cname == "scoped_guard":
                    gargs = _call_args(call)
                    kind = "spin" if gargs and GUARD_SPIN.search(gargs[0]) else "mutex"
                    if gargs and gargs[0].startswith("rcu"):
                        kind = "rcu"
                    key = "rcu" if kind == "rcu" else (lock_key(gargs[1], self.types) if len(gargs) > 1 else "?g")
                    h = Held(key, kind, cparse.line_of(call), _strip(gargs[1]) if len(gargs) > 1 else "rcu",
                             "scoped_guard", "guard")
                    self.flow.calls.append(CallEvent("scoped_guard", gargs, h.line, call, states))
                    self.flow.acquires.append((h, states))
                    inner = self.stmt(kids[i + 1], self._add(states, h))
                    states = self._remove(inner, key) if inner else inner
                    i += 2
                    continue
                if _LOOP_MACRO.search(cname):
                    states = self.expr(st, states)
                    states = self.loop(kids[i + 1], states)
                    i += 2
                    continue
            states = self.stmt(st, states)
            i += 1
        return states

    def loop(self, body, states, cond=None):
        self.loop_stack.append(set())
        if cond is not None:
            states = self.expr(cond, states)
        before_keys = {h for s in states for h in s}
        end = self.stmt(body, states) if body is not None else states
        breaks = self.loop_stack.pop()
        self._mark_conditional(before_keys, end)
        return self._cap(set(states) | set(end) | breaks)

    def _mark_conditional(self, before: set, end):
        """Locks a branch leaves held that were not held when it began (a
        branch that drops a lock and takes it again leaves it as it was)."""
        held_before = {h.key for h in before}
        for s in end:
            for h in s:
                if h.key not in held_before and h.how != "guard":
                    self.flow.conditional.add(h.key)

    def stmt(self, node, states):
        t = node.type
        if t == "compound_statement":
            self.guards.append([])
            out = self.block(node.children, states)
            for h in self.guards.pop():
                out = self._remove(out, h.key) if out else out
            return out
        if t == "labeled_statement":
            label = node.child_by_field_name("label")
            lname = cparse.node_text(label) if label is not None else ""
            self.labels_seen.add(lname)
            states = self._cap(set(states) | self.pending.pop(lname, set()))
            rest = [c for c in node.named_children if c != label]
            return self.block(rest, states)
        if t == "if_statement":
            cond = node.child_by_field_name("condition")
            cons = node.child_by_field_name("consequence")
            alt = node.child_by_field_name("alternative")
            if states:
                self.flow.conds.append((cond, states))
            cl = self._cond_lock(cond) if cond is not None else None
            if cl is not None:
                h, on_then, is_var = cl
                if not is_var:
                    # evaluate the rest of the condition without the lock call
                    for c in [n for n in cparse.walk(cond) if n.type == "call_expression"]:
                        if _call_name(c) != h.call:
                            states = self.call(c, states)
                    self.flow.calls.append(CallEvent(h.call, (), h.line, cond, states))
                    self.flow.acquires.append((h, states))
                    st_then = self._add(states, h) if on_then else states
                    st_else = states if on_then else self._add(states, h)
                else:
                    st_then = self._remove(states, h.key) if not on_then else states
                    st_else = states if not on_then else self._remove(states, h.key)
                    self.flow.uncertain.discard(h.key)
            else:
                states = self.expr(cond, states, cond_ctx=True)
                st_then = st_else = states
                fk = self._flag_cond(cond) if self.flag_keys else None
                if fk is not None:
                    # `if (locked)`: the paths that hold the lock the flag follows
                    key, on_then = fk
                    held = frozenset(s for s in states if any(h.key == key for h in s))
                    st_then, st_else = (held, states - held) if on_then else (states - held, held)
            before = {h for s in states for h in s}
            s1 = self.stmt(cons, st_then) if cons is not None else st_then
            if alt is not None:
                inner = alt.named_children[0] if alt.type == "else_clause" and alt.named_children else alt
                s2 = self.stmt(inner, st_else)
            else:
                s2 = st_else
            if cl is None:
                self._mark_conditional(before, s1)
                self._mark_conditional(before, s2)
            return self._cap(set(s1) | set(s2))
        if t in ("for_statement", "while_statement"):
            cond = node.child_by_field_name("condition")
            for part in ("initializer",):
                p = node.child_by_field_name(part)
                if p is not None:
                    states = self.expr(p, states)
            return self.loop(node.child_by_field_name("body"), states, cond)
        if t == "do_statement":
            self.loop_stack.append(set())
            before = {h for s in states for h in s}
            end = self.stmt(node.child_by_field_name("body"), states)
            end = self.expr(node.child_by_field_name("condition"), end)
            breaks = self.loop_stack.pop()
            cond = node.child_by_field_name("condition")
            if cond is not None and cparse.node_text(cond).strip("() ") == "0":
                return self._cap(set(end) | breaks)
            self._mark_conditional(before, end)
            return self._cap(set(states) | set(end) | breaks)
        if t == "switch_statement":
            cond = node.child_by_field_name("condition")
            states = self.expr(cond, states)
            body = node.child_by_field_name("body")
            entry = states
            self.loop_stack.append(set())
            cur = frozenset()
            has_default = False
            before = {h for s in states for h in s}
            for c in (body.named_children if body is not None else []):
                if c.type == "case_statement":
                    if cparse.node_text(c).startswith("default"):
                        has_default = True
                    cur = self._cap(set(cur) | set(entry))
                    val = c.child_by_field_name("value")
                    kids = [k for k in c.named_children if k != val]
                    cur = self.block(kids, cur)
                else:
                    cur = self.stmt(c, cur)
            breaks = self.loop_stack.pop()
            out = set(cur) | breaks | (set() if has_default else set(entry))
            self._mark_conditional(before, out)
            return self._cap(out)
        if t == "return_statement":
            states = self.expr(node, states)
            if states:
                self.flow.exits.append(Exit(cparse.line_of(node), states, dict(self.via)))
            return frozenset()
        if t == "goto_statement":
            label = node.child_by_field_name("label")
            lname = cparse.node_text(label) if label is not None else ""
            if states and lname not in self.labels_seen:
                self.pending.setdefault(lname, set()).update(states)
                for s in states:
                    self.via.setdefault(s, cparse.line_of(node))
            return frozenset()
        if t == "break_statement":
            if self.loop_stack:
                self.loop_stack[-1].update(states)
            return frozenset()
        if t == "continue_statement":
            return frozenset()
        if t in ("expression_statement", "declaration"):
            return self.expr(node, states)
        if t.startswith("preproc_"):
            # #ifdef blocks inside a function: walk their statements in order
            kids = [c for c in node.named_children if c.type not in ("identifier", "preproc_arg")
                    and c != node.child_by_field_name("condition")]
            return self.block(kids, states)
        return self.expr(node, states)


_FLAG_TRUE = frozenset(("true", "1"))
_FLAG_FALSE = frozenset(("false", "0"))


def _lock_flags(fn_node, types: dict[str, str]) -> dict[str, str]:
    """Local variables that say whether a lock is held: every assignment
    of a true value to it stands right after (or before) the statement
    taking that lock, in the same block, its other assignments are false
    values (its initialiser too), and nothing takes its address:

        filemap_invalidate_lock(mapping);
        fault_blocked = true;
        ...
        if (fault_blocked)
                filemap_invalidate_unlock(mapping);

    -> {variable: key of the lock}."""
    sets: dict[str, list] = {}
    bad: set[str] = set()
    for n in cparse.query_nodes(fn_node, "assignment_expression init_declarator"):
        left = n.child_by_field_name("left" if n.type == "assignment_expression" else "declarator")
        right = n.child_by_field_name("right" if n.type == "assignment_expression" else "value")
        if left is None or left.type != "identifier":
            continue
        v = cparse.node_text(left)
        val = cparse.node_text(right).strip() if right is not None else ""
        op = n.child_by_field_name("operator")
        if op is not None and cparse.node_text(op) != "=":
            bad.add(v)
        elif val in _FLAG_TRUE and n.type == "assignment_expression":
            sets.setdefault(v, []).append(n)
        elif val not in _FLAG_FALSE:
            bad.add(v)
    for n in cparse.query_nodes(fn_node, "pointer_expression update_expression"):
        arg = n.child_by_field_name("argument")
        if arg is not None and arg.type == "identifier" and (
                n.type == "update_expression" or cparse.node_text(n).startswith("&")):
            bad.add(cparse.node_text(arg))
    out: dict[str, str] = {}
    for v, assigns in sets.items():
        if v in bad:
            continue
        keys = set()
        for a in assigns:
            st = a.parent
            if st is None or st.type != "expression_statement" or st.parent is None:
                keys = set()
                break
            sib = [c for c in st.parent.named_children if c.type != "comment"]
            i = sib.index(st) if st in sib else -1
            got = None
            for j in (i - 1, i + 1):
                if 0 <= j < len(sib) and sib[j].type == "expression_statement" and sib[j].named_children \
                        and sib[j].named_children[0].type == "call_expression":
                    c = sib[j].named_children[0]
                    name = _call_name(c)
                    if name in ACQUIRE:
                        got = key_of_call(name, ACQUIRE[name], _call_args(c), types)[0]
                        break
            if got is None:
                keys = set()
                break
            keys.add(got)
        if len(keys) == 1:
            out[v] = keys.pop()
    return out


def flow_with(info: "ImageInfo", name: str, flags: bool = True, entry: tuple = (),
              extern: dict | None = None) -> Flow | None:
    """The flow of function NAME walked with flag variables that follow a
    lock (_lock_flags(): `if (locked) unlock()` then only runs on the paths
    that hold it) and with the locks ENTRY held on entry (a caller's, for
    a function annotated __releases() or __must_hold())."""
    memo = info.memo.setdefault(("flow_with", flags, frozenset(entry), frozenset((extern or {}).items())), {})
    if name not in memo:
        f = info.byname.get(name)
        memo[name] = (Walker(f, info.summaries, flags=flags, entry=entry, extern=extern).run()
                      if f is not None else None)
    return memo[name]


def _subst(tmpl: str, subst: dict[str, str]) -> str:
    if not tmpl:
        return tmpl
    return re.sub(r"\b(\w+)\b", lambda m: subst.get(m.group(1), m.group(1)), tmpl)


# ---------------------------------------------------------------------------
# sleeping calls
# ---------------------------------------------------------------------------

SLEEPING = {
    "mutex_lock", "mutex_lock_nested", "mutex_lock_interruptible", "mutex_lock_killable",
    "mutex_lock_io", "down", "down_read", "down_write", "down_interruptible", "down_killable",
    "down_read_killable", "down_write_killable", "down_read_interruptible",
    "msleep", "msleep_interruptible", "ssleep", "usleep_range", "usleep_range_state", "fsleep",
    "schedule", "schedule_timeout", "schedule_timeout_interruptible",
    "schedule_timeout_uninterruptible", "schedule_timeout_killable", "io_schedule",
    "might_sleep", "cond_resched", "synchronize_rcu", "synchronize_net", "synchronize_srcu",
    "synchronize_rcu_expedited", "rcu_barrier", "lock_sock", "lock_sock_nested",
    "copy_from_user", "copy_to_user", "vmalloc", "vzalloc", "vmalloc_node", "vzalloc_node",
    "vmalloc_user", "flush_work", "flush_delayed_work", "flush_workqueue", "cancel_work_sync",
    "cancel_delayed_work_sync", "kthread_stop", "kthread_park", "wait_for_completion",
    "request_firmware", "sock_create_kern", "kvfree_rcu_mightsleep",
}
SLEEPING_PREFIX = ("wait_event", "wait_for_completion", "__wait_event")
SLEEPY_GFP = LazyPattern(r"\b(GFP_KERNEL|GFP_KERNEL_ACCOUNT|GFP_USER|GFP_HIGHUSER|GFP_HIGHUSER_MOVABLE|"
                        r"GFP_NOIO|GFP_NOFS)\b")
NOSLEEP_GFP = LazyPattern(r"\b(GFP_ATOMIC|GFP_NOWAIT|__GFP_NOWAIT)\b")


def sleeping_call(name: str, args: tuple[str, ...]) -> str | None:
    """Why this call may sleep, or None."""
    if name in SLEEPING:
        return f"{name}()"
    if name.startswith(SLEEPING_PREFIX) and "lock" not in name and "timeout_atomic" not in name:
        return f"{name}()"
    for a in args:
        if SLEEPY_GFP.search(a) and not NOSLEEP_GFP.search(a) and "&" not in a.replace("& ~", "") \
                and not re.search(r"[?:]", a):
            return f"{name}() with {SLEEPY_GFP.search(a).group(1)}"
    return None


# ---------------------------------------------------------------------------
# per-image analysis, cached
# ---------------------------------------------------------------------------


@dataclass
class ImageInfo:
    functions: list[cparse.Function]
    byname: dict[str, cparse.Function]
    summaries: "_Summaries"         # name -> Summary, made on demand
    flows: dict[str, Flow]
    memo: dict = field(default_factory=dict)     # per-rule derived data
    shown: set | None = None        # lines the hunks show (None: the whole image is known)
    synth: set = field(default_factory=set)     # rebuilt heads and ends (not code)

    def decided(self, a: int, b: int) -> bool:
        """Every line from A to B is known (no gap of unknown code between)."""
        if self.shown is None:
            return True
        lo, hi = min(a, b), max(a, b)
        return all(i in self.shown for i in range(lo, hi + 1))

    def flow(self, name: str) -> Flow | None:
        return self.flows.get(name)


def _fn_key(f: cparse.Function) -> tuple:
    """What a function's own analysis depends on: its text (and shape)."""
    n = f.node
    return (f.name, n.text, n.descendant_count)


_BASE: "OrderedDict[tuple, Summary]" = OrderedDict()
_BASE_SIZE = 8192


def _base_summary(f: cparse.Function) -> Summary:
    """The function's own Summary (lines relative to its first line),
    memoised by its text: a series shows most functions of a big file
    again and again, at shifted lines."""
    key = _fn_key(f)
    got = _BASE.get(key)
    if got is not None:
        _BASE.move_to_end(key)
        return got
    got = _BASE[key] = _own_summary(f)
    if len(_BASE) > _BASE_SIZE:
        _BASE.popitem(last=False)
    return got


def _own_summary(f: cparse.Function) -> Summary:
    start = f.start
    names = f.call_names
    if names.isdisjoint(_LOCKISH) and not _has_paired_wrapper(names) and (b"GFP_" not in (f.node.text or b"")
                                       and not any(sleeping_call(n, ()) for n in names)):
        # nothing the walk below would record (no sleeping call either:
        # that needs a sleeping name or a GFP_ flag): skip it, and the
        # Call objects too (most functions of a big file).  No parameter
        # names either: they only map a wrapper's acquires and releases
        # onto its callers' arguments, and this one has none.
        return Summary(f.name, [])
    params = []
    decl = f.node.child_by_field_name("declarator")
    for n in cparse.query_nodes(decl, "parameter_declaration") if decl is not None else []:
        v = cparse._declarator_name(n.child_by_field_name("declarator"))
        if v:
            params.append(v)
    w = Walker(f).run()
    s = Summary(f.name, params)
    # net acquires: held at every exit
    if w.exits:
        common = None
        for ex in w.exits:
            for st in ex.states:
                keys = {(h.key, h.call, h.kind, h.expr) for h in st if h.how not in ("guard", "cond")}
                common = keys if common is None else common & keys
        for key_, call, kind, expr in sorted(common or ()):
            s.acquires.append((call, kind, "" if kind in NOARG_KEY else expr))
    # net releases: release calls of locks not taken here
    taken = {h.key for h, _ in w.acquires}
    for c in w.calls:
        if c.name in RELEASE:
            kind = RELEASE[c.name]
            key_, expr = key_of_call(c.name, kind, c.args, w.types)
            if key_ not in taken and c.states and all(
                    not any(h.key == key_ for h in st) for st in c.states):
                s.releases.append((c.name, kind, "" if kind in NOARG_KEY else expr))
    cond_lines = _conditional_lines(f.node)
    uncond = set()
    for h, _ in w.acquires:
        if h.stable and h.key not in PSEUDO:
            s.takes.add(h.key)
            s.take_sites.setdefault(h.key, h.line - start)
            if h.line not in cond_lines:
                uncond.add(h.key)
    s.cond_takes = s.takes - uncond
    for c in w.calls:
        why = sleeping_call(c.name, c.args)
        if why and c.states and all(not any(h.kind in ATOMIC_KINDS for h in st) for st in c.states) \
                and _unconditional(c.node, f.node):
            s.sleeps, s.sleep_line, s.sleep_end = why, c.line - start, cparse.end_line_of(c.node) - start
            break
    return s


def may_lock(info: "ImageInfo", name: str) -> bool:
    """Whether the flow of function `name` can hold any lock at some point:
    it calls an acquire (or trylock, guard) itself, or a same-file wrapper
    that returns with a lock held.  A function that cannot has no lock
    orders, leaks or atomic sections, so rules looking for those skip its
    (costly) flow."""
    memo = info.memo.setdefault("may_lock", {})
    got = memo.get(name)
    if got is None:
        got = memo[name] = _may_lock(info, name)
    return got


def _may_lock(info: "ImageInfo", name: str) -> bool:
    f = info.byname.get(name)
    if f is None:
        return False
    if not f.call_names.isdisjoint(_LOCKISH) or _has_paired_wrapper(f.call_names):
        return True
    by = info.summaries.by
    for c in f.call_names:
        g = by.get(c)
        if g is None or c == name or g.call_names.isdisjoint(_LOCKISH):
            continue        # not here, or takes nothing itself: no acquires
        if _base_summary(g).acquires:
            return True
    return False


def _has_paired_wrapper(names) -> bool:
    return any("lock" in n and paired_wrapper(n, names) for n in names)


# Call names that make a function's own summary non-empty (with
# sleeping_call()): acquires, releases, trylocks, guard()/scoped_guard().
_LOCKISH = frozenset(ACQUIRE) | frozenset(RELEASE) | frozenset(TRYLOCK) | frozenset(ZEROLOCK) \
    | {"guard", "scoped_guard"}


class _Summaries:
    """Summaries of an image's functions, by name, each made when first
    asked for: a rule looks at the functions a patch touches and at what
    they call, not at the other hundreds of a big file.

    `takes` is closed over the same-file callees (every lock a function
    takes itself or through a callee, transitively); a lock a function
    gets only through callees that take it under a condition is in
    `cond_takes` ("maybe")."""

    def __init__(self, funcs: list[cparse.Function]):
        self.by: dict[str, cparse.Function] = {}
        for f in funcs:
            if f.name:
                self.by[f.name] = f          # a later definition of a name wins
        self.done: dict[str, Summary] = {}

    def __len__(self) -> int:
        return len(self.by)

    def __contains__(self, name) -> bool:
        return name in self.by

    def __getitem__(self, name: str) -> Summary:
        got = self.get(name)
        if got is None:
            raise KeyError(name)
        return got

    def get(self, name: str, default=None):
        if name not in self.by:
            return default
        got = self.done.get(name)
        if got is None:
            self._close(name)
            got = self.done[name]
        return got

    def _own(self, name: str) -> tuple[Summary, frozenset]:
        f = self.by[name]
        b = _base_summary(f)
        start = f.start
        return Summary(
            b.name, list(b.params), list(b.acquires), list(b.releases), set(b.takes),
            set(b.cond_takes), {k: v + start for k, v in b.take_sites.items()}, b.sleeps,
            None if b.sleep_line is None else b.sleep_line + start,
            None if b.sleep_end is None else b.sleep_end + start), f.call_names

    def _close(self, name: str) -> None:
        """Summaries of `name` and every same-file function it reaches."""
        own: dict[str, Summary] = {}
        callees: dict[str, list[str]] = {}
        todo = [name]
        while todo:
            n = todo.pop()
            if n in own or n in self.done:
                continue
            s, names = self._own(n)
            own[n] = s
            callees[n] = sorted(c for c in names if c in self.by and c != n)
            todo.extend(callees[n])
        def summ(n):
            return own[n] if n in own else self.done[n]
        # uncond[n]: locks n takes unconditionally, itself or through a callee
        uncond = {n: s.takes - s.cond_takes for n, s in own.items()}
        changed = True
        while changed:
            changed = False
            for n, s in own.items():
                for c in callees[n]:
                    cs = summ(c)
                    new = cs.takes - s.takes
                    if new:
                        s.takes |= new
                        changed = True
                    cu = cs.takes - cs.cond_takes if c in self.done else uncond[c]
                    add = cu - uncond[n]
                    if add:
                        uncond[n] |= add
                        changed = True
        for n, s in own.items():
            s.cond_takes = s.takes - uncond[n]
            self.done[n] = s


def _conditional_lines(fn_node) -> set[int]:
    """Lines of a function holding a lone call that an if guards, as in

        if (!db->in_timeout)
                mutex_lock(&db->addr_lock);

    the "take it unless we already hold it / are in that context" idiom: a
    lock taken that way is only maybe taken.  (A braced block that locks,
    works and unlocks under an if is an ordinary section, not this.)"""
    out: set[int] = set()
    for n in cparse.query_nodes(fn_node, "if_statement"):
        for p in (n.child_by_field_name("consequence"), n.child_by_field_name("alternative")):
            if p is not None and p.type == "else_clause":
                p = next((c for c in p.named_children), None)
            if p is not None and p.type == "expression_statement" and p.named_children \
                    and p.named_children[0].type == "call_expression":
                out.update(range(cparse.line_of(p), cparse.end_line_of(p) + 1))
    return out


def _unconditional(node, fn_node) -> bool:
    """True when no if/loop/switch stands between the call and the body."""
    p = node.parent
    while p is not None and p != fn_node:
        if p.type in ("if_statement", "for_statement", "while_statement", "do_statement",
                      "switch_statement", "conditional_expression", "case_statement"):
            return False
        p = p.parent
    return True


_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def image(fv, which: str) -> ImageInfo:
    """Analysis of a FileView's "pre" or "post" image (cached per FileView,
    and per tree for a full image: the post-image of one patch is the
    pre-image of the next)."""
    per = _cache.setdefault(fv, {})
    if which in per:
        return per[which]
    tree = fv.post_tree if which == "post" else fv.pre_tree
    full = fv.post is not None if which == "post" else fv.pre is not None
    if full:
        m = cparse._memo(tree.root_node)
        info = m.get("_lockflow.image")
        if info is None:
            info = m["_lockflow.image"] = _image(tree, None)
    else:
        shown = _shown_lines(fv, which == "post")
        info = _image(tree, shown, fv.synth_lines(which == "post"))
    per[which] = info
    return info


def full_image(tree) -> ImageInfo:
    """The analysis of a whole file's parse tree (a file of the tree that
    the series does not touch), cached with the tree."""
    m = cparse._memo(tree.root_node)
    info = m.get("_lockflow.image")
    if info is None:
        info = m["_lockflow.image"] = _image(tree, None)
    return info


_SECTION_FN = re.compile(r"^\s*(?:[\w*\s]+?[\s*])?(\w+)\s*\(")


def rebuilt_text(fv, new: bool) -> tuple[str, set[int]]:
    """The image the hunks show (gaps blank, line numbers kept), with each
    function the hunks show only from its middle rebuilt around them: its
    head (from the hunk's section line: `@@ ... @@ static int f(...)`)
    written into the gap before the first hunk that shows it, opening as
    many braces as the shown lines close, and the braces left open closed in
    the gap after its last hunk.  Returns the text and the lines written
    (the rebuilt heads and ends, which are not code anyone wrote)."""
    lines: dict[int, str] = {}
    groups: list[tuple[str, int, int]] = []       # (section, first line, last line)
    for h in fv.diff.hunks:
        shown = [(ln.new_no if new else ln.old_no, ln.text) for ln in h.lines
                 if (ln.kind != "-" if new else ln.kind != "+") and (ln.new_no if new else ln.old_no)]
        if not shown:
            continue
        for n, text in shown:
            lines[n] = text
        sec = (h.section or "").strip()
        if groups and groups[-1][0] == sec and sec:
            groups[-1] = (sec, groups[-1][1], shown[-1][0])
        else:
            groups.append((sec, shown[0][0], shown[-1][0]))
    if not lines:
        return "", set()
    extra: dict[int, str] = {}
    for sec, first, last in groups:
        m = _SECTION_FN.match(sec)
        if not m or "=" in sec.split("(")[0] or first - 1 < 1 or (first - 1) in lines or (first - 1) in extra:
            continue
        name = m.group(1)
        if name in ("if", "for", "while", "switch", "return", "sizeof"):
            continue
        head = sec.rstrip("{ ").rstrip()
        if head.count("(") != head.count(")"):
            cut = head.rfind(",")
            head = (head[:cut] if cut > head.find("(") else head[:head.find("(") + 1]) + ")"
        if re.search(r"\b" + re.escape(name) + r"\s*\(", "\n".join(
                lines.get(i, "") for i in range(max(1, first - 60), first))):
            continue        # the head is shown above (a group of the same function)
        # kernel style: a line's tabs are its depth in the function; a gap
        # gets the braces that bring the depth from before it to after it
        depth = _indent_depth([lines.get(i, "") for i in range(first, last + 1)])
        if depth is None:
            continue
        extra[first - 1] = head + " " + "{" * depth
        prev = first
        for i in range(first, last + 1):
            if i not in lines:
                continue
            if i > prev + 1:
                want = _indent_depth([lines.get(j, "") for j in range(i, last + 1)])
                if want is not None and want != depth:
                    extra[prev + 1] = ("}" * (depth - want)) if depth > want else ("{" * (want - depth))
                    depth = want
            for ch in _code_only(lines[i]):
                if ch == "{":
                    depth += 1
                elif ch == "}":
                    depth -= 1
            prev = i
        if depth > 0:
            close_at = last + 1
            while close_at in lines or close_at in extra:
                close_at += 1
            extra[close_at] = "}" * depth
    if not extra:
        return "", set()
    allno = {**lines, **extra}
    top = max(allno)
    return "\n".join(allno.get(i, "") for i in range(1, top + 1)) + "\n", set(extra)


def _indent_depth(lines: list[str]) -> int | None:
    """The block depth the first code line of LINES is at, by its leading
    tabs (a line that closes a block counts one deeper; labels and
    preprocessor lines say nothing)."""
    for ln in lines:
        s = ln.strip()
        if not s or s.startswith(("#", "/*", "*", "//")) or re.match(r"^\w+:\s*$", s):
            continue
        tabs = len(ln) - len(ln.lstrip("\t"))
        if tabs == 0:
            return None if not s.startswith("}") else 1
        return tabs + (1 if s.startswith("}") else 0)
    return None


def _code_only(line: str) -> str:
    """A line without its strings, character constants and comments (for
    counting braces)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', "", line)
    s = re.sub(r"/\*.*?\*/", "", s)
    return s.split("//")[0]


def _macro_named(funcs: list[cparse.Function]) -> list[cparse.Function]:
    """Functions whose name a macro makes, `static int UVERBS_HANDLER(X)(...)`
    (a declarator of a declarator), named `UVERBS_HANDLER(X)`: the file's
    handlers all parse as `UVERBS_HANDLER`, and one name for them all
    would give each the flow of the first."""
    out = []
    for f in funcs:
        d = f.node.child_by_field_name("declarator")
        while d is not None and d.type == "pointer_declarator":
            d = d.child_by_field_name("declarator")
        inner = d.child_by_field_name("declarator") if d is not None and d.type == "function_declarator" else None
        if inner is not None and inner.type == "function_declarator":
            f = dataclasses.replace(f, name=re.sub(r"\s+", "", cparse.node_text(inner)))
        out.append(f)
    return out


def _image(tree, shown: set[int] | None, synth: set[int] = frozenset()) -> ImageInfo:
    funcs = _macro_named([f for f in cparse.functions(tree) if f.name])
    if shown is not None and synth:
        shown = shown | synth           # rebuilt heads and ends count as seen
    if shown is not None:
        # reconstructed from hunks: functions whose head and closing brace
        # the hunks show; the gaps between hunks are unknown code, taken to
        # hold no jump or exit and to leave the locks as they found them
        # (rules lower their confidence when a gap lies on the path)
        funcs = [f for f in funcs if f.start in shown and f.end in shown
                 and cparse.node_text(f.node).rstrip().endswith("}")]
    summ = _Summaries(funcs)
    flows = {}
    byname = {}
    for f in funcs:
        byname.setdefault(f.name, f)
    return ImageInfo(funcs, byname, summ, flows, shown=shown, synth=set(synth))


def _shown_lines(fv, new: bool) -> set[int]:
    return fv.shown_lines(new)


def lock_flow(info: ImageInfo, name: str) -> Flow | None:
    """flow_of(), or None for a function that can never hold a lock: no
    lock order, leak or atomic section to find there (see may_lock())."""
    return flow_of(info, name) if may_lock(info, name) else None


def flow_of(info: ImageInfo, name: str) -> Flow | None:
    if name not in info.flows:
        f = info.byname.get(name)
        info.flows[name] = Walker(f, info.summaries).run() if f is not None else None
    return info.flows[name]


_DIGESTS: "OrderedDict[tuple, dict]" = OrderedDict()
_DIGEST_SIZE = 8192


def digest(info: ImageInfo, name: str, make) -> object:
    """make(info, flow, start) for the function `name` of an image, memoised by
    what the flow depends on: the function's text and the summaries of the
    same-file functions it calls.  `make` must give a value that does not
    depend on where the function is (lines relative to `start`, its first
    line), may read info.summaries only for the functions `name` calls,
    and must be a module-level function (it is part of the key)."""
    f = info.byname.get(name)
    if f is None:
        return None
    memo = info.memo.setdefault(("digest", make), {})
    if name in memo:
        return memo[name]
    called = f.call_names
    sig = []
    for c in sorted(called):
        summ = info.summaries.get(c)
        if summ is not None:
            sig.append((c, tuple(summ.params), tuple(summ.acquires), tuple(summ.releases),
                        frozenset(summ.takes), frozenset(summ.cond_takes)))
    key = (make, _fn_key(f), tuple(sig))
    got = _DIGESTS.get(key)
    if got is None:
        got = make(info, flow_of(info, name), f.start)
        _DIGESTS[key] = got
        if len(_DIGESTS) > _DIGEST_SIZE:
            _DIGESTS.popitem(last=False)
    else:
        _DIGESTS.move_to_end(key)
    memo[name] = got
    return got


def touched_files(ctx):
    """(file view, its touched functions, the post-image analysis) for each
    C file of the patch that has added lines inside functions: the loop
    every locking rule starts with."""
    for fv in ctx.c_files():
        touched = touched_functions(fv)
        if touched:
            yield fv, touched, image(fv, "post")


def touched_functions(fv) -> list[tuple[cparse.Function, set[int]]]:
    """Post-image functions that hold added lines (or lost removed ones),
    with those lines."""
    added = fv.changed_lines
    if not added:
        return []
    info = image(fv, "post")
    ls = sorted(added)
    out = []
    for f in info.functions:
        i = bisect.bisect_left(ls, f.start)
        j = bisect.bisect_right(ls, f.end)
        if i < j:
            out.append((f, set(ls[i:j])))
    return out


def must_held(states) -> set[Held]:
    """Locks held on every path reaching a point (by key): one Held per
    key, the latest acquisition of it on any path (chosen by value, not by
    which path a set happens to list first, so that the answer does not
    depend on string hashing)."""
    if not states:
        return set()
    keys = None
    for s in states:
        k = {h.key for h in s}
        keys = k if keys is None else keys & k
    best: dict[str, Held] = {}
    for s in states:
        for h in s:
            if h.key in keys:
                cur = best.get(h.key)
                if cur is None or _held_order(h) > _held_order(cur):
                    best[h.key] = h
    return set(best.values())


def _held_order(h: Held) -> tuple:
    return (h.line, h.expr, h.call, h.kind, h.how)


def may_held(states) -> set[Held]:
    return {h for s in states for h in s}


# ---------------------------------------------------------------------------
# helpers for the rules
# ---------------------------------------------------------------------------


def span_added(node, added: set[int]) -> int | None:
    """The first added line inside a node, or None."""
    for ln in range(cparse.line_of(node), cparse.end_line_of(node) + 1):
        if ln in added:
            return ln
    return None


def report_line(candidates, added: set[int], fallback: int) -> int:
    """The first candidate line the patch adds, else the fallback."""
    for ln in candidates:
        if ln and ln in added:
            return ln
    return fallback


def first_line_text(node) -> str:
    text = cparse.node_text(node).strip().split("\n")[0].strip()
    return text[:60]


def fn_skipped_for_balance(fl: Flow) -> bool:
    """Functions meant to return with a lock held (or to drop one they did
    not take): annotated ones and lock-ish names."""
    return fl.annotated or bool(SKIP_FN_RE.search(fl.fn.name))


_ERRORISH = LazyPattern(r"^\s*(-\s*\w+|ERR_PTR\s*\(.*|ERR_CAST\s*\(.*|NULL|false|0|(\w*err\w*|rc|ret|retval|status))\s*;?\s*$")


def return_value(fl: Flow, line: int) -> str | None:
    """The expression a `return` at `line` returns ('' for a bare return,
    None when no return statement is there)."""
    for n in cparse.walk(fl.fn.node):
        if n.type == "return_statement" and cparse.line_of(n) == line:
            kids = [c for c in n.named_children if c.type != "comment"]
            return cparse.node_text(kids[0]) if kids else ""
    return None


def leaks(fl: Flow | None) -> list[tuple[Held, Exit, int | None]]:
    """(lock, exit, goto line) for every path that leaves the function with a
    lock the function took and releases elsewhere."""
    if fl is None or fl.too_complex or fn_skipped_for_balance(fl):
        return []
    released = fl.released
    out = []
    for ex in fl.exits:
        val = return_value(fl, ex.line)
        if val is not None and val != "" and not _ERRORISH.match(val):
            continue      # success-looking returns may legitimately keep a lock
        for st in ex.states:
            for h in st:
                if h.how == "guard" or h.kind in ("irq", "bh", "preempt"):
                    continue
                if h.key in fl.conditional or h.key in fl.uncertain or h.key not in released:
                    continue
                out.append((h, ex, ex.via.get(st)))
    return out
