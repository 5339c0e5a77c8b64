"""The duplicated-helper family (DUP001, DUP002) beyond the fixture snapshots:
what the comments name, where twins are looked for, and what stays silent."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from reviewbot.tree import dupindex as dx
from reviewbot.review import Options, review_mbox
from support import ktree

FIXTURES = Path(__file__).resolve().parent.parent / "rules" / "fixtures"
DATA = Path(__file__).resolve().parent / "data"
AUTHOR = "Jane Developer <jane@example.org>"


@pytest.fixture(scope="module")
def real():
    try:
        files = ktree.kernel_files(["net/core/sock_map.c", "kernel/bpf/cgroup.c", "kernel/bpf/bpf_lsm.c"])
    except ktree.KernelSourceMissing as exc:
        pytest.skip(str(exc))
    return {p: d.decode() for p, d in files.items()}


@pytest.fixture
def index_env(tmp_path, monkeypatch):
    """A private index cache; the memo of opened indexes forgotten."""
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(tmp_path / "index-cache"))
    monkeypatch.setattr(dx, "_OPEN", {})
    return tmp_path / "index-cache"


def _findings(data: bytes, code: str, tree=None):
    res = review_mbox(data, Options(tree=str(tree) if tree else None, only_rules={code}))
    return [(r.patch, f) for r in res.patches for f in r.findings]


def _function(text: str, name: str) -> str:
    m = re.search(r"\n((?:static )?(?:unsigned )?int %s\(.*?\n}\n)" % re.escape(name), text, re.S)
    assert m, name
    return m.group(1)


# -- DUP002 -------------------------------------------------------------------------------

def _sockmap_fixture(name: str) -> tuple[bytes, dict[str, str]]:
    d = FIXTURES / "DUP002"
    tree = d / "sockmap-seq-show.tree"
    files = {str(p.relative_to(tree)): p.read_text() for p in tree.rglob("*") if p.is_file()}
    return (d / f"{name}.mbox").read_bytes(), files


def test_leftover_copy_is_named_with_the_helper(tmp_path, index_env):
    mbox, files = _sockmap_fixture("bad-sockmap-seq-show")
    ktree.make_tree(tmp_path / "t", files)
    got = _findings(mbox, "DUP002", tmp_path / "t")
    assert len(got) == 1
    _, f = got[0]
    assert "sock_iter_seq_show()" in f.message and "sock_hash_seq_show()" in f.message
    assert f.message.rstrip().endswith("?")
    assert not re.search(r"\blines? \d", f.message)           # replies carry no line numbers
    post = files["net/core/sock_map.c"]
    # the related location is the leftover in the post-image (the patch adds lines above it)
    assert f.related[0].path == "net/core/sock_map.c"
    old_line = post.split("\n").index("static int sock_hash_seq_show(struct seq_file *seq, void *v)") + 1
    assert old_line < f.related[0].line <= old_line + 40


def test_helper_extraction_that_converts_every_copy_is_rewarded_by_silence(tmp_path, index_env):
    mbox, files = _sockmap_fixture("ok-sockmap-seq-show")
    ktree.make_tree(tmp_path / "t", files)
    assert _findings(mbox, "DUP002", tmp_path / "t") == []
    # seed000 (no tree): three helpers extracted, all three users converted
    assert _findings((DATA / "seeds" / "seed000.mbox").read_bytes(), "DUP002") == []


def test_leftover_in_an_untouched_file_is_found_through_the_index(real, tmp_path, index_env, monkeypatch):
    sm = real["net/core/sock_map.c"]
    copy = _function(sm, "sock_hash_seq_show").replace("sock_hash_seq_show", "sock_ext_seq_show")
    files = {"net/core/sock_map.c": sm, "net/core/sock_ext.c": "// SPDX-License-Identifier: GPL-2.0\n\n" + copy}
    tree = tmp_path / "t"
    base = ktree.make_tree(tree, files)
    ok_mbox, _ = _sockmap_fixture("ok-sockmap-seq-show")   # converts both copies in sock_map.c
    # without an index the other file is not looked at
    monkeypatch.setenv("REVIEWBOT_DUPINDEX", "off")
    assert _findings(ok_mbox, "DUP002", tree) == []
    monkeypatch.setenv("REVIEWBOT_DUPINDEX", "auto")
    dx.DupIndex.build(str(tree), base, index_env, procs=1)
    got = _findings(ok_mbox, "DUP002", tree)
    assert len(got) == 1
    f = got[0][1]
    assert "sock_ext_seq_show() in net/core/sock_ext.c" in f.message
    assert f.related[0].path == "net/core/sock_ext.c"


# -- DUP001 -------------------------------------------------------------------------------

def _cgroup_pre(real) -> tuple[str, str]:
    cg = real["kernel/bpf/cgroup.c"]
    fn = _function(cg, "__cgroup_bpf_run_lsm_socket")
    return cg.replace(fn + "\n", ""), fn


def test_copy_added_twice_in_one_series_is_flagged_once_without_a_tree(real, tmp_path):
    cg_pre, fn = _cgroup_pre(real)
    tree = tmp_path / "t"
    ktree.make_tree(tree, {"kernel/bpf/cgroup.c": cg_pre, "kernel/bpf/bpf_lsm.c": real["kernel/bpf/bpf_lsm.c"]})
    anchor = "unsigned int __cgroup_bpf_run_lsm_current("
    twin = fn.replace("__cgroup_bpf_run_lsm_socket", "bpf_lsm_run_socket_shim")
    msgs = ktree.make_series(tree, [
        ("bpf: Add a cgroup shim for socket LSM hooks",
         {"kernel/bpf/cgroup.c": lambda s: s.replace(anchor, fn + "\n" + anchor, 1)}),
        ("bpf: lsm: Run socket shims",
         {"kernel/bpf/bpf_lsm.c": lambda s: s + "\n" + twin}),
    ], AUTHOR)
    got = _findings(b"".join(msgs), "DUP001")      # no tree: the series alone
    assert [(p.label, f.path) for p, f in got] == [("2/2", "kernel/bpf/bpf_lsm.c")]
    f = got[0][1]
    assert "__cgroup_bpf_run_lsm_socket() in kernel/bpf/cgroup.c" in f.message
    assert "patch 1/2" in f.message


def test_twin_in_the_same_directory_without_an_index(real, tmp_path, index_env, monkeypatch):
    cg_pre, fn = _cgroup_pre(real)
    tree = tmp_path / "t"
    ktree.make_tree(tree, {"kernel/bpf/cgroup.c": cg_pre, "kernel/bpf/bpf_lsm.c": real["kernel/bpf/bpf_lsm.c"]})
    twin = fn.replace("__cgroup_bpf_run_lsm_socket", "bpf_lsm_run_socket_shim")
    mbox = ktree.make_patch(tree, {"kernel/bpf/bpf_lsm.c": lambda s: s + "\n" + twin},
                            "bpf: lsm: Run socket shims", AUTHOR)
    monkeypatch.setenv("REVIEWBOT_DUPINDEX", "off")
    got = _findings(mbox, "DUP001", tree)
    assert len(got) == 1
    f = got[0][1]
    assert "__cgroup_bpf_run_lsm_sock() in kernel/bpf/cgroup.c" in f.message
    assert f.related[0].path == "kernel/bpf/cgroup.c"


def test_real_series_with_per_family_twins_and_wrappers_gets_no_comment():
    # sk_lookup adds ipv4/ipv6 variants and thin attach/detach wrappers:
    # alike in shape, calling different functions; reviewers did not ask
    # for helpers there, and neither do we.
    for name in ("sk_lookup-v1.mbox", "sk_lookup-v2.mbox"):
        assert _findings((DATA / "lists" / name).read_bytes(), "DUP001") == []


def test_moved_code_is_not_a_copy(real, tmp_path):
    # a patch that moves a function to another file leaves no twin behind
    cg = real["kernel/bpf/cgroup.c"]
    fn = _function(cg, "__cgroup_bpf_run_lsm_socket")
    tree = tmp_path / "t"
    ktree.make_tree(tree, {"kernel/bpf/cgroup.c": cg, "kernel/bpf/bpf_lsm.c": real["kernel/bpf/bpf_lsm.c"]})
    mbox = ktree.make_patch(tree, {"kernel/bpf/cgroup.c": lambda s: s.replace(fn + "\n", ""),
                                   "kernel/bpf/bpf_lsm.c": lambda s: s + "\n" + fn.replace(
                                       "__cgroup_bpf_run_lsm_socket", "bpf_lsm_run_socket")},
                            "bpf: Move the socket shim to bpf_lsm.c", AUTHOR)
    got = [f for _, f in _findings(mbox, "DUP001", tree)]
    # the moved function still resembles __cgroup_bpf_run_lsm_sock(), which stays in cgroup.c:
    # that twin may be named, the removed original must not be
    assert all("__cgroup_bpf_run_lsm_socket()" not in f.message for f in got)
