"""Kernel helpers and the open-coded shapes they replace.

A table for the duplicated-helper rules: for each helper (kcalloc(),
memdup_user(), FIELD_GET(), min(), ...), the shapes the same job takes
when written out by hand, and what the helper guarded that the open-coded
version may not (an overflow check, NUL termination, a build-time type
check).  A shape is a detector over tree-sitter nodes: given a scope (a
function's node) and the lines the patch added, it returns the added
expressions of that shape.

    for m in find_shape("mul-alloc", fn_node, added_lines):
        m.line, m.text
    HELPERS["kcalloc"].shapes, HELPERS["kcalloc"].guarded
    ADDED_ONLY: shapes reported even when no helper was removed
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

from reviewbot.analysis import cparse


@dataclass(frozen=True)
class Match:
    line: int          # 1-based line of the open-coded expression
    text: str          # its text, on one line
    scope_hint: str = ""   # extra detail for the message (e.g. the mask)


@dataclass(frozen=True)
class Helper:
    name: str
    shapes: tuple[str, ...]   # the open-coded forms of its job
    guarded: str              # what the helper did that the open code may not


@dataclass(frozen=True)
class OpenShape:
    """A shape worth a question even when no helper was removed."""
    shape: str
    helper: str               # what to suggest
    why: str
    confidence: str


def _t(node) -> str:
    return re.sub(r"\s+", " ", cparse.node_text(node)).strip()


def _strip_parens(node):
    while node is not None and node.type == "parenthesized_expression" and node.named_child_count == 1:
        node = node.named_children[0]
    return node


def _op(node) -> str:
    o = node.child_by_field_name("operator")
    return cparse.node_text(o) if o is not None else ""


def _nodes(scope, types: str, added: set[int]):
    """Nodes of TYPES within SCOPE starting on an added line."""
    return [n for n in cparse.query_nodes(scope, types) if cparse.line_of(n) in added]


def _call_name(node) -> str:
    fn = node.child_by_field_name("function")
    return cparse.node_text(fn) if fn is not None else ""


def _args(node) -> list:
    a = node.child_by_field_name("arguments")
    return [c for c in a.named_children if c.type != "comment"] if a is not None else []


_CONST_RE = re.compile(r"^(?:[A-Z][A-Z0-9_]*|\d\w*|0x[0-9a-fA-F]+\w*)$")


def _constant(node) -> bool:
    """A literal, an ALL-CAPS macro or a sizeof: known when compiling."""
    node = _strip_parens(node)
    if node is None:
        return True
    if node.type in ("number_literal", "sizeof_expression", "char_literal", "alignof_expression"):
        return True
    if node.type == "identifier" and _CONST_RE.match(cparse.node_text(node)):
        return True
    if node.type == "binary_expression":
        return _constant(node.child_by_field_name("left")) and _constant(node.child_by_field_name("right"))
    return False


def _runtime_mul(node) -> bool:
    """NODE holds a multiplication with an operand known only at run time."""
    for b in [node] + cparse.query_nodes(node, "binary_expression"):
        if b.type == "binary_expression" and _op(b) == "*":
            left, right = b.child_by_field_name("left"), b.child_by_field_name("right")
            if not (_constant(left) and _constant(right)):
                return True
    return False


def _has_sizeof(node) -> bool:
    return node.type == "sizeof_expression" or bool(cparse.query_nodes(node, "sizeof_expression"))


# -- shapes ------------------------------------------------------------------

ALLOCATORS = frozenset({
    "kmalloc", "kzalloc", "vmalloc", "vzalloc", "kvmalloc", "kvzalloc", "kmalloc_node",
    "kzalloc_node", "kvmalloc_node", "kvzalloc_node", "vmalloc_node", "vzalloc_node",
    "devm_kmalloc", "devm_kzalloc", "sock_kmalloc", "kmalloc_track_caller", "__vmalloc",
})
_SIZE_ARG = {"devm_kmalloc": 1, "devm_kzalloc": 1, "sock_kmalloc": 1}
_SIZE_HELPERS = ("array_size", "array3_size", "struct_size", "size_mul", "size_add", "flex_array_size",
                 "check_mul_overflow", "check_add_overflow", "size_sub")


def _sized_vars(scope, added: set[int]) -> dict[str, object]:
    """Variables the added lines set to a run-time multiplication
    (`mem = n * sizeof(*p);`), by name: the node of the value."""
    out = {}
    for n in _nodes(scope, "assignment_expression init_declarator", added):
        if n.type == "assignment_expression":
            if _op(n) not in ("=", ""):
                continue
            left, right = n.child_by_field_name("left"), n.child_by_field_name("right")
        else:
            left, right = n.child_by_field_name("declarator"), n.child_by_field_name("value")
        if left is None or right is None or left.type != "identifier":
            continue
        if _runtime_mul(right) and not cparse.calls_any(right, _SIZE_HELPERS):
            out[cparse.node_text(left)] = right
    return out


def _alloc_size(call):
    args = _args(call)
    i = _SIZE_ARG.get(_call_name(call), 0)
    return args[i] if len(args) > i else None


def shape_mul_alloc(scope, added):
    """An allocation whose size is a run-time multiplication, written in
    place or through a variable the added lines set (`kmalloc(n *
    sizeof(*p))`, `mem = n * sizeof(x); kzalloc(sizeof(*s) + mem)`)."""
    sized = None
    out = []
    for c in _nodes(scope, "call_expression", added):
        if _call_name(c) not in ALLOCATORS:
            continue
        size = _alloc_size(c)
        if size is None or cparse.calls_any(size, _SIZE_HELPERS):
            continue
        if _runtime_mul(size):
            out.append(Match(cparse.line_of(c), _t(c)))
            continue
        if sized is None:
            sized = _sized_vars(scope, added)
        ids = {cparse.node_text(i) for i in [size] + cparse.query_nodes(size, "identifier")
               if i.type == "identifier"}
        hit = [v for v in ids if v in sized]
        if hit:
            out.append(Match(cparse.line_of(c), _t(c), f"{hit[0]} = {_t(sized[hit[0]])}"))
    return out


def shape_checked_mul_alloc(scope, added):
    """check_mul_overflow(a, b, &size) followed by an allocation of size:
    kcalloc() or array_size() in two steps."""
    out = []
    checked = {}
    for c in _nodes(scope, "call_expression", added):
        if _call_name(c) == "check_mul_overflow" and len(_args(c)) == 3:
            checked[cparse.node_text(_args(c)[2]).lstrip("&").strip()] = c
    if not checked:
        return out
    for c in _nodes(scope, "call_expression", added):
        if _call_name(c) in ALLOCATORS:
            size = _alloc_size(c)
            if size is not None and cparse.node_text(size).strip() in checked:
                out.append(Match(cparse.line_of(c), _t(c)))
    return out


def shape_mul(scope, added):
    """A run-time multiplication that involves a sizeof (a byte count)."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        if _op(b) == "*" and _runtime_mul(b) and _has_sizeof(b):
            par = b.parent
            if par is not None and par.type == "binary_expression" and _op(par) == "*":
                continue
            out.append(Match(cparse.line_of(b), _t(b)))
    return out


