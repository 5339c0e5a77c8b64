"""RT005-RT007 and the RT context table (reviewbot.analysis.rtctx) on real
6.1 code: the rule fixtures, with and without a tree."""
from __future__ import annotations

from reviewbot.analysis import rtctx
from reviewbot.review import Options, review_mbox
from test_rule_fixtures import FIXTURES
from test_rules_rt_seed import _findings, _fixture


def test_rt005_demoted_irqchip_lock_names_the_callback(tmp_path):
    got = _findings(_fixture("RT005", "bad-siox", tmp_path))
    assert [(f.rule, f.line, f.confidence) for f in got] == [("RT005", 18, "high")]
    msg = got[0].message
    assert "raw_spinlock_t irqlock into a spinlock_t" in msg and "irq_chip" in msg
    assert got[0].related and got[0].related[0].path == "drivers/gpio/gpio-siox.c"


def test_rt005_without_tree_still_sees_the_demotion():
    res = review_mbox((FIXTURES / "RT005" / "bad-siox.mbox").read_bytes(), Options(only_rules={"RT005"}))
    got = _findings(res)
    assert got and got[0].path == "drivers/gpio/gpio-siox.c" and got[0].line == 18


def test_rtctx_roots_of_a_real_irqchip_driver():
    text = (FIXTURES / "RT005" / "siox.tree" / "drivers/gpio/gpio-siox.c").read_text()
    roots = {r.name: r for r in rtctx.roots(text)}
    assert "gpio_siox_irq_ack" in roots and roots["gpio_siox_irq_ack"].strong
    assert ".irq_ack" in roots["gpio_siox_irq_ack"].why
    # its probe is not atomic
    assert "gpio_siox_probe" not in roots


def test_rtctx_oneshot_primary_stays_hard_but_plain_request_irq_is_threaded():
    text = ("static irqreturn_t a_isr(int irq, void *d)\n{\n\treturn IRQ_WAKE_THREAD;\n}\n"
            "static int probe(void)\n{\n"
            "\tret = devm_request_threaded_irq(dev, irq, a_isr, a_thread, IRQF_ONESHOT, \"a\", p);\n"
            "\tret = devm_request_irq(dev, irq2, b_isr, 0, \"b\", p);\n"
            "\tret = request_irq(irq3, c_isr, IRQF_NO_THREAD, \"c\", p);\n}\n")
    roots = {r.name: r for r in rtctx.roots(text)}
    assert not roots["a_isr"].strong and "ONESHOT" in roots["a_isr"].why
    assert "b_isr" not in roots
    assert roots["c_isr"].strong


def test_rt006_soft_hrtimer_mode_is_asked_about(tmp_path):
    got = _findings(_fixture("RT006", "bad-watchdog", tmp_path))
    assert [f.rule for f in got] == ["RT006"]
    assert "HRTIMER_MODE_REL_HARD gives way to HRTIMER_MODE_REL" in got[0].message


def test_rt007_local_lock_to_preempt_disable(tmp_path):
    got = _findings(_fixture("RT007", "bad-mlock", tmp_path))
    assert [(f.rule, f.line) for f in got] == [("RT007", 217)]
    assert "where it had local_lock()" in got[0].message
