"""DUP003 (open-coded-helper), DUP004 (private-copy-of-helper) and DUP001's
opposite-job filter: behaviour beyond the fixture snapshots."""
from __future__ import annotations

from pathlib import Path

import pytest

from reviewbot.analysis import cparse
from reviewbot.analysis.helpers import HELPERS, SHAPES, find_shape
from reviewbot.review import Options, review_mbox
from rules.duplicated_code import opposite_jobs

FIXTURES = Path(__file__).resolve().parent.parent / "rules" / "fixtures"


def _shape(shape: str, body: str) -> list[str]:
    text = "int f(void)\n{\n" + body + "\n}\n"
    tree = cparse.parse(text)
    added = set(range(1, text.count("\n") + 2))
    return [m.text for m in find_shape(shape, tree.root_node, added)]


def test_every_helper_shape_is_known():
    for h in HELPERS.values():
        assert h.shapes and all(s in SHAPES for s in h.shapes), h.name
        assert h.guarded


@pytest.mark.parametrize("shape,body,hit", [
    ("mul-alloc", "p = kmalloc(n * sizeof(*p), GFP_KERNEL);", True),
    ("mul-alloc", "mem = n * sizeof(*q); p = kzalloc(sizeof(*p) + mem, GFP_KERNEL);", True),
    ("mul-alloc", "p = kmalloc(NR * sizeof(*p), GFP_KERNEL);", False),          # constant
    ("mul-alloc", "p = kmalloc(array_size(n, sizeof(*p)), GFP_KERNEL);", False),
    ("mask-shift", "w = (reg & PCI_EXP_LNKSTA_NLW) >> 4;", True),
    ("mask-shift", "w = reg >> 4;", False),
    ("nested-minmax", "return min(255, max(1, value));", True),
    ("nested-minmax", "return min(a, b);", False),
    ("ternary-minmax", "x = a < b ? a : b;", True),
    ("ternary-minmax", "x = a < b ? c : b;", False),
    ("byte-assembly", "ret = (buf[2] << 8) + buf[3];", True),
    ("byte-assembly", "ret = (buf[2] << 8) + other[3];", False),
    ("irq_find_mapping", "generic_handle_irq(irq_find_mapping(d, hw));", True),
    ("sizeof-div", "n = sizeof(tbl) / sizeof(tbl[0]);", True),
    ("alloc+copy_from_user", "p = kmalloc(len, GFP_KERNEL); if (copy_from_user(p, ubuf, len)) return -EFAULT;", True),
    ("alloc-then-clear", "c = kmalloc(sizeof(*c), GFP_KERNEL); memset(c, 0, sizeof(*c));", True),
    ("alloc-then-clear", "c = kzalloc(sizeof(*c), GFP_KERNEL); memset(d, 0, sizeof(*d));", False),
    ("list_del+add", "list_del(&e->node); list_add(&e->node, &head);", True),
    ("find-bit-loop", "for (i = find_first_bit(m, 32); i < 32; i = find_next_bit(m, 32, i + 1)) f(i);", True),
    ("atomic-op-then-read", "atomic_inc(&d->n); s = atomic_read(&d->n);", True),
    ("checked-mul-alloc", "if (check_mul_overflow(n, sizeof(*c), &sz)) return -E; c = kzalloc(sz, GFP_KERNEL);", True),
])
def test_shapes(shape, body, hit):
    assert bool(_shape(shape, body)) is hit


@pytest.mark.parametrize("a,b,opposite", [
    ("ad7768_spi_reg_read", "ad7768_spi_reg_write", True),
    ("foo_port_lock", "foo_port_unlock", True),
    ("mt_readl", "mt_writel", True),
    ("foo_rxq_init", "foo_txq_init", True),
    ("foo_suspend", "foo_resume", True),
    ("sk_lookup_prog_detach", "skb_flow_dissector_bpf_prog_detach", False),
    ("foo_probe", "bar_probe", False),
])
def test_opposite_jobs(a, b, opposite):
    assert opposite_jobs(a, b) is opposite


def _mail(diff: str) -> bytes:
    return ("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            "From: Jane Developer <jane@example.org>\nDate: Mon, 2 Jan 2023 00:00:00 +0000\n"
            "Subject: [PATCH] iio: accel: bound the rate\nMessage-ID: <t1@example.org>\n\n"
            "Bound the rate.\n\nSigned-off-by: Jane Developer <jane@example.org>\n---\n" + diff).encode()


def _codes(data: bytes, code: str):
    res = review_mbox(data, Options(only_rules={code}))
    return [(f.rule, f.confidence, f.line) for r in res.patches for f in r.findings]


def test_added_clamp_without_a_tree():
    diff = ("diff --git a/drivers/iio/imu/x.c b/drivers/iio/imu/x.c\n--- a/drivers/iio/imu/x.c\n"
            "+++ b/drivers/iio/imu/x.c\n@@ -10,6 +10,7 @@ static int x_convert(int value)\n"
            " {\n \tint v;\n \n+\tv = min(255, max(1, value));\n \treturn v;\n }\n \n")
    got = _codes(_mail(diff), "DUP003")
    assert got and got[0][:2] == ("DUP003", "medium")


def test_helper_replaced_by_its_body_names_what_it_guarded():
    diff = ("diff --git a/drivers/x/y.c b/drivers/x/y.c\n--- a/drivers/x/y.c\n+++ b/drivers/x/y.c\n"
            "@@ -10,7 +10,7 @@ static int y_alloc(struct y *y, int n)\n {\n"
            "-\ty->tbl = kcalloc(n, sizeof(*y->tbl), GFP_KERNEL);\n"
            "+\ty->tbl = kmalloc(n * sizeof(*y->tbl), GFP_KERNEL);\n"
            " \tif (!y->tbl)\n \t\treturn -ENOMEM;\n \treturn 0;\n }\n \n")
    res = review_mbox(_mail(diff), Options(only_rules={"DUP003"}))
    fs = [f for r in res.patches for f in r.findings]
    assert len(fs) == 1 and fs[0].confidence == "medium"
    assert "kcalloc() checked n * size for overflow" in fs[0].message


def test_overflow_shape_alone_is_low():
    diff = ("diff --git a/drivers/x/y.c b/drivers/x/y.c\n--- a/drivers/x/y.c\n+++ b/drivers/x/y.c\n"
            "@@ -10,6 +10,7 @@ static int y_alloc(struct y *y, int n)\n {\n"
            "+\ty->tbl = kmalloc(n * sizeof(*y->tbl), GFP_KERNEL);\n"
            " \tif (!y->tbl)\n \t\treturn -ENOMEM;\n \treturn 0;\n }\n \n")
    assert [c for _, c, _ in _codes(_mail(diff), "DUP003")] == ["low"]