def shape_plain_arith(scope, added):
    """A run-time +, - or * (what check_*_overflow() and size_*() guard)."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        if _op(b) in ("*", "+", "-"):
            left, right = b.child_by_field_name("left"), b.child_by_field_name("right")
            if not (_constant(left) and _constant(right)):
                par = b.parent
                if par is not None and par.type == "binary_expression" and _op(par) in ("*", "+", "-"):
                    continue
                out.append(Match(cparse.line_of(b), _t(b)))
    return out


def _calls_named(scope, added, names) -> list:
    text = scope.text or b""
    if not any(n.encode() in text for n in names):
        return []           # none of the names in the scope's text: no call to look at
    return [c for c in _nodes(scope, "call_expression", added) if _call_name(c) in names]


def _pair(scope, added, first, second, link: Callable | None = None):
    """An added call of FIRST and an added call of SECOND after it (LINK(a, b)
    true when given)."""
    a = _calls_named(scope, added, first)
    b = _calls_named(scope, added, second)
    for x in a:
        for y in b:
            if cparse.line_of(y) >= cparse.line_of(x) and (link is None or link(x, y)):
                return [Match(cparse.line_of(x), _t(x))]
    return []


def _assigned_to(call) -> str:
    """The variable a call's result is stored in (`p = f()`, `T *p = f()`)."""
    par = call.parent
    while par is not None and par.type in ("parenthesized_expression", "cast_expression"):
        par = par.parent
    if par is None:
        return ""
    if par.type == "assignment_expression":
        left = par.child_by_field_name("left")
        return cparse.node_text(left).strip() if left is not None else ""
    if par.type == "init_declarator":
        d = par.child_by_field_name("declarator")
        while d is not None and d.type == "pointer_declarator":
            d = d.child_by_field_name("declarator")
        return cparse.node_text(d).strip() if d is not None else ""
    return ""


def _uses(var: str, node) -> bool:
    return bool(var) and re.search(rf"(?<![\w.>]){re.escape(var)}(?!\w)", cparse.node_text(node)) is not None


def shape_alloc_copy_from_user(scope, added):
    return _pair(scope, added, ALLOCATORS, {"copy_from_user", "__copy_from_user"},
                 lambda a, c: len(_args(c)) > 0 and _uses(_assigned_to(a), _args(c)[0]))


def shape_alloc_memcpy(scope, added):
    return _pair(scope, added, ALLOCATORS, {"memcpy"},
                 lambda a, c: len(_args(c)) > 0 and _assigned_to(a)
                 and cparse.node_text(_args(c)[0]).strip() == _assigned_to(a))


def shape_alloc_strcpy(scope, added):
    return _pair(scope, added, ALLOCATORS, {"strcpy", "memcpy", "strscpy", "strlcpy", "strncpy"},
                 lambda a, c: _alloc_size(a) is not None and "strlen" in cparse.node_text(_alloc_size(a))
                 and len(_args(c)) > 0 and cparse.node_text(_args(c)[0]).strip() == _assigned_to(a))


