"""Helpers shared by the preempt-rt rules (RT002-RT004) and HOT001.

Not a rule: it holds no Rule class.  A linear "what is held here" walk
over one function's calls, local variables, and pre/post function
pairing.
"""
from __future__ import annotations

import bisect
import re
from typing import NamedTuple

from reviewbot.analysis import cparse
from reviewbot.analysis.lazy import LazyPattern
from reviewbot.analysis.rulekit import LOCK_PAIRS

# acquire -> release, with the few irq/preempt pairs rulekit does not list
PAIRS = dict(LOCK_PAIRS)
PAIRS.update({"get_cpu": "put_cpu", "raw_spin_lock_nested": "raw_spin_unlock",
              "spin_lock_irqsave_nested": "spin_unlock_irqrestore",
              "raw_spin_lock_irqsave_nested": "raw_spin_unlock_irqrestore",
              "spin_trylock": "spin_unlock", "raw_spin_trylock": "raw_spin_unlock",
              "preempt_disable_notrace": "preempt_enable_notrace",
              "migrate_disable": "migrate_enable"})
RELEASES = {}
for _a, _r in PAIRS.items():
    RELEASES.setdefault(_r, set()).add(_a)

IRQ_OFF = {"local_irq_save", "local_irq_disable"}
PREEMPT_OFF = {"preempt_disable", "get_cpu", "preempt_disable_notrace"}
RAW_LOCKS = {k for k in PAIRS if k.startswith("raw_spin_lock") or k == "raw_spin_trylock"}
# spinlock_t / rwlock_t acquisitions: sleeping locks on PREEMPT_RT
SLEEPING_SPIN = {k for k in PAIRS if k.startswith(("spin_lock", "read_lock", "write_lock"))} | {
    "spin_trylock", "spin_trylock_bh", "spin_trylock_irqsave"}

PERCPU_RE = LazyPattern(r"\b(?:__)?(?:this_cpu_\w+|raw_cpu_\w+|per_cpu\w*|get_cpu_var|put_cpu_var|"
                       r"get_cpu_ptr|put_cpu_ptr|smp_processor_id|raw_smp_processor_id|"
                       r"get_cpu|\w+_irqoff|local_\w+_inc|local_inc|local_dec|local_add)\b")


def norm(expr: str) -> str:
    """Canonical text of a lock/queue argument: no blanks, no leading '&',
    no outer parentheses."""
    s = re.sub(r"\s+", "", expr or "")
    while s.startswith("&") or (s.startswith("(") and s.endswith(")")):
        s = s[1:] if s.startswith("&") else s[1:-1]
    return s


def release_matches(rel: cparse.Call, acq: cparse.Call) -> bool:
    if acq.name not in RELEASES.get(rel.name, ()):
        return False
    if acq.name in ("preempt_disable", "get_cpu", "local_irq_disable", "preempt_disable_notrace",
                    "rcu_read_lock", "rcu_read_lock_bh", "local_bh_disable", "migrate_disable"):
        return True
    if not acq.args or not rel.args:
        return True
    return norm(acq.args[0]) == norm(rel.args[0]) or (
        acq.name == "local_irq_save" and norm(acq.args[-1]) == norm(rel.args[-1]))


def is_early_exit(call_node) -> bool:
    """True when a release sits in a branch that leaves (return/goto/break)
    right after it: `if (err) { spin_unlock(&l); return -EINVAL; }`."""
    n = call_node.parent
    while n is not None and n.type not in ("compound_statement", "if_statement",
                                           "function_definition"):
        n = n.parent
    if n is None or n.type == "function_definition":
        return False
    if n.type == "if_statement":          # braceless: if (x) unlock(); -- rare
        return False
    par = n.parent
    if par is None or par.type == "function_definition":
        return False
    if par.type not in ("if_statement", "else_clause", "case_statement"):
        return False
    after = False
    for c in n.children:
        if c.start_byte >= call_node.end_byte:
            after = True
        if after and c.type in ("return_statement", "goto_statement", "break_statement",
                                "continue_statement"):
            return True
    return False


