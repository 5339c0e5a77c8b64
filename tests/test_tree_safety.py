"""The user's tree after `reviewbot review --tree`: byte-identical, always.

After reviews that apply, that fail to apply, that fail to start, and
that are interrupted by SIGINT or SIGTERM in the middle of applying a
17-patch series: the same `git status`, stash, worktrees, refs, index
bytes, working files and object store; no `reviewbot-apply-*` directory
left in $TMPDIR; no git process left running; no hook run.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import ktree
from support.treestate import tree_state
from test_hostile import TREE_FILES

HERE = Path(__file__).resolve().parent
REVIEWBOT = shutil.which("reviewbot")
HOOKS = ["pre-commit", "post-commit", "post-checkout", "post-index-change", "applypatch-msg",
         "pre-applypatch", "post-applypatch", "reference-transaction", "post-rewrite", "pre-auto-gc"]


@pytest.fixture(scope="module")
def base_tree(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("safety") / "linux"
    ktree.make_tree(tree, ktree.kernel_files(TREE_FILES))
    return tree


@pytest.fixture(scope="module")
def series17(base_tree, tmp_path_factory) -> Path:
    """17 real patches against base_tree, threaded like git send-email."""
    def add(n):
        return lambda s: s + f"\n/* reviewbot tree-safety test change {n} */\n"
    patches = [(f"net: tree safety change {n}", {TREE_FILES[n % len(TREE_FILES)]: add(n)}) for n in range(17)]
    msgs = ktree.make_series(base_tree, patches, cover=("tree safety series", "Seventeen small changes."))
    path = tmp_path_factory.mktemp("series") / "series17.mbox"
    path.write_bytes(b"".join(m if m.endswith(b"\n") else m + b"\n" for m in msgs))
    return path


@pytest.fixture
def user_tree(base_tree, tmp_path) -> Path:
    """A user's checkout mid-work: a clone with a stash entry, a staged
    change, an unstaged change, an untracked file, a second branch, a linked
    worktree, and hooks that would leave a mark if anything ran them."""
    tree = ktree.clone_tree(base_tree, tmp_path / "user", shared=False)
    g = lambda *a: ktree.git(tree, *a)   # noqa: E731
    g("branch", "topic")
    p = tree / TREE_FILES[1]
    p.write_text(p.read_text() + "/* stashed */\n")
    g("stash", "push", "-q", "-m", "user's stash")
    p.write_text(p.read_text() + "/* staged */\n")
    g("add", TREE_FILES[1])
    p.write_text(p.read_text() + "/* unstaged */\n")
    (tree / "notes.txt").write_text("untracked user file\n")
    g("worktree", "add", "-q", str(tmp_path / "user-wt"), "topic")
    marker = tmp_path / "HOOK-RAN"
    for hook in HOOKS:
        h = tree / ".git" / "hooks" / hook
        h.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
        h.chmod(0o755)
    return tree


def _env(tmp: Path) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "GIT_CONFIG_GLOBAL": os.devnull}


def _leftover_processes(marker: str) -> list[int]:
    """Processes still running with marker (our TMPDIR) in their environment."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if marker.encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _review(args, tmp: Path, timeout=300):
    proc = subprocess.run([REVIEWBOT, "review", *args, "--from", "R <r@example.org>"], env=_env(tmp),
                          capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def _assert_clean(tree: Path, before: dict, tmp: Path):
    after = tree_state(tree)
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the user's tree changed: {changed}"
    assert not list(tmp.iterdir()), f"left in TMPDIR: {[p.name for p in tmp.iterdir()]}"
    assert not (tree.parent / "HOOK-RAN").exists(), (tree.parent / "HOOK-RAN").read_text()
    deadline = time.monotonic() + 5
    while _leftover_processes(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftover_processes(str(tmp)), "git processes left running"


def test_series_that_applies(user_tree, series17, tmp_path):
    before = tree_state(user_tree)
    wt_before = tree_state(tmp_path / "user-wt")
    rc, out, err = _review([str(series17), "--tree", str(user_tree)], tmp_path / "tmp")
    assert rc == 0, err
    assert out.count(" yes ") == 17, out
    _assert_clean(user_tree, before, tmp_path / "tmp")
    assert tree_state(tmp_path / "user-wt") == wt_before


def test_linked_worktree_as_tree(user_tree, series17, tmp_path):
    wt = tmp_path / "user-wt"
    before, wt_before = tree_state(user_tree), tree_state(wt)
    rc, out, err = _review([str(series17), "--tree", str(wt)], tmp_path / "tmp")
    assert rc == 0, err
    _assert_clean(user_tree, before, tmp_path / "tmp")
    assert tree_state(wt) == wt_before


def test_series_that_does_not_apply(user_tree, tmp_path):
    before = tree_state(user_tree)
    rc, out, err = _review([str(HERE / "data" / "seeds" / "seed004.mbox"), "--tree", str(user_tree)],
                           tmp_path / "tmp")
    assert rc == 0, err
    assert "NO" in out
    _assert_clean(user_tree, before, tmp_path / "tmp")


@pytest.mark.parametrize("args,needle", [
    (["--base", "no-such-rev"], "unknown revision"),
    (["--base", "--output=/tmp/x"], "not a revision"),
    (["--base", "HEAD~99"], "unknown revision"),
])
def test_bad_base_fails_cleanly(user_tree, series17, tmp_path, args, needle):
    before = tree_state(user_tree)
    rc, out, err = _review([str(series17), "--tree", str(user_tree), *args], tmp_path / "tmp")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and needle in err, err
    _assert_clean(user_tree, before, tmp_path / "tmp")


def test_tree_without_commits(series17, tmp_path):
    tree = tmp_path / "empty"
    ktree.git(tmp_path, "init", "-q", str(tree))
    before = tree_state(tree)
    rc, out, err = _review([str(series17), "--tree", str(tree)], tmp_path / "tmp")
    assert rc == 1 and err.count("\n") == 1 and "no commits" in err, err
    _assert_clean(tree, before, tmp_path / "tmp")


def test_not_a_git_tree(series17, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file").write_text("x")
    rc, out, err = _review([str(series17), "--tree", str(plain)], tmp_path / "tmp")
    assert rc != 0 and "not a git tree" in err and err.count("\n") == 1, err
    assert [p.name for p in plain.iterdir()] == ["file"]
    assert not list((tmp_path / "tmp").iterdir())


def test_bare_repository(base_tree, series17, tmp_path):
    bare = tmp_path / "bare.git"
    ktree.git(tmp_path, "clone", "-q", "--bare", str(base_tree), str(bare))
    before = {p.relative_to(bare): p.read_bytes() for p in sorted(bare.rglob("*")) if p.is_file()}
    rc, out, err = _review([str(series17), "--tree", str(bare)], tmp_path / "tmp")
    assert rc in (0, 1) and "Traceback" not in err and "internal error" not in err, err
    after = {p.relative_to(bare): p.read_bytes() for p in sorted(bare.rglob("*")) if p.is_file()}
    assert before == after
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_apply(user_tree, series17, tmp_path, sig):
    """Interrupt a real `reviewbot review --tree` at several points of
    applying a 17-patch series: one line, a clean exit, nothing left."""
    before = tree_state(user_tree)
    interrupted = 0
    for n, delay in enumerate((0.0, 0.02, 0.1, 0.3, 0.8)):
        tmp = tmp_path / f"tmp-{n}"
        proc = subprocess.Popen([REVIEWBOT, "review", str(series17), "--tree", str(user_tree),
                                 "--mbox-out", str(tmp_path / f"out-{n}") + "/"],
                                env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Wait for the scratch area: the apply has begun.
        deadline = time.monotonic() + 120
        while proc.poll() is None and not list(tmp.glob("reviewbot-apply-*")) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        err = err.decode(errors="replace")
        _assert_clean(user_tree, before, tmp)
        if proc.returncode in (0, -sig) and b"drafted" in out:
            # The review was done before the signal landed (after main()
            # returned, the default action may still end the process).
            continue
        interrupted += 1
        want = ("reviewbot: interrupted", 130) if sig == signal.SIGINT else ("reviewbot: terminated", 143)
        assert (err.strip(), proc.returncode) == want, (delay, proc.returncode, err)
        assert not list((tmp_path / f"out-{n}").glob("*")) or all(
            p.name.endswith(".mbox") for p in (tmp_path / f"out-{n}").iterdir())
    assert interrupted >= 2, "the signal never landed during the review"