def shape_mask_shift(scope, added):
    """(x & MASK) >> SHIFT, (x >> SHIFT) & MASK, (v << SHIFT) & MASK."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        op = _op(b)
        left = _strip_parens(b.child_by_field_name("left"))
        right = _strip_parens(b.child_by_field_name("right"))
        if left is None or right is None:
            continue
        if op in (">>", "<<") and left.type == "binary_expression" and _op(left) == "&":
            if _constant(right) and (_constant(left.child_by_field_name("right"))
                                     or _constant(left.child_by_field_name("left"))):
                out.append(Match(cparse.line_of(b), _t(b)))
        elif op == "&" and left.type == "binary_expression" and _op(left) in (">>", "<<"):
            if _constant(right) and _constant(left.child_by_field_name("right")) \
                    and right.type == "identifier":
                out.append(Match(cparse.line_of(b), _t(b)))
    return out


def shape_ternary_minmax(scope, added):
    """a < b ? a : b and its kin."""
    out = []
    for n in _nodes(scope, "conditional_expression", added):
        cond = _strip_parens(n.child_by_field_name("condition"))
        cons, alt = n.child_by_field_name("consequence"), n.child_by_field_name("alternative")
        if cond is None or cons is None or alt is None or cond.type != "binary_expression":
            continue
        if _op(cond) not in ("<", ">", "<=", ">="):
            continue
        sides = {_t(_strip_parens(cond.child_by_field_name("left"))),
                 _t(_strip_parens(cond.child_by_field_name("right")))}
        if {_t(_strip_parens(cons)), _t(_strip_parens(alt))} == sides and len(sides) == 2:
            out.append(Match(cparse.line_of(n), _t(n)))
    return out


_MIN = {"min", "min_t", "umin"}
_MAX = {"max", "max_t", "umax"}


def shape_nested_minmax(scope, added):
    """min(hi, max(lo, v)) or max(lo, min(hi, v)): a clamp."""
    out = []
    for c in _nodes(scope, "call_expression", added):
        outer = _call_name(c)
        inner_names = _MAX if outer in _MIN else _MIN if outer in _MAX else None
        if inner_names is None:
            continue
        for a in _args(c):
            a = _strip_parens(a)
            if a is not None and a.type == "call_expression" and _call_name(a) in inner_names:
                out.append(Match(cparse.line_of(c), _t(c)))
                break
    return out


def shape_sizeof_div(scope, added):
    """sizeof(a) / sizeof(a[0]) or sizeof(a) / sizeof(*a)."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        if _op(b) != "/":
            continue
        left, right = _strip_parens(b.child_by_field_name("left")), _strip_parens(b.child_by_field_name("right"))
        if left is None or right is None or left.type != "sizeof_expression" or right.type != "sizeof_expression":
            continue
        arr = re.sub(r"^sizeof\s*\(?|\)?$", "", _t(left)).strip()
        elem = re.sub(r"^sizeof\s*\(?|\)?$", "", _t(right)).strip()
        if arr and elem in (f"{arr}[0]", f"*{arr}", f"*({arr})", f"({arr})[0]"):
            out.append(Match(cparse.line_of(b), _t(b)))
    return out


def shape_div_round_up(scope, added):
    """(a + b - 1) / b."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        if _op(b) != "/":
            continue
        num = _strip_parens(b.child_by_field_name("left"))
        den = _t(_strip_parens(b.child_by_field_name("right")))
        if num is None or num.type != "binary_expression":
            continue
        t = _t(num).replace(" ", "")
        d = den.replace(" ", "")
        if d and not d.isdigit() and (t.endswith(f"+{d}-1") or t.endswith(f"+({d}-1)")
                                      or t.endswith(f"+{d}-1)")):
            out.append(Match(cparse.line_of(b), _t(b)))
    return out


def shape_one_shift(scope, added):
    """1 << n, 1UL << n, ((1 << n) - 1)."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        left = _strip_parens(b.child_by_field_name("left"))
        if _op(b) == "<<" and left is not None and re.match(r"^1[uUlL]*$", _t(left)):
            out.append(Match(cparse.line_of(b), _t(b)))
    return out


def shape_swap(scope, added):
    """tmp = a; a = b; b = tmp;"""
    out = []
    assigns = [n for n in _nodes(scope, "assignment_expression", added) if _op(n) == "="]
    pairs = [(_t(n.child_by_field_name("left")), _t(n.child_by_field_name("right")), n) for n in assigns]
    for i in range(len(pairs) - 2):
        (t1, a1, n1), (t2, a2, _), (t3, a3, _) = pairs[i:i + 3]
        if a1 == t2 and a2 == t3 and a3 == t1:
            out.append(Match(cparse.line_of(n1), f"{t1} = {a1}; {t2} = {a2}; {t3} = {a3};"))
    return out


def _with_arg(scope, added, names, pattern: str):
    rx = re.compile(pattern)
    return [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, names)
            if rx.search(cparse.node_text(c))]


def shape_eth_memcpy(scope, added):
    return _with_arg(scope, added, {"memcpy"}, r"ETH_ALEN")


def shape_eth_memset(scope, added):
    return _with_arg(scope, added, {"memset"}, r",\s*0\s*,\s*ETH_ALEN")


def shape_eth_memcmp(scope, added):
    return _with_arg(scope, added, {"memcmp"}, r"ETH_ALEN")


def shape_skb_put_memcpy(scope, added):
    out = [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, {"memcpy"})
           if _args(c) and _strip_parens(_args(c)[0]).type == "call_expression"
           and _call_name(_strip_parens(_args(c)[0])) in ("skb_put", "__skb_put")]
    return out or _pair(scope, added, {"skb_put", "__skb_put"}, {"memcpy"},
                        lambda p, c: _args(c) and cparse.node_text(_args(c)[0]).strip() == _assigned_to(p))


def shape_clear_then_free(scope, added):
    out = []
    for c in _calls_named(scope, added, {"memset", "memzero_explicit"}):
        if not _args(c):
            continue
        buf = cparse.node_text(_args(c)[0]).strip()
        for f in _calls_named(scope, added, {"kfree", "kvfree", "vfree"}):
            if 0 <= cparse.line_of(f) - cparse.line_of(c) <= 3 and _args(f) \
                    and cparse.node_text(_args(f)[0]).strip() == buf:
                out.append(Match(cparse.line_of(c), _t(c)))
    return out


def shape_of_match_data(scope, added):
    out = []
    for n in _nodes(scope, "field_expression", added):
        arg = _strip_parens(n.child_by_field_name("argument"))
        fld = n.child_by_field_name("field")
        if fld is None or cparse.node_text(fld) != "data":
            continue
        if arg is not None and arg.type == "call_expression" and _call_name(arg) in (
                "of_match_device", "of_match_node", "acpi_match_device"):
            out.append(Match(cparse.line_of(n), _t(n)))
    return out or _match_var_data(scope, added)


def _match_var_data(scope, added):
    out = []
    for c in _calls_named(scope, added, {"of_match_device", "of_match_node"}):
        var = _assigned_to(c)
        if not var:
            continue
        for n in _nodes(scope, "field_expression", added):
            if _t(n).replace(" ", "") == f"{var}->data":
                out.append(Match(cparse.line_of(c), _t(c)))
                return out
    return out


