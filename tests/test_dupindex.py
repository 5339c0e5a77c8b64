"""The function index (reviewbot.dupindex) on small trees of real 6.1 files."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from reviewbot.tree import dupindex as dx
from support import ktree

FILES = ["net/core/sock_map.c", "kernel/bpf/cgroup.c", "net/core/flow_dissector.c",
         "include/linux/bpf.h"]


@pytest.fixture(scope="module")
def real():
    try:
        return {p: d.decode() for p, d in ktree.kernel_files(FILES).items()}
    except ktree.KernelSourceMissing as exc:
        pytest.skip(str(exc))


def _git_dir_listing(tree: Path) -> set[str]:
    return {str(p.relative_to(tree / ".git")) for p in (tree / ".git").rglob("*")}


def _body(text: str, name: str) -> str:
    """The text of function NAME (header to closing brace)."""
    for sp in dx.split_functions(text):
        if sp.name == name:
            lines = text.split("\n")
            return "\n".join(lines[sp.start - 1:sp.end]) + "\n"
    raise AssertionError(f"{name} not found")


def _codes_of(text: str, name: str):
    for sp, codes, _ in dx.function_codes(text):
        if sp.name == name:
            return codes
    raise AssertionError(name)


def _names(hits):
    return [(f.path, f.name) for f, _ in hits]


def test_split_functions_finds_kernel_functions_with_their_lines(real):
    text = real["net/core/sock_map.c"]
    spans = {sp.name: sp for sp in dx.split_functions(text)}
    lines = text.split("\n")
    sp = spans["sock_hash_seq_show"]
    assert lines[sp.start - 1].startswith("static int sock_hash_seq_show(")
    assert lines[sp.end - 1] == "}"
    assert "bpf_iter_run_prog(prog, &ctx);" in lines[sp.end - 2]
    # ops tables and struct definitions are not functions
    assert "sock_map_seq_ops" not in spans and "sock_map_seq_info" not in spans


def test_normalisation_ignores_names_and_literals_but_not_calls():
    a = dx.code_tokens("{ int ret = foo(a->x, 1); /* c */ return ret; }")
    b = dx.code_tokens("{ int err = foo(b->x, 2);\n return err; }")
    c = dx.code_tokens("{ int ret = bar(a->x, 1); return ret; }")
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_build_query_and_incremental_update(real, tmp_path):
    tree = tmp_path / "linux"
    cache = tmp_path / "cache"
    files = dict(real)
    # plant a real duplicate: sock_map_seq_show(), renamed, in another file
    planted = _body(real["net/core/sock_map.c"], "sock_map_seq_show").replace(
        "sock_map_seq_show", "flow_dissector_seq_show").replace("info", "it")
    files["net/core/flow_dissector.c"] = real["net/core/flow_dissector.c"] + "\n" + planted
    base = ktree.make_tree(tree, files)
    before = _git_dir_listing(tree)

    idx = dx.DupIndex.build(str(tree), base, cache, procs=2)
    assert len(idx) > 120
    assert (cache / idx.meta["tree"] / "meta.json").is_file()

    query = dx.fingerprints(_codes_of(real["net/core/sock_map.c"], "sock_map_seq_show"))
    hits = idx.query(query, min_shared=len(query) // 2)
    names = _names(hits)
    assert ("net/core/flow_dissector.c", "flow_dissector_seq_show") in names
    assert ("net/core/sock_map.c", "sock_map_seq_show") in names
    assert ("net/core/sock_map.c", "sock_hash_seq_show") in names     # the real near-twin
    assert not any(p == "kernel/bpf/cgroup.c" for p, _ in names)       # unrelated code
    planted_fn = next(f for f, _ in hits if f.name == "flow_dissector_seq_show")
    text = files["net/core/flow_dissector.c"].split("\n")
    assert text[planted_fn.start - 1].startswith("static int flow_dissector_seq_show(")

    # a cached index is found again without building
    assert dx.DupIndex.open(str(tree), base, cache, build=False) is not None

    # one commit changes one file: only that file is indexed again
    work = tmp_path / "work"
    ktree.clone_tree(tree, work)
    (work / "net/core/flow_dissector.c").write_text(real["net/core/flow_dissector.c"])
    cg = real["kernel/bpf/cgroup.c"]
    ktree.git(work, "commit", "-qam", "drop the copy")
    ktree.git(tree, "fetch", "-q", str(work), "master:refs/heads/next")
    new = ktree.git(tree, "rev-parse", "next").decode().strip()
    up = dx.DupIndex.open(str(tree), new, cache, build=False)
    assert up is not None and up.delta is not None
    assert up.delta.meta["changed"] == 1 and up.delta.meta["parent"] == idx.meta["tree"]
    names = _names(up.query(query, min_shared=len(query) // 2))
    assert ("net/core/flow_dissector.c", "flow_dissector_seq_show") not in names
    assert ("net/core/sock_map.c", "sock_hash_seq_show") in names
    # the untouched files' functions are still there, with their lines
    q2 = dx.fingerprints(_codes_of(cg, "__cgroup_bpf_run_lsm_sock"))
    top = up.query(q2, min_shared=len(q2) // 2)
    assert ("kernel/bpf/cgroup.c", "__cgroup_bpf_run_lsm_socket") in _names(top)
    # a big patch asks for all its functions at once: same answers, also
    # across the delta and the functions it retired
    mins = [len(query) // 2, len(q2) // 2, 3]
    assert up.query_many([query, q2, q2[:0]], mins, 3) == [
        up.query(query, mins[0])[:3], up.query(q2, mins[1])[:3], []]

    # nothing was written into the repository by indexing
    after = _git_dir_listing(tree)
    assert {p for p in after - before if "next" not in p and not p.startswith("objects")
            and "FETCH_HEAD" not in p and not p.startswith("logs")} == set()
    assert ktree.git(tree, "status", "--porcelain").decode() == ""
    assert not any(re.search(r"reviewbot|index\.npy", p) for p in after)


def test_open_without_an_index_does_not_build_unless_asked(real, tmp_path):
    tree = tmp_path / "linux"
    base = ktree.make_tree(tree, {"net/core/sock_map.c": real["net/core/sock_map.c"]})
    assert dx.DupIndex.open(str(tree), base, tmp_path / "cache", build=False) is None
    assert not any((tmp_path / "cache").iterdir())


def test_index_command_builds_then_reuses(real, tmp_path, monkeypatch, capsys):
    from reviewbot.cli import main
    tree = tmp_path / "linux"
    ktree.make_tree(tree, {"net/core/sock_map.c": real["net/core/sock_map.c"]})
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(tmp_path / "cache"))
    assert main(["index", "--tree", str(tree)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"indexed \d+ functions of [0-9a-f]{12} \(full\)", out)
    dirs = lambda: [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]   # noqa: E731
    assert len(dirs()) == 1          # (the knowledge base is a file beside it)
    assert main(["index", "--tree", str(tree)]) == 0      # cached: nothing new
    assert len(dirs()) == 1
    assert main(["index", "--tree", str(tmp_path / "nope")]) != 0


def test_batched_fingerprints_and_indexed_spans_match_one_at_a_time(real):
    text = real["net/core/sock_map.c"]
    funcs = dx.function_codes(text)
    seqs = [codes for _, codes, _ in funcs] + [funcs[0][1][:9], funcs[0][1][:3]]
    for one, many in zip((dx.fingerprints(c) for c in seqs), dx.fingerprints_many(seqs)):
        assert one.tolist() == many.tolist()
    for sp, codes, lines in funcs:
        (got_sp, got_codes, got_lines), = dx.indexed_function_codes(text, sp.name, sp.start, sp.end)
        assert (got_sp.name, got_codes.tolist(), got_lines.tolist()) == (sp.name, codes.tolist(), lines.tolist())
