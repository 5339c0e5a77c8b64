"""The rule engine: rules are found in reviewbot.rules and through the
entry-point group, run in one process over a series, and a rule that
crashes costs a note, never the review."""
from __future__ import annotations

import sys

from reviewbot import engine
from reviewbot.review import Options, review_mbox

from test_rule_fixtures import FIXTURES, _make_tree


class _Boom(engine.Rule):
    """Crashes on every patch.

    ## What it does
    x

    ## Why is this bad?
    x

    ## Example
    x

    ## Use instead
    x
    """
    code, name, family = "TST001", "boom", "test"

    def check_patch(self, ctx):
        raise RuntimeError("boom")


class _Counter(engine.Rule):
    """Reports one finding per patch and one for the series."""
    code, name, family = "TST002", "counter", "test"

    def check_patch(self, ctx):
        yield self.finding(None, None, f"patch {ctx.patch.index}")

    def check_series(self, patches):
        yield self.finding(None, None, f"{len(patches)} patches")


def _contexts(tmp_path):
    """The contexts of a real review (DUP001's bad fixture on its tree)."""
    mbox = next((FIXTURES / "DUP001").glob("bad-*.mbox"))
    tree = _make_tree(mbox.parent / (mbox.stem.split("-", 1)[1] + ".tree"), tmp_path / "tree")
    seen = []
    orig = engine.run

    def spy(rules, contexts, only=None):
        seen.append(contexts)
        return orig(rules, contexts, only)
    engine.run = spy
    try:
        review_mbox(mbox.read_bytes(), Options(tree=tree))
    finally:
        engine.run = orig
    return seen[0]


def test_a_crashing_rule_leaves_a_note_and_the_other_rules_still_report(tmp_path):
    ctxs = _contexts(tmp_path)
    per_patch, series, notes = engine.run([_Boom(), _Counter()], ctxs)
    assert [f.message for fs in per_patch.values() for f in fs] == [f"patch {c.patch.index}" for c in ctxs]
    assert [f.message for f in series] == [f"{len(ctxs)} patches"]
    assert len(notes) == len(ctxs) and all("TST001 (boom) failed on patch" in n for n in notes)


def test_only_runs_the_rules_named_by_code_or_name(tmp_path):
    ctxs = _contexts(tmp_path)
    for only in ({"TST002"}, {"counter"}):
        per_patch, _, notes = engine.run([_Boom(), _Counter()], ctxs, only)
        assert notes == [] and sum(len(fs) for fs in per_patch.values()) == len(ctxs)


def test_the_engine_forks_nothing(tmp_path, monkeypatch):
    """A review runs in one process: no fork, no second process."""
    import os

    def no_fork():
        raise AssertionError("forked")
    monkeypatch.setattr(os, "fork", no_fork)
    ctxs = _contexts(tmp_path)
    per_patch, _, notes = engine.run(engine.discover(), ctxs)
    assert notes == [] and any(f.rule == "DUP001" for fs in per_patch.values() for f in fs)


def test_a_rule_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares a rule under the `reviewbot.rules` entry-point
    group is discovered with the built-in rules."""
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
    monkeypatch.syspath_prepend(str(tmp_path))
    engine._discover.cache_clear()
    try:
        codes = [r.code for r in engine.discover()]
        assert "ZZZ001" in codes and "DUP001" in codes
    finally:
        sys.modules.pop("rb_plugin_demo", None)
        engine._discover.cache_clear()