def shape_dma_two_masks(scope, added):
    return _pair(scope, added, {"dma_set_mask"}, {"dma_set_coherent_mask"},
                 lambda a, b: _args(a)[1:] and _args(b)[1:]
                 and _t(_args(a)[-1]) == _t(_args(b)[-1]))


def shape_bitmap_alloc(scope, added):
    return [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, ALLOCATORS | {"kcalloc",
                                                                                           "kmalloc_array"})
            if "BITS_TO_LONGS" in cparse.node_text(c)]


def shape_sprintf_buf(scope, added):
    return [Match(cparse.line_of(c), _t(c))
            for c in _calls_named(scope, added, {"sprintf", "snprintf", "scnprintf"})
            if _args(c) and re.match(r"^\(?\s*buf\b", cparse.node_text(_args(c)[0]))]


def shape_string_copy(scope, added):
    return [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, {"strncpy", "strcpy", "strlcpy"})]


def shape_platform_ioremap(scope, added):
    return _pair(scope, added, {"platform_get_resource", "platform_get_resource_byname"},
                 {"devm_ioremap_resource", "devm_ioremap"})


def shape_list_first_entry(scope, added):
    return [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, {"list_first_entry"})]


def shape_dev_err(scope, added):
    return [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, {"dev_err"})]


def shape_irq_find_mapping(scope, added):
    out = []
    for c in _calls_named(scope, added, {"generic_handle_irq", "generic_handle_irq_safe"}):
        a = _args(c)
        if a and _strip_parens(a[0]).type == "call_expression" \
                and _call_name(_strip_parens(a[0])) == "irq_find_mapping":
            out.append(Match(cparse.line_of(c), _t(c)))
    return out or _pair(scope, added, {"irq_find_mapping"}, {"generic_handle_irq", "generic_handle_irq_safe"},
                        lambda m, h: _args(h) and _t(_args(h)[0]) == _assigned_to(m))


def shape_byte_assembly(scope, added):
    """(b[i] << 8) | b[i + 1] and the like: an unaligned big- or
    little-endian load written byte by byte."""
    out = []
    seen = set()
    for b in _nodes(scope, "binary_expression", added):
        if _op(b) not in ("|", "+") or id(b) in seen:
            continue
        par = b.parent
        while par is not None and par.type == "parenthesized_expression":
            par = par.parent
        if par is not None and par.type == "binary_expression" and _op(par) in ("|", "+"):
            continue            # only the outermost
        terms = []
        _or_terms(b, terms)
        parts = []
        for term in terms:
            term = _strip_parens(term)
            shift = 0
            if term is not None and term.type == "binary_expression" and _op(term) == "<<":
                s = _t(term.child_by_field_name("right"))
                if not s.isdigit():
                    parts = []
                    break
                shift = int(s)
                term = _strip_parens(term.child_by_field_name("left"))
            while term is not None and term.type == "cast_expression":
                term = _strip_parens(term.child_by_field_name("value"))
            if term is None or term.type != "subscript_expression":
                parts = []
                break
            arr = _t(term.child_by_field_name("argument"))
            idx = _t(term.child_by_field_name("index")) if term.child_by_field_name("index") else ""
            parts.append((arr, idx, shift))
        if len(parts) < 2 or len({p[0] for p in parts}) != 1:
            continue
        shifts = sorted(p[2] for p in parts)
        if shifts != [8 * k for k in range(len(parts))]:
            continue
        idx = [_index_value(p[1]) for p in sorted(parts, key=lambda p: p[2])]
        if None in idx or len({i[0] for i in idx}) != 1:
            continue
        step = [idx[k + 1][1] - idx[k][1] for k in range(len(idx) - 1)]
        if all(s == -1 for s in step) or all(s == 1 for s in step):
            end = "be" if step[0] == -1 else "le"
            out.append(Match(cparse.line_of(b), _t(b), f"{end}{8 * len(parts)}"))
    return out


def _or_terms(node, out):
    node = _strip_parens(node)
    if node is not None and node.type == "binary_expression" and _op(node) in ("|", "+"):
        _or_terms(node.child_by_field_name("left"), out)
        _or_terms(node.child_by_field_name("right"), out)
    else:
        out.append(node)


def _index_value(idx: str) -> tuple[str, int] | None:
    """An index as (base name, offset): `3` is ("", 3), `i + 1` is ("i", 1)."""
    s = idx.replace(" ", "")
    if s.isdigit():
        return "", int(s)
    m = re.match(r"^([A-Za-z_]\w*)(?:\+(\d+))?$", s)
    if m:
        return m.group(1), int(m.group(2) or 0)
    return None


def shape_compatible_strcmp(scope, added):
    return _pair(scope, added, {"fwnode_property_read_string", "of_property_read_string",
                                "device_property_read_string"}, {"strcmp", "strncmp"},
                 lambda r, c: len(_args(r)) > 1 and _t(_args(r)[1]) == '"compatible"')


def shape_dup_control_msg(scope, added):
    return _pair(scope, added, {"kmemdup"}, {"usb_control_msg"},
                 lambda a, c: _assigned_to(a) and any(_t(x) == _assigned_to(a) for x in _args(c)))


_NONZEROING = frozenset({"kmalloc", "kmalloc_array", "vmalloc", "kvmalloc", "kmalloc_node", "kvmalloc_node",
                         "kvmalloc_array", "devm_kmalloc", "devm_kmalloc_array", "kmalloc_array_node",
                         "vmalloc_node", "__vmalloc", "kmem_cache_alloc", "kmem_cache_alloc_node"})