class Held(NamedTuple):
    call: cparse.Call

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def arg(self) -> str:
        return norm(self.call.args[0]) if self.call.args else ""


def walk_held(fn_node):
    """Yield (call, held) for every call of a function in source order;
    `held` lists the acquisitions in force before the call (linear walk,
    releases in early-exit branches ignored)."""
    held: list[Held] = []
    for c in sorted(cparse.calls(fn_node), key=lambda c: c.node.start_byte):
        yield c, list(held)
        if c.name in PAIRS or c.name in ("spin_trylock_irqsave",):
            if c.name.endswith("trylock") and c.node.parent is not None and c.node.parent.type != "expression_statement":
                # `if (spin_trylock(&l))`: held inside the branch; treat as held
                pass
            held.append(Held(c))
        elif c.name in RELEASES:
            if is_early_exit(c.node):
                continue
            for i in range(len(held) - 1, -1, -1):
                if release_matches(c, held[i].call):
                    del held[i]
                    break
            else:
                # mixed forms: local_irq_save(f); spin_lock(&l); ... spin_unlock_irqrestore(&l, f)
                arg = norm(c.args[0]) if c.args else None
                flags = norm(c.args[-1]) if len(c.args) > 1 else None
                held[:] = [h for h in held if not (
                    (arg and h.arg == arg and h.name not in IRQ_OFF) or
                    (flags and h.name == "local_irq_save" and h.arg == flags))]


def locals_of(fn_node) -> dict[str, str]:
    """Names declared in the function (parameters included) -> their
    declaration text."""
    out: dict[str, str] = {}
    for n in cparse.walk(fn_node):
        if n.type in ("declaration", "parameter_declaration"):
            text = cparse.node_text(n)
            for d in n.children:
                nm = _decl_ident(d)
                if nm:
                    out[nm] = text
    return out


def params_of(fn_node) -> set[str]:
    out = set()
    decl = fn_node.child_by_field_name("declarator")
    for n in cparse.walk(decl) if decl is not None else []:
        if n.type == "parameter_declaration":
            for d in n.children:
                nm = _decl_ident(d)
                if nm:
                    out.add(nm)
    return out


def _decl_ident(node) -> str:
    while node is not None:
        if node.type == "identifier":
            return cparse.node_text(node)
        if node.type in ("init_declarator", "pointer_declarator", "array_declarator",
                         "parenthesized_declarator"):
            nxt = node.child_by_field_name("declarator")
            if nxt is None:
                nxt = next((c for c in node.children if c.type.endswith("declarator") or c.type == "identifier"), None)
            node = nxt
            continue
        return ""
    return ""


def functions_touched(fv):
    """(post Function, pre Function or None) for functions of the post-image
    holding an added line."""
    added = fv.added_lines
    post = cparse.functions(fv.post_tree)
    pre = {f.name: f for f in cparse.functions(fv.pre_tree)} if fv.pre_text else {}
    ls = sorted(added)
    for f in post:
        if any_in_range(ls, f.start, f.end):
            yield f, pre.get(f.name)


def any_in_range(sorted_lines: list[int], start: int, end: int) -> bool:
    """any(start <= ln <= end for ln in lines), for sorted lines."""
    i = bisect.bisect_left(sorted_lines, start)
    return i < len(sorted_lines) and sorted_lines[i] <= end


def root_ident(node) -> str:
    """The base identifier of an lvalue: `a->b.c[3]` -> `a`."""
    while node is not None:
        if node.type == "identifier":
            return cparse.node_text(node)
        if node.type in ("field_expression",):
            node = node.child_by_field_name("argument")
        elif node.type in ("subscript_expression",):
            node = node.child_by_field_name("argument")
        elif node.type in ("parenthesized_expression", "pointer_expression", "cast_expression"):
            node = node.named_children[-1] if node.named_children else None
        else:
            return ""
    return ""


def derefs(node) -> bool:
    """Does the lvalue go through a pointer (`->`, `*p`, `p[i]` on a pointer)?"""
    return "->" in cparse.node_text(node) or node.type == "pointer_expression"
