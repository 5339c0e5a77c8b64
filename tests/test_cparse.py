"""C structure helpers agree with tree-sitter's own queries on real files."""
from __future__ import annotations

from pathlib import Path

import pytest

from reviewbot import cparse

FIXTURE_C = sorted({p for p in (Path(__file__).resolve().parent.parent / "rules" / "fixtures").rglob("*.c")},
                   key=lambda p: p.name)[:25]


@pytest.mark.parametrize("path", FIXTURE_C, ids=lambda p: p.name)
def test_functions_match_a_full_query(path):
    tree = cparse.parse(path.read_text(errors="replace"))
    by_query = [(n.start_byte, n.end_byte) for n in cparse._captures(tree.root_node, "function_definition")]
    found = [(f.node.start_byte, f.node.end_byte) for f in cparse.functions(tree)]
    assert found
    # every definition the query sees is found, or lies inside one that is
    assert set(found) <= set(by_query)
    for s, e in by_query:
        assert any(a <= s and e <= b for a, b in found)


def test_walk_and_calls_of_a_function():
    tree = cparse.parse("static int f(int x)\n{\n\tif (x)\n\t\treturn g(x, 1);\n\treturn h();\n}\n")
    (f,) = cparse.functions(tree)
    assert (f.name, f.start, f.end) == ("f", 1, 6)
    assert [(c.name, c.args, c.line) for c in cparse.calls(f.node)] == [("g", ("x", "1"), 4), ("h", (), 5)]
    assert cparse.walk(f.node)[0] == f.node
