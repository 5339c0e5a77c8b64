"""C structure with tree-sitter-c: functions, calls, preprocessor blocks.

tree-sitter is error tolerant, which kernel code needs (macros such as
list_for_each_entry(...) { } parse as calls or errors, not failures).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import tree_sitter
import tree_sitter_c

_LANG = tree_sitter.Language(tree_sitter_c.language())


@lru_cache(maxsize=1)
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(_LANG)


def parse(text: str) -> tree_sitter.Tree:
    return _parser().parse(text.encode("utf-8", errors="replace"))


def node_text(node: tree_sitter.Node) -> str:
    return node.text.decode("utf-8", errors="replace") if node.text is not None else ""


def line_of(node: tree_sitter.Node) -> int:
    """1-based first line of a node."""
    return node.start_point[0] + 1


def end_line_of(node: tree_sitter.Node) -> int:
    return node.end_point[0] + 1


def walk(node: tree_sitter.Node):
    """Pre-order walk without recursion limits."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


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
    out = []
    for n in walk(tree.root_node):
        if n.type == "function_definition":
            name = _declarator_name(n.child_by_field_name("declarator"))
            out.append(Function(name, line_of(n), end_line_of(n), n))
    return out


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
    out = []
    for n in walk(node):
        if n.type == "call_expression":
            fn = n.child_by_field_name("function")
            argl = n.child_by_field_name("arguments")
            if fn is None:
                continue
            args = tuple(node_text(a) for a in (argl.named_children if argl is not None else [])
                         if a.type != "comment")
            out.append(Call(node_text(fn), args, line_of(n), n))
    return out


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
