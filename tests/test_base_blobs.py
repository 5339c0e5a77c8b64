"""A series that no longer applies to the tree's HEAD is applied to the
blobs its index lines name (as `git am -3` does), when the tree's object
store has them; else the review falls back to the diff and says so."""
from __future__ import annotations

import pytest

from reviewbot.review import Options, review_mbox
from support.ktree import KernelSourceMissing, git, kernel_files, make_series, make_tree

SOCKMAP = "net/core/sock_map.c"
LOCKED = "\traw_spin_lock_bh(&stab->lock);\n\tosk = stab->sks[idx];\n"
# what a later commit makes of the lines around the patch's hunk
LATER = ("\traw_spin_lock_bh(&stab->lock);\n\tosk = READ_ONCE(stab->sks[idx]);\n"
         "\tif (osk && flags == BPF_NOEXIST) { /* taken */\n")


@pytest.fixture(scope="module")
def src():
    try:
        return kernel_files([SOCKMAP])[SOCKMAP].decode()
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))


def _moved_on(text):
    old = LOCKED + "\tif (osk && flags == BPF_NOEXIST) {\n"
    assert text.count(old) == 1
    return text.replace(old, LATER)


def _patch(tree):
    """A real patch against the tree's HEAD: an early return between the
    lock and the unlock of sock_map_update_common() (whose hunk shows only
    part of the function)."""
    def edit(text):
        return text.replace(LOCKED, LOCKED + "\tif (osk == sk)\n\t\treturn -EEXIST;\n")
    return b"".join(make_series(tree, [("bpf, sockmap: refuse self replace", {SOCKMAP: edit})]))


def _review(tree, mbox):
    res = review_mbox(mbox, Options(tree=str(tree), min_confidence="low", only_rules={"LCK002"}))
    return res, res.patches[0]


def test_a_series_made_on_an_older_base_applies_to_its_blobs(tmp_path, src):
    tree = tmp_path / "tree"
    make_tree(tree, {SOCKMAP: src})
    mbox = _patch(tree)
    # HEAD moves on: a later commit rewrites the lines around the hunk
    (tree / SOCKMAP).write_text(_moved_on(src))
    git(tree, "commit", "-q", "-am", "bpf, sockmap: later change")
    res, p = _review(tree, mbox)
    assert p.applies is True
    assert "applied to the blobs named in the patch (the tree's HEAD differs)" in p.notes
    # the whole function is known: the missing unlock is found
    assert [f.rule for f in p.findings] == ["LCK002"]
    assert "sock_map_update_common()" in p.findings[0].message
    assert git(tree, "status", "--porcelain") == b""


def test_without_the_blobs_the_review_falls_back_to_the_diff_and_says_so(tmp_path, src):
    made = tmp_path / "made"
    make_tree(made, {SOCKMAP: src})
    mbox = _patch(made)
    tree = tmp_path / "tree"            # a tree that never held the base blob
    make_tree(tree, {SOCKMAP: _moved_on(src)})
    res, p = _review(tree, mbox)
    assert p.applies is False
    assert any("pre-image blob" in n and "is not in the tree" in n for n in p.notes), p.notes
    assert any("reviewed the diff text only" in n for n in p.notes), p.notes
