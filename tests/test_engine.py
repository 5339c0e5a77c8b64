"""The rule engine runs the own-process rules (the duplicated-code search)
in a forked child next to the others: same findings as a serial run, and
a child that dies costs nothing but time."""
from __future__ import annotations

import os
import pathlib
import time

import pytest

from reviewbot import engine, review
from reviewbot.review import Options, review_mbox

from support.ktree import KernelSourceMissing, new_file_diff, review_json, whole_file_mbox
from test_rule_fixtures import FIXTURES, _make_tree


def _contexts(tmp_path):
    """The contexts of a real review (DUP001's bad fixture on its tree)."""
    mbox = next((FIXTURES / "DUP001").glob("bad-*.mbox"))
    tree = _make_tree(mbox.parent / (mbox.stem.split("-", 1)[1] + ".tree"), tmp_path / "tree")
    seen = []
    orig = engine.start

    def spy(rules, contexts, only=None, prefork=None):
        seen.append(contexts)
        return orig(rules, contexts, only, prefork=prefork)
    review.engine.start = spy
    try:
        res = review_mbox(mbox.read_bytes(), Options(tree=tree))
    finally:
        review.engine.start = orig
    return mbox, tree, res, seen[0]


class _PidRule(engine.Rule):
    family = "test"

    def __init__(self, code, own, parent=None, die_in_child=False, slow_in=None):
        self.code, self.name, self.own_process = code, code.lower() + "-rule", own
        self.parent, self.die, self.slow_in = parent, die_in_child, slow_in

    def check_patch(self, ctx):
        if self.die and os.getpid() != self.parent:
            os._exit(3)
        if self.slow_in and (os.getpid() == self.parent) == (self.slow_in == "main"):
            time.sleep(1.0)
        yield self.finding(None, None, f"pid {os.getpid()}")


def _pids(per_patch):
    return {f.rule: int(f.message.split()[1]) for fs in per_patch.values() for f in fs}


