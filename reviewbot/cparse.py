"""C structure with tree-sitter-c: functions, calls, preprocessor blocks.

tree-sitter is error tolerant, which kernel code needs (macros such as
list_for_each_entry(...) { } parse as calls or errors, not failures).
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
from collections import OrderedDict
from functools import lru_cache

import tree_sitter
import tree_sitter_c

_LANG = tree_sitter.Language(tree_sitter_c.language())


@lru_cache(maxsize=1)
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(_LANG)


_PARSED: "OrderedDict[str, tree_sitter.Tree]" = OrderedDict()
_PARSE_CACHE = 32


def parse(text: str) -> tree_sitter.Tree:
    """Parse C text.  The same text gives the same Tree object (a series
    shows each file's post-image of one patch again as the pre-image of the
    next), so the per-tree memos below are shared too."""
    key = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=16).hexdigest()
    tree = _PARSED.get(key)
    if tree is not None:
        _PARSED.move_to_end(key)
        return tree
    tree = _parser().parse(text.encode("utf-8", errors="replace"))
    _PARSED[key] = tree
    if len(_PARSED) > _PARSE_CACHE:
        _PARSED.popitem(last=False)
    return tree


def node_text(node: tree_sitter.Node) -> str:
    return node.text.decode("utf-8", errors="replace") if node.text is not None else ""


def line_of(node: tree_sitter.Node) -> int:
    """1-based first line of a node."""
    return node.start_point[0] + 1


def end_line_of(node: tree_sitter.Node) -> int:
    return node.end_point[0] + 1


_MEMO: "OrderedDict[int, dict]" = OrderedDict()
_MEMO_SIZE = 48


def _memo(node: tree_sitter.Node) -> dict:
    """Per-tree memo (keyed by the root node, which it keeps alive so that
    the id cannot be reused while cached)."""
    root = node
    while True:
        parent = root.parent
        if parent is None:
            break
        root = parent
    m = _MEMO.get(root.id)
    if m is None or m["root"] != root:
        m = {"root": root}
        _MEMO[root.id] = m
        if len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    else:
        _MEMO.move_to_end(root.id)
    return m


def _preorder(node: tree_sitter.Node) -> tuple[list, dict]:
    m = _memo(node)
    if "pre" not in m:
        pre = []
        stack = [m["root"]]
        while stack:
            n = stack.pop()
            pre.append(n)
            stack.extend(reversed(n.children))
        m["pre"] = pre
        m["index"] = {n.id: i for i, n in enumerate(pre)}
    return m["pre"], m["index"]


def walk(node: tree_sitter.Node):
    """Pre-order walk of node and its descendants.  The first walk of a
    tree is remembered, so the many rules walking one file pay once."""
    pre, index = _preorder(node)
    i = index.get(node.id)
    if i is None or pre[i] != node:
        # not from a memoised tree (should not happen): walk directly
        stack = [node]
        out = []
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(reversed(n.children))
        return out
    return pre[i:i + node.descendant_count]


def query_nodes(node: tree_sitter.Node, node_type: str) -> list[tree_sitter.Node]:
    """All descendants (and node itself) of one type, in document order."""
    m = _memo(node)
    key = ("type", node_type)
    if key not in m:
        q = _query(node_type)
        m[key] = sorted(tree_sitter.QueryCursor(q).captures(m["root"]).get("n", []),
                        key=lambda n: (n.start_byte, -n.end_byte))
    allnodes = m[key]
    if node == m["root"]:
        return allnodes
    lo, hi = node.start_byte, node.end_byte
    return [n for n in allnodes if lo <= n.start_byte and n.end_byte <= hi]


@lru_cache(maxsize=64)
def _query(node_type: str) -> tree_sitter.Query:
    return tree_sitter.Query(_LANG, f"({node_type}) @n")


@dataclass(frozen=True)
class Function:
    name: str
    start: int      # 1-based lines
    end: int
    node: tree_sitter.Node


def _declarator_name(node: tree_sitter.Node | None) -> str:
    while node is not None:
        if node.type == "identifier":
            return node_text(node)
        nxt = node.child_by_field_name("declarator")
        if nxt is None:
            for c in node.children:
                if c.type in ("identifier", "function_declarator", "pointer_declarator",
                              "parenthesized_declarator"):
                    nxt = c
                    break
        node = nxt
    return ""


def functions(tree: tree_sitter.Tree) -> list[Function]:
    m = _memo(tree.root_node)
    if "functions" not in m:
        out = []
        for n in query_nodes(tree.root_node, "function_definition"):
            name = _declarator_name(n.child_by_field_name("declarator"))
            out.append(Function(name, line_of(n), end_line_of(n), n))
        m["functions"] = out
    return list(m["functions"])


def function_at(funcs: list[Function], line: int) -> Function | None:
    best = None
    for f in funcs:
        if f.start <= line <= f.end and (best is None or f.start >= best.start):
            best = f
    return best


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[str, ...]
    line: int
    node: tree_sitter.Node


def calls(node: tree_sitter.Node) -> list[Call]:
    m = _memo(node)
    key = ("calls", node.id)
    if key in m and m[key][0] == node:
        return list(m[key][1])
    out = []
    for n in query_nodes(node, "call_expression"):
        fn = n.child_by_field_name("function")
        argl = n.child_by_field_name("arguments")
        if fn is None:
            continue
        args = tuple(node_text(a) for a in (argl.named_children if argl is not None else [])
                     if a.type != "comment")
        out.append(Call(node_text(fn), args, line_of(n), n))
    m[key] = (node, out)
    return list(out)


def preproc_conditionals(tree: tree_sitter.Tree) -> list[tree_sitter.Node]:
    return [n for n in walk(tree.root_node)
            if n.type in ("preproc_ifdef", "preproc_if", "preproc_elif", "preproc_else")]


def conditional_condition(node: tree_sitter.Node) -> str:
    if node.type == "preproc_ifdef":
        name = node.child_by_field_name("name")
        op = node.children[0].type if node.children else "#ifdef"
        return f"{op} {node_text(name) if name is not None else ''}".strip()
    cond = node.child_by_field_name("condition")
    return node_text(cond) if cond is not None else ""


@dataclass(frozen=True)
class Initializer:
    """A designated initialiser of a struct variable (an ops table):
    `static const struct bpf_map_ops sock_hash_ops = { .map_alloc = ..., };`"""
    struct: str                 # struct tag, e.g. "bpf_map_ops"
    name: str                   # variable name
    start: int                  # 1-based line of the declaration
    end: int
    members: tuple[tuple[str, str, int], ...]   # (member, value text, line), top level only

    def get(self, member: str) -> str | None:
        for m, v, _ in self.members:
            if m == member:
                return v
        return None

    def line_of(self, member: str) -> int | None:
        for m, _, ln in self.members:
            if m == member:
                return ln
        return None

    @property
    def names(self) -> set[str]:
        return {m for m, _, _ in self.members}


def _designated_members(node: tree_sitter.Node) -> tuple[tuple[str, str, int], ...]:
    """`.member = value` pairs at the top level of an initializer_list,
    read from the text (tree-sitter mangles #ifdef inside initialisers)."""
    import re as _re
    text = node_text(node)
    base = line_of(node)
    out = []
    depth = 0
    i = 0
    n = len(text)
    pat = _re.compile(r"\.([A-Za-z_]\w*)\s*=\s*")
    while i < n:
        ch = text[i]
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j
        elif ch == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 1
        elif ch == "." and depth == 1:
            m = pat.match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_)]>")):
                j = m.end()
                d = 0
                while j < n:
                    c = text[j]
                    if c in "{([":
                        d += 1
                    elif c in "})]":
                        if d == 0:
                            break
                        d -= 1
                    elif c == "," and d == 0:
                        break
                    elif c == "\n" and d == 0 and text[j:].lstrip().startswith("#"):
                        break
                    j += 1
                out.append((m.group(1), " ".join(text[m.end():j].split()), base + text.count("\n", 0, i)))
                i = j
                continue
        i += 1
    return tuple(out)


def struct_initializers(tree: tree_sitter.Tree) -> list[Initializer]:
    """Every `struct T name = { .a = x, ... };` at any level (not arrays)."""
    out = []
    for n in walk(tree.root_node):
        if n.type != "init_declarator":
            continue
        val = n.child_by_field_name("value")
        decl = n.child_by_field_name("declarator")
        if val is None or val.type != "initializer_list" or decl is None or decl.type != "identifier":
            continue
        parent = n.parent
        typ = parent.child_by_field_name("type") if parent is not None else None
        if typ is None or typ.type != "struct_specifier":
            continue
        tname = typ.child_by_field_name("name")
        if tname is None:
            continue
        members = _designated_members(val)
        if not members:
            continue
        out.append(Initializer(node_text(tname), node_text(decl), line_of(parent),
                               end_line_of(parent), members))
    return out
