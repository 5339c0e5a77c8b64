"""The preempt-rt, hot-path and uapi rules on the real seed threads, and
what a reader of their findings sees."""
from __future__ import annotations

import pathlib
import re

import pytest

from reviewbot.review import Options, review_mbox
from test_rule_fixtures import FIXTURES, _make_tree

SEEDS = pathlib.Path(__file__).resolve().parent / "data" / "seeds"
RT_RULES = {"RT001", "RT002", "RT003", "RT004", "HOT001", "UAPI001"}


def _findings(res):
    return [f for r in res.patches for f in r.findings] + list(res.series_findings)


def _fixture(code, name, tmp_path):
    mbox = FIXTURES / code / f"{name}.mbox"
    tree_src = mbox.with_suffix(".tree")
    if not tree_src.exists():
        tree_src = mbox.parent / (mbox.stem.split("-", 1)[1] + ".tree")
    tmp_path.mkdir(parents=True, exist_ok=True)
    tree = _make_tree(tree_src, tmp_path / "tree")
    return review_mbox(mbox.read_bytes(), Options(tree=tree, only_rules={code}))


def test_seed004_whitespace_damaged_rt_ifdef_is_reported_and_only_by_rt001():
    """The xfrm v2 patch (spaces for tabs, will not apply anywhere) still
    gets the maintainer's objection, and the locked helpers it adds are
    not mistaken for unlocked ones."""
    res = review_mbox((SEEDS / "seed004.mbox").read_bytes(), Options(only_rules=RT_RULES))
    got = _findings(res)
    assert [f.rule for f in got] == ["RT001"]
    f = got[0]
    assert f.path == "net/xfrm/xfrm_input.c" and f.confidence == "high"
    assert "CONFIG_PREEMPT_RT_FULL no longer exists" in f.message


def test_seed003_without_patch_says_so_and_finds_nothing():
    res = review_mbox((SEEDS / "seed003.mbox").read_bytes(), Options(only_rules=RT_RULES))
    assert res.patches == []
    assert any("no patch" in n for n in res.notes)


def _quoted_patch(seed: pathlib.Path) -> bytes:
    """The patch a reply quotes, unquoted back into a patch mail (the first
    copy of the reply; `> >> ` levels stripped)."""
    text = seed.read_text()
    first = text.split("\nFrom mboxrd@z ", 1)[0]
    diff = []
    for line in first.split("\n"):
        m = re.match(r"^> >> ?(.*)$", line)
        if m:
            diff.append(m.group(1))
    body = "\n".join(diff)
    body = body[body.index("diff --git"):]
    return ("From: Steven Price <steven.price@arm.com>\n"
            "Subject: [PATCH v13 7/8] KVM: arm64: ioctl to fetch/store tags in a guest\n"
            "Message-ID: <seed001-quoted@reviewbot.invalid>\n\n"
            "Quoted back from the review.\n---\n" + body + "\n").encode()


def test_seed001_uapi_pointer_member_is_questioned():
    res = review_mbox(_quoted_patch(SEEDS / "seed001.mbox"), Options(only_rules={"UAPI001"}))
    got = _findings(res)
    assert len(got) == 1
    f = got[0]
    assert f.path == "arch/arm64/include/uapi/asm/kvm.h"
    assert "void __user *addr" in f.message and "__u64" in f.message
    assert f.confidence == "high"


def test_uapi_reserved_field_checked_only_when_series_drops_the_check(tmp_path):
    bad = _findings(_fixture("UAPI001", "bad-kvm-mte-tags-noresv", tmp_path / "a"))
    assert any("reserved" in f.message and "-EINVAL" in f.message for f in bad)
    real = _findings(_fixture("UAPI001", "bad-kvm-mte-tags", tmp_path / "b"))
    assert not any("reserved" in f.message for f in real), "linux 6.1 does check reserved[]"


@pytest.mark.parametrize("code,name,func", [
    ("RT002", "bad-p54-stats", "p54_tx_qos_accounting_free()"),
    ("RT003", "bad-tegra-dbc", "tegra_gpio_irq_set_type()"),
    ("RT004", "bad-nci-uart", "nci_uart_send()"),
    ("HOT001", "bad-landlock-open", "hook_file_open()"),
])
def test_findings_read_as_questions_naming_functions(code, name, func, tmp_path):
    got = _findings(_fixture(code, name, tmp_path))
    assert got
    for f in got:
        assert func in f.message
        assert "?" in f.message
        assert not re.search(r"\bline \d+|\b(WARNING|ERROR|BUG):", f.message)


def test_rt002_names_the_dropped_lock(tmp_path):
    f = _findings(_fixture("RT002", "bad-p54-stats", tmp_path))[0]
    assert "priv->tx_stats_lock" in f.message and f.confidence == "high"


def test_rt004_points_at_the_locked_user(tmp_path):
    f = _findings(_fixture("RT004", "bad-nci-uart", tmp_path))[0]
    assert "nci_uart_dequeue()" in f.message
    assert f.related and f.related[0].path == "net/nfc/nci/uart.c"