def shape_alloc_then_clear(scope, added):
    """A non-zeroing allocation, then memset(p, 0, ...) or a loop setting
    p[i] to NULL or 0."""
    out = []
    for a in _calls_named(scope, added, _NONZEROING):
        var = _assigned_to(a)
        if not var:
            continue
        for c in _calls_named(scope, added, {"memset"}):
            args = _args(c)
            if len(args) == 3 and _t(args[0]) == var and _t(args[1]) == "0" \
                    and cparse.line_of(c) >= cparse.line_of(a):
                return [Match(cparse.line_of(a), _t(a))]
        for n in _nodes(scope, "assignment_expression", added):
            left, right = n.child_by_field_name("left"), n.child_by_field_name("right")
            if left is not None and left.type == "subscript_expression" and right is not None \
                    and _t(left.child_by_field_name("argument")) == var and _t(right) in ("NULL", "0") \
                    and cparse.line_of(n) > cparse.line_of(a):
                return [Match(cparse.line_of(a), _t(a))]
    return out


def shape_bitmap_sized_alloc(scope, added):
    """An allocation sized in longs by hand (BITS_TO_LONGS(), BITS_PER_LONG,
    sizeof(long)), directly or through a variable the added lines set."""
    rx = re.compile(r"BITS_TO_LONGS|BITS_PER_LONG|sizeof\s*\(\s*(?:unsigned\s+)?long\s*\)")
    sets = {}
    for n in _nodes(scope, "assignment_expression init_declarator", added):
        left = n.child_by_field_name("left") or n.child_by_field_name("declarator")
        right = n.child_by_field_name("right") or n.child_by_field_name("value")
        if left is not None and right is not None and left.type == "identifier":
            sets[cparse.node_text(left)] = cparse.node_text(right)
    out = []
    for c in _calls_named(scope, added, ALLOCATORS | {"kcalloc", "kmalloc_array", "devm_kcalloc",
                                                      "kvcalloc", "kvmalloc_array"}):
        text = cparse.node_text(c)
        text += " ".join(v for k, v in sets.items() if re.search(rf"\b{re.escape(k)}\b", text))
        if rx.search(text):
            out.append(Match(cparse.line_of(c), _t(c)))
    return out


def shape_list_del_add(scope, added):
    """list_del(x) then list_add(x, ...) or list_add_tail(x, ...)."""
    dels = _calls_named(scope, added, {"list_del", "list_del_init", "__list_del_entry", "hlist_del"})
    adds = _calls_named(scope, added, {"list_add", "list_add_tail", "hlist_add_head"})
    out = []
    for d in dels:
        for a in adds:
            if _args(d) and _args(a) and _t(_args(d)[0]) == _t(_args(a)[0]) \
                    and a.start_byte > d.start_byte and cparse.line_of(a) - cparse.line_of(d) <= 3:
                out.append(Match(cparse.line_of(d), f"{_t(d)}; {_t(a)}"))
                break
    return out


def shape_atomic_op_then_read(scope, added):
    """atomic_inc(&v) followed by atomic_read(&v): two operations where one
    atomic *_return() does both."""
    rx = re.compile(r"^(atomic(?:64|_long)?)_(inc|dec|add|sub)$")
    out = []
    ops = [c for c in _nodes(scope, "call_expression", added) if rx.match(_call_name(c))]
    reads = _calls_named(scope, added, {"atomic_read", "atomic64_read", "atomic_long_read"})
    for o in ops:
        for r in reads:
            if _args(o) and _args(r) and _t(_args(o)[-1]) == _t(_args(r)[0]) \
                    and 0 <= cparse.line_of(r) - cparse.line_of(o) <= 5:
                out.append(Match(cparse.line_of(o), f"{_t(o)}; {_t(r)}"))
                break
    return out


