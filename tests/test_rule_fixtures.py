"""Every rule alone against its own fixtures (rules/fixtures/CODE/).

A fixture is `bad-NAME.mbox` or `ok-NAME.mbox` (a patch mail, or a whole
series in one mbox).  Beside it, optionally, `NAME.tree/` holds the
pre-image files (real kernel files), made into a git tree so the rule can
see whole functions; and `NAME.expected` holds the expected findings, one
per line: `CODE PATH:LINE CONFIDENCE`.  An `ok-` fixture must produce no
finding; a `bad-` one at least one.  Regenerate snapshots with
REVIEWBOT_REGEN=1 and review them as a diff.
"""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from reviewbot import engine
from reviewbot.review import Options, review_mbox

FIXTURES = pathlib.Path(engine.__file__).resolve().parent.parent / "rules" / "fixtures"
if not FIXTURES.exists():   # installed (non-editable): fixtures ship inside the package
    import reviewbot.rules as _r
    FIXTURES = pathlib.Path(_r.__file__).parent / "fixtures"

RULES = {r.code: r for r in engine.discover()}


def _cases():
    for code_dir in sorted(FIXTURES.iterdir()) if FIXTURES.exists() else []:
        if code_dir.is_dir():
            for mbox in sorted(code_dir.glob("*.mbox")):
                yield pytest.param(code_dir.name, mbox, id=f"{code_dir.name}/{mbox.stem}")


def _make_tree(src: pathlib.Path, dest: pathlib.Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", GIT_AUTHOR_DATE="2022-01-01T00:00:00Z",
               GIT_COMMITTER_DATE="2022-01-01T00:00:00Z")
    subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True)
    subprocess.run(["git", "init", "-q", str(dest)], check=True, env=env)
    subprocess.run(["git", "-C", str(dest), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(dest), "commit", "-qm", "base"], check=True, env=env)
    return str(dest)


def findings_lines(code: str, mbox: pathlib.Path, tmp_path) -> list[str]:
    tree_src = mbox.with_suffix(".tree")
    if not tree_src.exists():
        tree_src = mbox.parent / (mbox.stem.split("-", 1)[1] + ".tree")
    tree = _make_tree(tree_src, tmp_path / "tree") if tree_src.exists() else None
    res = review_mbox(mbox.read_bytes(), Options(tree=tree, only_rules={code}))
    out = []
    for f in [f for r in res.patches for f in r.findings] + list(res.series_findings):
        out.append(f"{f.rule} {f.path}:{f.line} {f.confidence}")
    return out


def test_every_rule_has_fixtures_and_docs():
    for code, rule in RULES.items():
        d = FIXTURES / code
        assert list(d.glob("bad-*.mbox")), f"{code} has no bad- fixture"
        assert list(d.glob("ok-*.mbox")), f"{code} has no ok- fixture"
        doc = rule.doc()
        for section in engine.DOC_SECTIONS:
            assert f"## {section}" in doc, f"{code} docstring lacks '## {section}'"


@pytest.mark.parametrize("code,mbox", list(_cases()))
def test_rule_fixture(code, mbox, tmp_path):
    assert code in RULES, f"fixtures for unknown rule {code}"
    got = findings_lines(code, mbox, tmp_path)
    assert all(line.startswith(code + " ") for line in got)
    if mbox.name.startswith("ok-"):
        assert got == [], f"ok fixture produced findings: {got}"
        return
    assert got, "bad fixture produced no finding"
    expected = mbox.with_suffix(".expected")
    if os.environ.get("REVIEWBOT_REGEN"):
        expected.write_text("".join(line + "\n" for line in got))
    assert expected.exists(), f"no snapshot {expected.name}: run with REVIEWBOT_REGEN=1 and review it"
    assert got == expected.read_text().splitlines()
