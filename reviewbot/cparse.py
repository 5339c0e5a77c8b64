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