def test_own_process_rules_run_in_a_child_and_their_findings_come_back(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    monkeypatch.setattr(engine, "FORK_MIN_ADDED", 0)
    *_, ctxs = _contexts(tmp_path)
    me = os.getpid()
    per_patch, _, notes = engine.run([_PidRule("TST001", False), _PidRule("TST002", True)], ctxs)
    pids = _pids(per_patch)
    assert pids["TST001"] == me
    assert pids["TST002"] != me
    assert notes == []


def test_a_child_that_dies_is_replaced_by_running_the_rule_here(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    monkeypatch.setattr(engine, "FORK_MIN_ADDED", 0)
    *_, ctxs = _contexts(tmp_path)
    me = os.getpid()
    per_patch, _, notes = engine.run([_PidRule("TST001", False),
                                      _PidRule("TST002", True, parent=me, die_in_child=True)], ctxs)
    assert _pids(per_patch) == {"TST001": me, "TST002": me}
    assert notes == []


def test_jobs_1_keeps_every_rule_in_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEWBOT_JOBS", "1")
    monkeypatch.setattr(engine, "FORK_MIN_ADDED", 0)
    *_, ctxs = _contexts(tmp_path)
    per_patch, _, _ = engine.run([_PidRule("TST001", False), _PidRule("TST002", True)], ctxs)
    assert set(_pids(per_patch).values()) == {os.getpid()}


def test_a_review_is_the_same_with_and_without_the_child(tmp_path, monkeypatch):
    """All rules on a real fixture: identical JSON either way, and the
    duplicated-code finding (made in the child) is in it."""
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    monkeypatch.setattr(engine, "FORK_MIN_ADDED", 0)
    mbox, tree, res, _ = _contexts(tmp_path)
    forked = review.to_json(res)
    monkeypatch.setenv("REVIEWBOT_JOBS", "1")
    serial = review.to_json(review_mbox(mbox.read_bytes(), Options(tree=tree)))
    for d in (forked, serial):
        d.pop("timings", None)
    assert forked == serial
    assert any(f["rule"] == "DUP001" for p in forked["patches"] for f in p["findings"])


def test_small_patches_are_not_worth_a_child(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    *_, ctxs = _contexts(tmp_path)
    assert 0 < engine._added_c_lines(ctxs) < engine.FORK_MIN_ADDED
    per_patch, _, _ = engine.run([_PidRule("TST001", False), _PidRule("TST002", True)], ctxs)
    assert set(_pids(per_patch).values()) == {os.getpid()}


class _PrepRule(_PidRule):
    """Records in its finding whether prepare() ran in the same process."""

    def prepare(self, tree):
        self.prepared_in = os.getpid()
        if self.die and os.getpid() != self.parent:
            os._exit(4)

    def check_patch(self, ctx):
        yield self.finding(None, None, f"pid {os.getpid()} prepared {getattr(self, 'prepared_in', 0)}")


def test_a_prefork_prepares_early_and_runs_the_rules_on_the_contexts_handed_over(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    *_, ctxs = _contexts(tmp_path)
    rules = [_PidRule("TST001", False), _PrepRule("TST002", True)]
    pre = engine.Prefork(rules, engine.FORK_MIN_ADDED)
    per_patch, _, notes = engine.start(rules, ctxs, prefork=pre).finish()
    (f,) = [f for fs in per_patch.values() for f in fs if f.rule == "TST002"]
    _, pid, _, prepared = f.message.split()
    assert int(pid) != os.getpid() and int(prepared) == int(pid)     # prepared there, ran there
    assert notes == []


def test_a_prefork_that_dies_leaves_the_rules_to_this_process(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    *_, ctxs = _contexts(tmp_path)
    me = os.getpid()
    rules = [_PidRule("TST001", False), _PrepRule("TST002", True, parent=me, die_in_child=True)]
    pre = engine.Prefork(rules, engine.FORK_MIN_ADDED)
    per_patch, _, notes = engine.start(rules, ctxs, prefork=pre).finish()
    assert _pids(per_patch) == {"TST001": me, "TST002": me}
    assert notes == []


def test_an_unused_prefork_is_reaped(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    *_, ctxs = _contexts(tmp_path)
    rules = [_PidRule("TST001", False), _PrepRule("TST002", True)]
    pre = engine.Prefork(rules, engine.FORK_MIN_ADDED)
    pid = pre.child.pid
    engine.start(rules, ctxs, only={"TST001"}, prefork=pre).finish()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_dead_prefork_does_not_take_the_cli_down_with_sigpipe(tmp_path):
    """The CLI lets SIGPIPE kill (for `| head`): handing the contexts to a
    child that has already died must still leave the review to go on."""
    import subprocess
    import sys
    code = f"""
import os, signal, sys, time, pathlib
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
import test_engine as t
from reviewbot import engine
*_, ctxs = t._contexts(pathlib.Path({str(tmp_path)!r}))
me = os.getpid()
rules = [t._PidRule("TST001", False), t._PrepRule("TST002", True, parent=me, die_in_child=True)]
pre = engine.Prefork(rules, engine.FORK_MIN_ADDED)
time.sleep(0.5)                      # the child is gone before the contexts come
pp, _, _ = engine.start(rules, ctxs, prefork=pre).finish()
print(sorted(t._pids(pp).values()) == [me, me])
"""
    env = dict(os.environ)
    env.pop("REVIEWBOT_JOBS", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-500:]
    assert p.stdout.strip() == "True"


def test_the_contexts_reach_the_child_whole(tmp_path):
    """What the rule process gets (pickled) is the diff and images the
    review built: every line, with its numbers, and the added/removed views."""
    import pickle
    _, _, _, contexts = _contexts(tmp_path)
    for c in contexts:
        c.diff.files[0].added()         # memos made before the hand-over do not travel
    got = pickle.loads(pickle.dumps(contexts))
    for a, b in zip(contexts, got):
        assert [f.path for f in a.files] == [f.path for f in b.files]
        for fa, fb in zip(a.diff.files, b.diff.files):
            assert [h.lines for h in fa.hunks] == [h.lines for h in fb.hunks]
            assert fa.added() == fb.added() and fa.removed() == fb.removed()
            assert fb.added() and all(ln.new_no for ln in fb.added())
        assert [fv.post_text for fv in a.files] == [fv.post_text for fv in b.files]
        assert [fv.added_lines for fv in a.files] == [fv.added_lines for fv in b.files]


def test_an_early_prefork_finds_the_rules_itself_and_runs_them(tmp_path, monkeypatch):
    """`reviewbot review` forks before it knows the series: the child
    discovers the rules and prepares while this process imports and
    fetches; adopt() keeps it for a big enough series."""
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    *_, ctxs = _contexts(tmp_path)
    rules = [_PidRule("TST001", False), _PrepRule("TST002", True)]
    monkeypatch.setattr(engine, "discover", lambda: list(rules))   # what the child finds
    early = engine.Prefork.early()
    assert early.child is not None
    per_patch, _, notes = engine.start(rules, ctxs, prefork=early.adopt(rules, engine.FORK_MIN_ADDED)).finish()
    (f,) = [f for fs in per_patch.values() for f in fs if f.rule == "TST002"]
    _, pid, _, prepared = f.message.split()
    assert int(pid) != os.getpid() and int(prepared) == int(pid)
    assert _pids(per_patch)["TST001"] == os.getpid() and notes == []


def test_an_early_prefork_is_let_go_for_a_small_series(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    *_, ctxs = _contexts(tmp_path)
    rules = [_PidRule("TST001", False), _PrepRule("TST002", True)]
    early = engine.Prefork.early()
    pid = early.child.pid
    per_patch, _, _ = engine.start(rules, ctxs, prefork=early.adopt(rules, 10)).finish()
    assert set(_pids(per_patch).values()) == {os.getpid()}
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_cli_review_is_the_same_with_its_early_child(tmp_path):
    """`reviewbot review` of a series big enough for the rule process (the
    DUP001 fixture with a whole real file added) gives the same JSON as a
    review in one process, DUP001's findings included (the copy's functions
    are twins of the original's)."""
    mbox = next((FIXTURES / "DUP001").glob("bad-*.mbox"))
    tree = _make_tree(mbox.parent / (mbox.stem.split("-", 1)[1] + ".tree"), tmp_path / "tree")
    big = next(p for p in sorted(pathlib.Path(tree).rglob("*.c")) if p.read_text().count("\n") > 400)
    copy = str(big.relative_to(tree).with_name("copy_of_" + big.name))
    text = mbox.read_text()
    cut = text.index("\n-- \n") if "\n-- \n" in text else len(text.rstrip("\n"))
    (tmp_path / "big.mbox").write_text(text[:cut].rstrip("\n") + "\n" + new_file_diff(copy, big.read_text())
                                       + text[cut:])
    args = [str(tmp_path / "big.mbox"), "--tree", str(tree)]
    forked, serial = review_json(args), review_json(args, REVIEWBOT_JOBS="1")
    assert forked == serial
    dups = [f for p in forked["patches"] for f in p["findings"] if f["rule"] == "DUP001"]
    assert any(f["path"] == copy for f in dups) and len(dups) > 1


def test_a_rule_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares a rule under the `reviewbot.rules` entry-point
    group is discovered with the built-in rules (and the same entry points
    as importlib.metadata lists)."""
    import importlib.metadata as md
    import sys
    (tmp_path / "rb_plugin_demo.py").write_text(
        "from reviewbot.engine import Rule\n\n"
        "class DemoRule(Rule):\n"
        '    """Demo.\\n\\n## What it does\\nx\\n\\n## Why is this bad?\\nx\\n\\n## Example\\nx\\n\\n## Use instead\\nx\\n"""\n'
        '    code = "ZZZ001"\n    name = "demo-plugin"\n    family = "demo"\n\n'
        "    def check_patch(self, ctx):\n        return iter(())\n")
    info = tmp_path / "rb_plugin_demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rb-plugin-demo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[reviewbot.rules]\ndemo = rb_plugin_demo:DemoRule\n")
    # an older copy of the same distribution further down sys.path is
    # shadowed by the first, as importlib.metadata has it
    later = tmp_path / "later"
    old = later / "rb_plugin_demo-0.9.dist-info"
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: rb-plugin-demo\nVersion: 0.9\n")
    (old / "entry_points.txt").write_text("[reviewbot.rules]\nold = rb_plugin_demo:OldRule\n")
    monkeypatch.syspath_prepend(str(later))
    monkeypatch.syspath_prepend(str(tmp_path))
    engine._discover.cache_clear()
    try:
        codes = [r.code for r in engine.discover()]
        assert "ZZZ001" in codes and "DUP001" in codes
        assert [ep.value for ep in engine._plugin_entry_points()] == \
            [ep.value for ep in md.entry_points(group="reviewbot.rules")] == ["rb_plugin_demo:DemoRule"]
        # a zip file on sys.path: importlib.metadata is asked, same answer
        (tmp_path / "empty.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
        monkeypatch.syspath_prepend(str(tmp_path / "empty.zip"))
        assert engine._scan_entry_points() is None
        assert [ep.value for ep in engine._plugin_entry_points()] == ["rb_plugin_demo:DemoRule"]
    finally:
        sys.modules.pop("rb_plugin_demo", None)
        engine._discover.cache_clear()


def _whole_file_mbox(tmp_path, path: str) -> pathlib.Path:
    try:
        return whole_file_mbox(tmp_path / "whole.mbox", path)
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))


class _Off(_PidRule):
    offload = True


def _whole_file_contexts(tmp_path, monkeypatch):
    """(raw mail, contexts) of a review of fs/dcache.c added whole."""
    monkeypatch.delenv("REVIEWBOT_JOBS", raising=False)
    mbox = _whole_file_mbox(tmp_path, "fs/dcache.c").read_bytes()
    seen = []
    orig = engine.start

    def spy(rules_, contexts, only=None, prefork=None):
        seen.append(contexts)
        return orig(rules_, contexts, only, prefork=prefork)
    monkeypatch.setattr(engine, "start", spy)
    review_mbox(mbox, Options())
    monkeypatch.setattr(engine, "start", orig)
    return mbox, seen[0]


def _run_shared(monkeypatch, rules, contexts, mbox=None, wait=0.0):
    """The RULES run on CONTEXTS with an early rule process, given MBOX to
    work ahead on (and WAIT seconds to do it) when there is one."""
    monkeypatch.setattr(engine, "discover", lambda: list(rules))
    early = engine.Prefork.early()
    if mbox is not None:
        early.preview(mbox)
        time.sleep(wait)
    per_patch, _, notes = engine.start(rules, contexts, prefork=early.adopt(rules, engine.FORK_MIN_ADDED)).finish()
    return _pids(per_patch), notes


def test_offloaded_rules_go_to_whichever_process_is_free_first(tmp_path, monkeypatch):
    """A series that only adds whole files: rules marked offload are shared
    with the rule process (it parsed those files ahead, from the raw mail).
    Whichever process is done with its own rules first runs them: the rule
    process when this one is busy (and it has had the time to parse the
    files ahead), this one when the rule process is."""
    mbox, contexts = _whole_file_contexts(tmp_path, monkeypatch)
    me = os.getpid()
    for slow in ("main", "child"):
        rules = [_PidRule("TST001", False, parent=me, slow_in=slow), _Off("TST003", False),
                 _PidRule("TST002", True, parent=me, slow_in=slow)]
        # (what the child works ahead on takes well under a second)
        pids, notes = _run_shared(monkeypatch, rules, contexts, mbox, wait=3.0 if slow == "main" else 0.0)
        assert pids["TST001"] == me and pids["TST002"] != me and notes == []
        assert pids["TST003"] == (pids["TST002"] if slow == "main" else me), slow
    # a rule process that got no mail to work ahead on (it would have to
    # parse the files first) leaves the shared rules to this process, even
    # a slow one
    rules = [_PidRule("TST001", False, parent=me, slow_in="main"), _Off("TST003", False), _PidRule("TST002", True)]
    pids, notes = _run_shared(monkeypatch, rules, contexts)
    assert pids["TST003"] == me != pids["TST002"] and notes == []


def test_a_shared_rule_the_rule_process_took_and_died_on_runs_here(tmp_path, monkeypatch):
    """The rule process takes a shared rule and dies on it: this process
    runs it after all, and no finding is lost."""
    mbox, contexts = _whole_file_contexts(tmp_path, monkeypatch)
    me = os.getpid()
    rules = [_PidRule("TST001", False, parent=me, slow_in="main"),
             _Off("TST003", False, parent=me, die_in_child=True), _PidRule("TST002", True)]
    # it works ahead on the mail: then it is given the shared rule
    pids, notes = _run_shared(monkeypatch, rules, contexts, mbox, wait=3.0)
    assert pids == {"TST001": me, "TST002": me, "TST003": me} and notes == []


def test_a_review_of_whole_files_is_the_same_with_the_rules_offloaded(tmp_path):
    """`reviewbot review` of a whole real file added (fs/dcache.c: locking
    findings): the same JSON whether the locking and release rules ran in
    the rule process or here."""
    args = [str(_whole_file_mbox(tmp_path, "fs/dcache.c"))]
    forked, serial = review_json(args), review_json(args, REVIEWBOT_JOBS="1")
    assert forked == serial
    assert any(f["rule"] == "LCK003" for p in forked["patches"] for f in p["findings"])


def test_the_rule_process_reads_new_files_from_the_raw_mail_as_git_apply_writes_them():
    """whole_new_files() (the key the rule process works ahead with): the
    text of each file a mail adds whole, lines starting with '+' intact;
    a hunk with fewer lines than its header says is no whole file."""
    from reviewbot.diffmodel import whole_new_files
    text = "int a;\n++b;\n+++c;\n\nint d;\n"
    n = text.count("\n")
    body = "".join("+" + line + "\n" for line in text.split("\n")[:-1])

    def mail(path, count, lines):
        return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n"
                f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{count} @@\n{lines}").encode()

    raw = b"From x\n\n" + mail("x.c", n, body) + mail("short.c", n + 2, body) + mail("y.h", 2, body)
    assert whole_new_files(raw) == [("x.c", text), ("y.h", "int a;\n++b;\n")]


def test_the_rule_process_is_left_the_families_it_will_have_caches_for():
    """At hand-over: nothing while the rule process is still on its own
    rules' previews (it would have to parse first), the families that need
    only the parse while it parses, all once it is on the previews."""
    class Plain(_PidRule):
        family = "plain"

    class Ahead(_PidRule):
        family = "ahead"

        def preview(self, mbox):
            pass
    groups = engine._by_family([Ahead("TST004", False), Plain("TST005", False), Ahead("TST006", False)])
    assert [[r.code for r in g] for g in groups] == [["TST004", "TST006"], ["TST005"]]
    assert engine._to_give(groups, 0) == []
    assert engine._to_give(groups, engine._PARSING) == [1]
    assert engine._to_give(groups, engine._OFFLOAD) == engine._to_give(groups, engine._AHEAD) == [0, 1]