def shape_frag_address(scope, added):
    """page_address(skb_frag_page(f)) + skb_frag_off(f)."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        t = _t(b).replace(" ", "")
        if _op(b) == "+" and "page_address(skb_frag_page(" in t and "skb_frag_off(" in t:
            out.append(Match(cparse.line_of(b), _t(b)))
    return out


def shape_skb_put_memset(scope, added):
    out = [Match(cparse.line_of(c), _t(c)) for c in _calls_named(scope, added, {"memset"})
           if len(_args(c)) == 3 and _strip_parens(_args(c)[0]).type == "call_expression"
           and _call_name(_strip_parens(_args(c)[0])) in ("skb_put", "__skb_put") and _t(_args(c)[1]) == "0"]
    return out or _pair(scope, added, {"skb_put", "__skb_put"}, {"memset"},
                        lambda p, c: len(_args(c)) == 3 and _t(_args(c)[0]) == _assigned_to(p)
                        and _t(_args(c)[1]) == "0")


def shape_find_bit_compare(scope, added):
    """find_first_bit(map, n) >= n and the like: the index is thrown away,
    only emptiness asked."""
    out = []
    for b in _nodes(scope, "binary_expression", added):
        if _op(b) not in (">=", "==", "<", "!=", ">"):
            continue
        for side in (b.child_by_field_name("left"), b.child_by_field_name("right")):
            side = _strip_parens(side)
            if side is not None and side.type == "call_expression" and _call_name(side) in (
                    "find_first_bit", "find_first_zero_bit", "find_next_bit", "find_next_zero_bit"):
                out.append(Match(cparse.line_of(b), _t(b)))
                break
    return out


def shape_find_bit_loop(scope, added):
    """for (i = find_first_bit(...); i < n; i = find_next_bit(..., i + 1))."""
    out = []
    for f in _nodes(scope, "for_statement", added):
        init, upd = f.child_by_field_name("initializer"), f.child_by_field_name("update")
        if init is None or upd is None:
            continue
        it, ut = cparse.node_text(init), cparse.node_text(upd)
        if re.search(r"find_first(?:_zero)?_bit\s*\(", it) and re.search(r"find_next(?:_zero)?_bit\s*\(", ut):
            out.append(Match(cparse.line_of(f), re.sub(r"\s+", " ", cparse.node_text(f).split("{")[0]).strip()))
    return out


_ITER = {"list_for_each": "list_entry", "hlist_for_each": "hlist_entry",
         "list_for_each_safe": "list_entry", "hlist_for_each_safe": "hlist_entry",
         "list_for_each_prev": "list_entry", "list_for_each_rcu": "list_entry_rcu"}


def shape_iter_then_entry(scope, added):
    """list_for_each(pos, head) whose body starts by x = list_entry(pos, ...)."""
    out = []
    for c in _nodes(scope, "call_expression", added):
        entry = _ITER.get(_call_name(c))
        if entry is None or not _args(c):
            continue
        pos = _t(_args(c)[0])
        for e in _calls_named(scope, added, {entry, "container_of", "list_entry"}):
            if _args(e) and _t(_args(e)[0]) == pos and 0 < cparse.line_of(e) - cparse.line_of(c) <= 3:
                out.append(Match(cparse.line_of(c), _t(c)))
                break
    return out


def shape_frag_then_lengths(scope, added):
    """skb_fill_page_desc() and then skb->len/data_len/truesize += by hand."""
    fills = _calls_named(scope, added, {"skb_fill_page_desc", "__skb_fill_page_desc"})
    if not fills:
        return []
    for n in _nodes(scope, "assignment_expression", added):
        if _op(n) == "+=" and re.search(r"->\s*(?:data_len|truesize)$", _t(n.child_by_field_name("left"))):
            return [Match(cparse.line_of(fills[0]), _t(fills[0]))]
    return []


SHAPES: dict[str, Callable] = {
    "mul-alloc": shape_mul_alloc,
    "checked-mul-alloc": shape_checked_mul_alloc,
    "mul": shape_mul,
    "plain-arith": shape_plain_arith,
    "alloc+copy_from_user": shape_alloc_copy_from_user,
    "alloc+memcpy": shape_alloc_memcpy,
    "alloc+strcpy": shape_alloc_strcpy,
    "mask-shift": shape_mask_shift,
    "ternary-minmax": shape_ternary_minmax,
    "nested-minmax": shape_nested_minmax,
    "sizeof-div": shape_sizeof_div,
    "div-round-up": shape_div_round_up,
    "one-shift": shape_one_shift,
    "swap": shape_swap,
    "eth-memcpy": shape_eth_memcpy,
    "eth-memset": shape_eth_memset,
    "eth-memcmp": shape_eth_memcmp,
    "skb_put+memcpy": shape_skb_put_memcpy,
    "clear-then-free": shape_clear_then_free,
    "of_match->data": shape_of_match_data,
    "dma-two-masks": shape_dma_two_masks,
    "bitmap-alloc": shape_bitmap_alloc,
    "sprintf-buf": shape_sprintf_buf,
    "string-copy": shape_string_copy,
    "platform-ioremap": shape_platform_ioremap,
    "list_first_entry": shape_list_first_entry,
    "dev_err": shape_dev_err,
    "irq_find_mapping": shape_irq_find_mapping,
    "byte-assembly": shape_byte_assembly,
    "compatible-strcmp": shape_compatible_strcmp,
    "dup+control_msg": shape_dup_control_msg,
    "alloc-then-clear": shape_alloc_then_clear,
    "bitmap-sized-alloc": shape_bitmap_sized_alloc,
    "list_del+add": shape_list_del_add,
    "atomic-op-then-read": shape_atomic_op_then_read,
    "frag-address": shape_frag_address,
    "skb_put+memset": shape_skb_put_memset,
    "find-bit-compare": shape_find_bit_compare,
    "find-bit-loop": shape_find_bit_loop,
    "iter-then-entry": shape_iter_then_entry,
    "frag-then-lengths": shape_frag_then_lengths,
}


# text a scope must hold for a shape to be there at all (each group: one of
# its strings), so that a big file's functions are not walked for nothing
_GATES: dict[str, tuple[tuple[bytes, ...], ...]] = {
    "nested-minmax": ((b"min",), (b"max",)), "ternary-minmax": ((b"?",),),
    "irq_find_mapping": ((b"irq_find_mapping",),), "byte-assembly": ((b"<<",),),
    "compatible-strcmp": ((b"compatible",),), "dup+control_msg": ((b"usb_control_msg",),),
    "checked-mul-alloc": ((b"overflow",),), "sizeof-div": ((b"sizeof",), (b"/",)),
    "frag-address": ((b"frag",),), "find-bit-loop": ((b"find_",),), "atomic-op-then-read": ((b"atomic",),),
    "skb_put+memcpy": ((b"skb_put",),), "dma-two-masks": ((b"dma_set",),),
    "mul-alloc": ((b"alloc",), (b"*",)),        # every name in ALLOCATORS holds "alloc"
    "mask-shift": ((b">>", b"<<"),), "div-round-up": ((b"/",),), "one-shift": ((b"<<",),),
    "swap": ((b"=",),),
}


def find_shape(shape: str, scope, added: set[int], text: bytes | None = None) -> list[Match]:
    """The added expressions of SHAPE within SCOPE (a tree-sitter node;
    TEXT, its text when the caller has it already)."""
    gate = _GATES.get(shape)
    if gate:
        if text is None:
            text = scope.text or b""
        if not all(any(s in text for s in group) for group in gate):
            return []
    return SHAPES[shape](scope, added)


_OVF = ("checked n * size for overflow (and returned NULL when it wrapped); "
        "the open-coded multiplication does not")


def _h(names: Iterable[str], shapes: tuple[str, ...], guarded: str) -> dict[str, Helper]:
    return {n: Helper(n, shapes, guarded) for n in names}


HELPERS: dict[str, Helper] = {}
HELPERS.update(_h(("kzalloc", "kvzalloc", "vzalloc", "devm_kzalloc", "kzalloc_node", "kvzalloc_node",
                   "kmem_cache_zalloc"), ("alloc-then-clear",),
                  "returned zeroed memory; clearing it by hand after the allocation is one more "
                  "thing to keep right (the size, every path)"))
HELPERS.update(_h(("kcalloc", "kmalloc_array", "kvcalloc", "kvmalloc_array", "devm_kcalloc",
                   "devm_kmalloc_array", "kcalloc_node", "kmalloc_array_node", "vcalloc",
                   "vmalloc_array", "kvmalloc_array_node"),
                  ("mul-alloc", "alloc-then-clear"), _OVF + " (kcalloc() also returned zeroed memory)"))
HELPERS.update(_h(("array_size", "array3_size", "size_mul", "flex_array_size"),
                  ("mul-alloc", "mul"),
                  "saturated the multiplication at SIZE_MAX on overflow, so the allocation or "
                  "copy fails instead of being too small; the open-coded multiplication wraps"))
HELPERS.update(_h(("struct_size", "struct_size_t"), ("mul-alloc", "mul"),
                  "computed sizeof(*p) + n * sizeof(p->member[0]) with saturation on overflow, so "
                  "an allocation of that size fails instead of being too small; the open-coded "
                  "sum and product wrap"))
HELPERS.update(_h(("check_mul_overflow", "check_add_overflow", "check_sub_overflow", "size_add",
                   "size_sub"), ("plain-arith",),
                  "reported (or saturated) an arithmetic overflow; the plain operation wraps silently"))
HELPERS.update(_h(("memdup_user", "memdup_user_nul", "vmemdup_user", "strndup_user"),
                  ("alloc+copy_from_user",),
                  "allocated with GFP_USER | __GFP_NOWARN (a user-chosen size may not warn), "
                  "freed the buffer when the copy faulted and returned an ERR_PTR(); the "
                  "open-coded allocation and copy must do all of that by hand"))
HELPERS.update(_h(("kmemdup", "kmemdup_nul", "kvmemdup"), ("alloc+memcpy",),
                  "is the allocation and the copy in one call, with the size given once"))
HELPERS.update(_h(("kstrdup", "kstrndup", "devm_kstrdup", "kstrdup_const"), ("alloc+strcpy",),
                  "sized the copy from the string (terminator included) in one place"))
HELPERS.update(_h(("FIELD_GET", "FIELD_PREP", "FIELD_MODIFY", "u8_get_bits", "u16_get_bits",
                   "u32_get_bits", "u64_get_bits", "le16_get_bits", "le32_get_bits",
                   "u32_encode_bits", "u16_encode_bits", "u8_encode_bits", "le32_encode_bits"),
                  ("mask-shift",),
                  "derived the shift from the mask (and checks at build time that a constant "
                  "fits it); a hand-written shift can disagree with the mask"))
HELPERS.update(_h(("min", "max", "min_t", "max_t", "umin", "umax", "min3", "max3", "min_not_zero"),
                  ("ternary-minmax",),
                  "checked at build time that both sides have the same type (min_t() casts them "
                  "both) and evaluated each argument once; the ternary compares mixed "
                  "signedness silently"))
HELPERS.update(_h(("clamp", "clamp_t", "clamp_val"), ("nested-minmax", "ternary-minmax"),
                  "kept the value between both bounds with one type check (and a build-time "
                  "check that lo <= hi)"))
HELPERS.update(_h(("strscpy", "strscpy_pad"), ("string-copy",),
                  "always NUL-terminated the destination and never read past the source; "
                  "strncpy() leaves it unterminated when the source fills it, strcpy() has "
                  "no bound and strlcpy() reads the whole source"))
HELPERS.update(_h(("sysfs_emit", "sysfs_emit_at"), ("sprintf-buf",),
                  "checked that buf is the PAGE_SIZE sysfs buffer and bounded the output to it"))
HELPERS.update(_h(("devm_platform_ioremap_resource", "devm_platform_ioremap_resource_byname",
                   "devm_platform_get_and_ioremap_resource"), ("platform-ioremap",),
                  "is platform_get_resource() and devm_ioremap_resource() in one call, with the "
                  "missing-resource case handled"))
HELPERS.update(_h(("list_first_entry_or_null",), ("list_first_entry",),
                  "returned NULL for an empty list; list_first_entry() on an empty list gives a "
                  "pointer computed from the list head itself"))
HELPERS.update(_h(("dev_err_probe",), ("dev_err",),
                  "stayed quiet for -EPROBE_DEFER and recorded the deferral reason for "
                  "devices_deferred"))
HELPERS.update(_h(("ARRAY_SIZE",), ("sizeof-div",),
                  "refused to build when handed a pointer instead of an array"))
HELPERS.update(_h(("DIV_ROUND_UP", "DIV_ROUND_UP_ULL", "round_up"), ("div-round-up",),
                  "named the rounding and evaluated the divisor once"))
HELPERS.update(_h(("BIT", "BIT_ULL", "GENMASK", "GENMASK_ULL"), ("one-shift",),
                  "shifted an unsigned long (1 << 31 on an int is undefined) and, for "
                  "GENMASK(), checked the bounds at build time"))
HELPERS.update(_h(("list_move", "list_move_tail", "hlist_move_list"), ("list_del+add",),
                  "moved the entry in one call (with the list debugging checks of both halves)"))
HELPERS.update(_h(("atomic_inc_return", "atomic_dec_return", "atomic_add_return", "atomic_sub_return",
                   "atomic64_inc_return", "atomic64_dec_return", "atomic64_add_return",
                   "atomic_long_inc_return", "atomic_long_add_return"), ("atomic-op-then-read",),
                  "changed the counter and returned the new value in one atomic operation; "
                  "an atomic_read() after the change can see another CPU's update as well"))
HELPERS.update(_h(("skb_frag_address", "skb_frag_address_safe"), ("frag-address",),
                  "is page_address(skb_frag_page(f)) + skb_frag_off(f) in one place"))
HELPERS.update(_h(("bitmap_empty", "bitmap_full"), ("find-bit-compare",),
                  "asked only whether a bit is set, and is optimised for small constant sizes"))
HELPERS.update(_h(("for_each_set_bit", "for_each_clear_bit", "for_each_set_bit_from",
                   "for_each_clear_bit_from"), ("find-bit-loop",),
                  "is the find_first/find_next loop written once"))
HELPERS.update(_h(("list_for_each_entry", "hlist_for_each_entry", "list_for_each_entry_safe",
                   "hlist_for_each_entry_safe", "list_for_each_entry_reverse", "list_for_each_entry_rcu"),
                  ("iter-then-entry",),
                  "gave the entry itself as the cursor; the open-coded walk leaves the entry "
                  "variable holding the last element (not NULL) when the walk ends"))
HELPERS.update(_h(("skb_add_rx_frag", "skb_add_rx_frag_netmem"), ("frag-then-lengths",),
                  "added the fragment and updated skb->len, data_len and truesize together"))
HELPERS.update(_h(("swap",), ("swap",), "swapped the two values with the right type"))
HELPERS.update(_h(("ether_addr_copy",), ("eth-memcpy",), "copied the six bytes as 16-bit words"))
HELPERS.update(_h(("eth_zero_addr", "eth_broadcast_addr"), ("eth-memset",), "said what the bytes are"))
HELPERS.update(_h(("ether_addr_equal", "ether_addr_equal_unaligned", "is_zero_ether_addr"),
                  ("eth-memcmp",), "compared the address as words"))
HELPERS.update(_h(("skb_put_data", "__skb_put_data"), ("skb_put+memcpy",),
                  "is skb_put() and the copy in one call"))
HELPERS.update(_h(("skb_put_zero", "__skb_put_zero"), ("skb_put+memset",),
                  "is skb_put() and the clearing in one call"))
HELPERS.update(_h(("kfree_sensitive", "kvfree_sensitive"), ("clear-then-free",),
                  "cleared the whole allocation with memzero_explicit(), which the compiler "
                  "cannot drop; a memset() right before kfree() may be optimised away"))
HELPERS.update(_h(("of_device_get_match_data", "device_get_match_data"), ("of_match->data",),
                  "handled a device without a match (NULL) and works for ACPI too"))
HELPERS.update(_h(("dma_set_mask_and_coherent",), ("dma-two-masks",),
                  "set both masks in one call"))
HELPERS.update(_h(("bitmap_zalloc", "bitmap_alloc", "devm_bitmap_zalloc", "bitmap_zalloc_node"),
                  ("bitmap-alloc", "bitmap-sized-alloc"), "sized the bitmap in longs with an overflow-checked "
                  "kmalloc_array() and pairs with bitmap_free()"))
HELPERS.update(_h(("generic_handle_domain_irq", "generic_handle_domain_irq_safe"),
                  ("irq_find_mapping",),
                  "looked the mapping up and handled it in one call, reporting a missing mapping"))
HELPERS.update(_h(("get_unaligned_be16", "get_unaligned_le16", "get_unaligned_be32",
                   "get_unaligned_le32", "get_unaligned_be24", "get_unaligned_le24",
                   "be16_to_cpup", "le16_to_cpup", "be32_to_cpup", "le32_to_cpup"),
                  ("byte-assembly",), "read the value with the byte order in its name"))
HELPERS.update(_h(("fwnode_device_is_compatible", "of_device_is_compatible", "device_is_compatible"),
                  ("compatible-strcmp",),
                  "matched any entry of a compatible list, not only the first string"))
HELPERS.update(_h(("usb_control_msg_send", "usb_control_msg_recv"), ("dup+control_msg",),
                  "made the DMA-safe copy, checked for a short transfer and freed the copy"))


# Shapes worth a question with no helper removed: the exact compositions
# that a helper names (medium), and the overflow-sensitive or merely
# old-fashioned ones (low).
ADDED_ONLY: tuple[OpenShape, ...] = (
    OpenShape("nested-minmax", "clamp()",
              "clamp() says it, checks both bounds' types and that lo <= hi", "medium"),
    OpenShape("irq_find_mapping", "generic_handle_domain_irq()",
              "it does the lookup and the handling in one call", "medium"),
    OpenShape("byte-assembly", "get_unaligned_{end}()",
              "it reads the value with the byte order in its name", "medium"),
    OpenShape("compatible-strcmp", "fwnode_device_is_compatible() (or of_device_is_compatible())",
              "a compatible property is a list, and the helper matches any entry of it, "
              "not only the first", "medium"),
    OpenShape("dup+control_msg", "usb_control_msg_send() / usb_control_msg_recv()",
              "they make the DMA-safe copy, check for a short transfer and free the copy", "medium"),
    OpenShape("checked-mul-alloc", "kcalloc() (or array_size())",
              "the checked multiplication and the allocation are one call", "medium"),
    OpenShape("sizeof-div", "ARRAY_SIZE()",
              "it refuses to build when handed a pointer instead of an array", "medium"),
    OpenShape("frag-address", "skb_frag_address()",
              "it is the page address plus the fragment offset in one call", "medium"),
    OpenShape("find-bit-loop", "for_each_set_bit() / for_each_clear_bit()",
              "it is the find_first/find_next loop written once", "medium"),
    OpenShape("atomic-op-then-read", "an atomic_*_return()",
              "the change and the read are then one atomic operation; a separate read can "
              "see another CPU's update too", "low"),
    OpenShape("skb_put+memcpy", "skb_put_data()", "it is skb_put() and the copy in one call", "low"),
    OpenShape("dma-two-masks", "dma_set_mask_and_coherent()", "it sets both masks in one call", "low"),
    OpenShape("mul-alloc", "kcalloc()/kmalloc_array() (or array_size()/struct_size())",
              "they check the multiplication for overflow; an allocation sized by a wrapped "
              "product is too small", "low"),
    OpenShape("mask-shift", "FIELD_GET()/FIELD_PREP()",
              "they derive the shift from the mask", "low"),
    OpenShape("div-round-up", "DIV_ROUND_UP()", "it names the rounding", "low"),
)
