"""C structure helpers agree with tree-sitter's own queries on real files."""
from __future__ import annotations

from pathlib import Path

import pytest

from reviewbot.analysis import cparse

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


def _initializers_by_query(tree):
    """struct_initializers() the slow way: one query over the whole tree."""
    out = []
    for n in cparse._captures(tree.root_node, "init_declarator"):
        got = cparse._chunk_initializers([n], tree.root_node)
        out.extend(got)
    return [(i.struct, i.name, i.start, i.end, i.members) for i in out]


def test_chunk_memos_follow_edits_of_a_real_file():
    """A series shows one file again and again: the per-chunk memos of the
    ops tables and called names must give what a fresh look at each
    version gives, lines shifted and edited tables included."""
    path = next(p for p in FIXTURE_C if "static const struct" in p.read_text(errors="replace"))
    v0 = path.read_text(errors="replace")
    t0 = cparse.parse(v0)
    assert cparse.struct_initializers(t0)
    # v1: a new ops table and function near the top shift every line below
    # and add calls; v2: one existing table loses a member
    head, sep, rest = v0.partition("\n\n")
    add = ("static int added_fn(void)\n{\n\treturn brand_new_call(1);\n}\n\n"
           "static const struct file_operations added_fops = {\n\t.open = added_fn,\n};\n")
    v1 = head + sep + add + "\n" + rest
    first = cparse.struct_initializers(t0)[0]
    member = first.members[0]
    line_text = v1.split("\n")[member[2] - 1 + add.count("\n") + 1]
    assert f".{member[0]}" in line_text
    v2 = v1.replace(line_text + "\n", "", 1)
    for text in (v1, v2):
        tree = cparse.parse(text)
        got = [(i.struct, i.name, i.start, i.end, i.members) for i in cparse.struct_initializers(tree)]
        assert got == _initializers_by_query(tree)
        names = {cparse.node_text(n.child_by_field_name("function"))
                 for n in cparse._captures(tree.root_node, "call_expression")}
        assert cparse.call_names(tree) == names
    assert "brand_new_call" in cparse.call_names(cparse.parse(v1))
    assert any(i.name == "added_fops" for i in cparse.struct_initializers(cparse.parse(v1)))


@pytest.mark.parametrize("path", FIXTURE_C[:10], ids=lambda p: p.name)
def test_calls_any_agrees_with_the_call_names(path):
    """calls_any() (a text test, then the parse) says what the call names
    say, for names a rule looks for, names in comments or strings only,
    and a callee that is a field."""
    tree = cparse.parse(path.read_text(errors="replace"))
    fns = cparse.functions(tree)
    every = sorted(set().union(*(f.call_names for f in fns)))
    assert every
    sets = [{"spin_lock", "spin_lock_irqsave", "local_irq_save"}, {"kfree"}, set(every[:3]),
            {"struct", "return", "if"}, {every[-1], "no_such_function"}]
    for names in sets:
        for f in fns:
            assert cparse.calls_any(f.node, names) == (not f.call_names.isdisjoint(names)), (f.name, names)


def test_a_post_image_reparsed_from_its_pre_image_is_the_tree_of_a_fresh_parse():
    """cparse.parse() reparses a text that differs from a recent one in a
    few lines incrementally (a copy of the old tree, edited): every node
    must be where a parse from scratch puts it."""
    from support.ktree import KernelSourceMissing, kernel_files
    try:
        text = kernel_files(["net/core/sock_map.c"])["net/core/sock_map.c"].decode()
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))

    def nodes(tree):
        out, stack = [], [tree.root_node]
        while stack:
            n = stack.pop()
            out.append((n.type, n.start_byte, n.end_byte, n.start_point, n.end_point))
            stack.extend(n.children)
        return out
    lines = text.split("\n")
    start = lines.index("static int sock_map_release_progs(struct bpf_map *map)") \
        if "static int sock_map_release_progs(struct bpf_map *map)" in lines else len(lines) // 2
    variants = [text,
                "\n".join(lines[:start] + lines[start + 12:]),                 # a function's head removed
                "\n".join(lines[:start] + ["static int x(void)", "{", "\treturn f(1, 2);", "}"] + lines[start:]),
                text.replace("GFP_ATOMIC", "GFP_KERNEL", 1)]
    old = cparse.parse(variants[0])
    for v in variants[1:]:
        got = cparse.parse(v)
        assert got is not old
        assert nodes(got) == nodes(_fresh(v))
    assert nodes(old) == nodes(_fresh(variants[0]))   # the old tree untouched


def _fresh(text: str):
    return cparse._parser().parse(cparse._SPARSE.sub(cparse._blank, text.encode()))


def test_casts_with_sparse_annotations_are_calls_and_lines_stay():
    """`iounmap((void __iomem *)base);` is a call (tree-sitter alone reads
    it as a declaration), and blanking the annotations moves no line."""
    text = ("static void f(void __iomem *base, struct s __rcu **pp)\n{\n"
            "\tiounmap((void __iomem *)base);\n"
            "\tkfree((struct s __force *)*pp);\n}\n")
    calls = cparse.calls(cparse.parse(text).root_node)
    assert [(c.name, c.line) for c in calls] == [("iounmap", 3), ("kfree", 4)]
    assert [f.name for f in cparse.functions(cparse.parse(text))] == ["f"]
