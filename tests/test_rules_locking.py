"""The locking rules (LCK001-LCK005) on real linux-6.1 code, beyond the
fixture snapshots: series-wide ABBA, trylock/guard/goto handling, and
pre-existing problems not reported as new."""
from __future__ import annotations

import pytest

from reviewbot.review import Options, review_mbox
from support.ktree import (KernelSourceMissing, kernel_files, make_series, make_tree, review_json,
                           whole_file_mbox)

SOCKMAP = "net/core/sock_map.c"


@pytest.fixture(scope="module")
def sockmap_src():
    try:
        return kernel_files([SOCKMAP])[SOCKMAP].decode()
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))


def rep(old, new):
    def edit(text):
        assert text.count(old) == 1, old
        return text.replace(old, new)
    return edit


def review(tmp_path, src, patches, code, *, base_edit=None, tree=True):
    """Review a series of edits to sock_map.c; returns [(patch index, Finding)]."""
    base = base_edit(src) if base_edit else src
    make_tree(tmp_path / "tree", {SOCKMAP: base})
    msgs = make_series(tmp_path / "tree", [(s, {SOCKMAP: e}) for s, e in patches])
    res = review_mbox(b"".join(msgs), Options(tree=str(tmp_path / "tree") if tree else None,
                                             only_rules={code}, min_confidence="low"))
    assert not [n for n in res.notes if "failed" in n], res.notes
    return [(r.patch.index, f) for r in res.patches for f in r.findings]


# -- LCK001 -------------------------------------------------------------------

DEL_LINK_UNLOCK = ("\tspin_unlock_bh(&psock->link_lock);\n"
                   "\tif (strp_stop || verdict_stop) {\n"
                   "\t\twrite_lock_bh(&sk->sk_callback_lock);\n")
LINK_START = ("\twrite_lock_bh(&sk->sk_callback_lock);\n"
              "\tif (stream_parser && stream_verdict && !psock->saved_data_ready) {\n")


def _nest_callback_under_link(text):
    # patch 1: keep link_lock held while stopping the parsers (link_lock -> sk_callback_lock)
    text = rep(DEL_LINK_UNLOCK, "\tif (strp_stop || verdict_stop) {\n"
               "\t\twrite_lock_bh(&sk->sk_callback_lock);\n")(text)
    return rep("\t\twrite_unlock_bh(&sk->sk_callback_lock);\n\t}\n}\n",
               "\t\twrite_unlock_bh(&sk->sk_callback_lock);\n\t}\n"
               "\tspin_unlock_bh(&psock->link_lock);\n}\n")(text)


def _link_under_callback(text):
    # patch 2: look at the links under sk_callback_lock (sk_callback_lock -> link_lock)
    return rep(LINK_START, "\twrite_lock_bh(&sk->sk_callback_lock);\n"
               "\tspin_lock_bh(&psock->link_lock);\n"
               "\tif (list_empty(&psock->link))\n"
               "\t\tret = -ENOENT;\n"
               "\tspin_unlock_bh(&psock->link_lock);\n"
               "\tif (stream_parser && stream_verdict && !psock->saved_data_ready) {\n")(text)


def test_abba_across_two_patches_names_both_functions(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [
        ("bpf, sockmap: stop parsers with the link list locked", _nest_callback_under_link),
        ("bpf, sockmap: check the links under sk_callback_lock", _link_under_callback),
    ], "LCK001")
    second = [f for i, f in got if i == 2]
    assert len(second) == 1, got
    f = second[0]
    assert "sock_map_link()" in f.message and "sock_map_del_link()" in f.message
    assert "link_lock" in f.message and "sk_callback_lock" in f.message
    assert f.related and f.related[0].path == SOCKMAP
    # the related site is the nesting patch 1 added in sock_map_del_link()
    assert "sock_map_del_link()" in f.related[0].message


def test_same_order_twice_is_not_an_inversion(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [
        ("bpf, sockmap: stop parsers with the link list locked", _nest_callback_under_link),
    ], "LCK001")
    assert got == []


# -- LCK002 -------------------------------------------------------------------

UPDATE_LOCKED = "\traw_spin_lock_bh(&stab->lock);\n\tosk = stab->sks[idx];\n"


def test_goto_past_the_unlock_is_flagged_and_names_the_goto(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse self replace", rep(
        UPDATE_LOCKED, UPDATE_LOCKED + "\tif (osk == sk) {\n\t\tret = -EEXIST;\n\t\tgoto out_free;\n\t}\n"))],
        "LCK002")
    assert len(got) == 1
    f = got[0][1]
    assert "goto out_free" in f.message and "sock_map_update_common()" in f.message
    assert "stab->lock" in f.message


def test_goto_to_the_unlock_label_is_fine(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse self replace", rep(
        UPDATE_LOCKED, UPDATE_LOCKED + "\tif (osk == sk) {\n\t\tret = -EEXIST;\n\t\tgoto out_unlock;\n\t}\n"))],
        "LCK002")
    assert got == []


ADD_LINK = ("\tlink->map = map;\n\tspin_lock_bh(&psock->link_lock);\n"
            "\tlist_add_tail(&link->list, &psock->link);\n\tspin_unlock_bh(&psock->link_lock);\n")


def _add_link_with(lock_line, early):
    return rep(ADD_LINK, "\tlink->map = map;\n" + lock_line + early
               + "\tlist_add_tail(&link->list, &psock->link);\n\tspin_unlock_bh(&psock->link_lock);\n")


def test_trylock_failure_return_is_not_an_imbalance(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: do not spin on the link lock", _add_link_with(
        "\tif (!spin_trylock_bh(&psock->link_lock))\n\t\treturn;\n", ""))], "LCK002")
    assert got == []


def test_return_in_the_trylock_success_branch_is_flagged(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: do not spin on the link lock", _add_link_with(
        "\tif (!spin_trylock_bh(&psock->link_lock))\n\t\treturn;\n",
        "\tif (list_empty(&psock->link))\n\t\treturn;\n"))], "LCK002")
    assert len(got) == 1 and "psock->link_lock" in got[0][1].message


def test_guard_needs_no_unlock(tmp_path, sockmap_src):
    new = ("\tlink->map = map;\n\tguard(spinlock_bh)(&psock->link_lock);\n"
           "\tif (!psock->sk)\n\t\treturn;\n\tlist_add_tail(&link->list, &psock->link);\n")
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: use guard for the link lock",
                                          rep(ADD_LINK, new))], "LCK002")
    assert got == []


def test_early_return_with_plain_lock_is_flagged(tmp_path, sockmap_src):
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: skip dead psocks", _add_link_with(
        "\tspin_lock_bh(&psock->link_lock);\n", "\tif (!psock->sk)\n\t\treturn;\n"))], "LCK002")
    assert len(got) == 1
    assert "sock_map_add_link()" in got[0][1].message


def test_pre_existing_imbalance_is_not_reported_as_new(tmp_path, sockmap_src):
    leaky = _add_link_with("\tspin_lock_bh(&psock->link_lock);\n", "\tif (!psock->sk)\n\t\treturn;\n")
    # the base tree already has the leak; the patch only touches the function
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: comment the link list", rep(
        "\tlink->link_raw = link_raw;\n", "\t/* new links go last */\n\tlink->link_raw = link_raw;\n"))],
        "LCK002", base_edit=leaky)
    assert got == []


def test_rcu_section_left_open_is_flagged(tmp_path, sockmap_src):
    old = "\tpsock = sk_psock(sk);\n\tif (psock) {\n\t\tif (sk->sk_prot->close != sock_map_close) {\n"
    new = ("\tpsock = sk_psock(sk);\n\tif (psock && sock_flag(sk, SOCK_DEAD))\n\t\treturn ERR_PTR(-EBUSY);\n"
           + old[len("\tpsock = sk_psock(sk);\n"):])
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse dead sockets", rep(old, new))], "LCK002")
    assert len(got) == 1
    assert "rcu_read_unlock()" in got[0][1].message and "sock_map_psock_get_checked()" in got[0][1].message


def test_partial_function_without_tree_is_not_judged(tmp_path, sockmap_src):
    # reviewed without a tree, the hunk shows only part of sock_map_update_common()
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse self replace", rep(
        UPDATE_LOCKED, UPDATE_LOCKED + "\tif (osk == sk)\n\t\treturn -EEXIST;\n"))], "LCK002", tree=False)
    assert got == []


# -- LCK003 -------------------------------------------------------------------

def test_mutex_under_spinlock_is_flagged_gfp_atomic_is_not(tmp_path, sockmap_src):
    sleepy = _add_link_with("\tspin_lock_bh(&psock->link_lock);\n", "\tmsleep(1);\n")
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: slow down", sleepy)], "LCK003")
    assert len(got) == 1 and "msleep()" in got[0][1].message and "psock->link_lock" in got[0][1].message
    atomic = _add_link_with("\tspin_lock_bh(&psock->link_lock);\n",
                            "\tlink->link_raw = kmemdup(link_raw, 8, GFP_ATOMIC);\n")
    assert review(tmp_path / "b", sockmap_src, [("bpf, sockmap: copy", atomic)], "LCK003") == []


def test_gfp_kernel_inside_rcu_section_is_flagged(tmp_path, sockmap_src):
    old = "\trcu_read_lock();\n\tpsock = sk_psock(sk);\n\tif (psock) {\n"
    new = "\trcu_read_lock();\n\tpsock = sk_psock(sk);\n\tif (psock) {\n\t\tvoid *p = kzalloc(64, GFP_KERNEL);\n\n\t\tkfree(p);\n"
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: scratch", rep(old, new))], "LCK003")
    assert len(got) == 1
    assert "GFP_KERNEL" in got[0][1].message and "RCU" in got[0][1].message


def test_sleep_already_under_the_lock_is_not_new(tmp_path, sockmap_src):
    sleepy = _add_link_with("\tspin_lock_bh(&psock->link_lock);\n", "\tmsleep(1);\n")
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: comment", rep(
        "\tlink->link_raw = link_raw;\n", "\t/* x */\n\tlink->link_raw = link_raw;\n"))],
        "LCK003", base_edit=sleepy)
    assert got == []


# -- LCK005 -------------------------------------------------------------------

def test_state_check_kept_under_the_lock_is_fine(tmp_path, sockmap_src):
    old = "\tbh_lock_sock(sk);\n\tif (!sock_map_sk_state_allowed(sk))\n"
    new = "\tbh_lock_sock(sk);\n\tif (sock_flag(sk, SOCK_DEAD) || !sock_map_sk_state_allowed(sk))\n"
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse dead sockets", rep(old, new))], "LCK005")
    assert got == []


def test_check_then_act_outside_the_lock_is_flagged(tmp_path, sockmap_src):
    old = "\tlocal_bh_disable();\n\tbh_lock_sock(sk);\n"
    new = ("\tif (sk->sk_user_data)\n\t\treturn -EBUSY;\n\n\tlocal_bh_disable();\n\tbh_lock_sock(sk);\n"
           "\tsk->sk_user_data = NULL;\n")
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse sockets with user data", rep(old, new))],
                 "LCK005")
    assert len(got) == 1
    assert "sk->sk_user_data" in got[0][1].message and "sock_map_update_elem()" in got[0][1].message


def test_lock_taken_unless_a_flag_says_held_is_not_mailed():
    """dm9000 takes addr_lock in its PHY helpers `if (!db->in_timeout)`, so
    the timeout path (which holds db->lock) never takes it: the order the
    callee suggests is only a maybe, kept out of replies (low confidence)."""
    from support import ktree
    from reviewbot import review
    f = "drivers/net/ethernet/davicom/dm9000.c"
    lines = ktree.kernel_files([f])[f].decode().splitlines()
    diff = (f"diff --git a/{f} b/{f}\nnew file mode 100644\n--- /dev/null\n+++ b/{f}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n" + "".join("+" + line + "\n" for line in lines))
    msg = (f"From: A <a@example.org>\nSubject: [PATCH] net: add dm9000\nMessage-ID: <dm9000@example.org>\n\n"
           f"Add it.\n---\n{diff}").encode()
    res = review.review_mbox(msg, review.Options(only_rules={"LCK001"}))
    found = [x for p in res.patches for x in p.findings]
    assert found and all(x.confidence == "low" for x in found)
    assert res.replies == []


def test_same_findings_whatever_the_hash_seed(tmp_path):
    """Which acquisition a message names must not depend on set order
    (string hashing differs per process): dentry_kill() in fs/dcache.c
    reaches __dentry_kill() with d_lock taken on two paths (by
    __lock_parent() and by spin_lock()); every process must name the same."""
    try:
        mbox = whole_file_mbox(tmp_path / "dcache.mbox", "fs/dcache.c")
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))
    outs = []
    for seed in ("1", "4", "5"):
        got = review_json([str(mbox), "--rule", "LCK003"], PYTHONHASHSEED=seed)
        findings = [f["message"] for p in got["patches"] for f in p["findings"]]
        assert any("dentry_kill() calls it with" in m for m in findings), findings
        outs.append(got)
    assert outs[0] == outs[1] == outs[2]


# -- diff only: functions rebuilt from the hunks that show them ----------------

UNLOCK_END = "\traw_spin_unlock_bh(&stab->lock);\n\treturn 0;\nout_unlock:\n"


def _two_hunks(early_return_after):
    """sock_map_update_common() changed in two places far apart: an early
    return added after EARLY_RETURN_AFTER, and a comment by the unlock at
    the end (so that the second hunk shows the unlock)."""
    def edit(text):
        text = rep(early_return_after, early_return_after + "\tif (osk == sk)\n\t\treturn -EEXIST;\n")(text)
        return rep(UNLOCK_END, "\t/* the old socket goes last */\n" + UNLOCK_END)(text)
    return edit


def test_diff_only_missing_unlock_decided_by_the_shown_lines_is_raised(tmp_path, sockmap_src):
    # the lock, the new return and (in another hunk) the unlock are shown;
    # the function's head is not: it is rebuilt from the hunk's section line
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse self replace", _two_hunks(UPDATE_LOCKED))],
                 "LCK002", tree=False)
    assert len(got) == 1
    f = got[0][1]
    assert f.confidence == "medium" and "sock_map_update_common()" in f.message


def test_diff_only_leak_behind_a_gap_is_not_mailed(tmp_path, sockmap_src):
    # the new return sits in a hunk of its own, away from the lock: what the
    # gap in between holds is unknown, so the finding stays low
    early = "\tsock_map_add_link(psock, link, map, &stab->sks[idx]);\n"
    got = review(tmp_path, sockmap_src, [("bpf, sockmap: refuse self replace", _two_hunks(early))],
                 "LCK002", tree=False)
    assert all(f.confidence == "low" for _, f in got)


# -- with the tree's knowledge base ---------------------------------------------

def test_a_callee_that_sleeps_several_calls_down_is_named_with_its_chain(tmp_path, monkeypatch):
    """sdhci_check_ro() made to call mmc_gpio_get_ro() under host->lock:
    the knowledge base of the tree knows it ends in the sleeping GPIO
    accessor (slot-gpio.c -> gpiolib.c), which no file of the patch shows."""
    from reviewbot.tree import knowledge as kn
    files = ["drivers/mmc/host/sdhci.c", "drivers/mmc/core/slot-gpio.c", "drivers/gpio/gpiolib.c"]
    try:
        real = kernel_files(files)
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    base = make_tree(tree, real)
    kn.build(str(tree), base, tmp_path / "cache", procs=1)
    old = "\tbool allow_invert = false;\n\tint is_readonly;\n\n\tif (host->flags & SDHCI_DEVICE_DEAD) {\n"
    end = "\t\tallow_invert = true;\n\t}\n\n"

    def edit(text):
        assert text.count(old) == 1 and text.count(end) == 1
        text = text.replace(old, "\tbool allow_invert = false;\n\tunsigned long flags;\n\tint is_readonly;\n\n"
                            "\tspin_lock_irqsave(&host->lock, flags);\n\tif (host->flags & SDHCI_DEVICE_DEAD) {\n")
        return text.replace(end, "\t\tallow_invert = true;\n\t}\n\tspin_unlock_irqrestore(&host->lock, flags);\n\n")
    msgs = make_series(tree, [("mmc: sdhci: read the switch under the host lock", {files[0]: edit})])
    res = review_mbox(b"".join(msgs), Options(tree=str(tree), only_rules={"LCK003"}, min_confidence="low"))
    got = [f for r in res.patches for f in r.findings]
    assert len(got) == 1 and got[0].confidence == "medium"
    assert "mmc_gpio_get_ro() (it calls gpiod_get_value_cansleep()" in got[0].message
    assert "host->lock held" in got[0].message


def test_a_get_put_pair_of_another_file_is_followed_as_a_lock(tmp_path, monkeypatch):
    """dm_get_live_table() (drivers/md/dm.c) returns inside an SRCU
    read-side section that dm_put_live_table() ends: the tree's knowledge
    base vouches for the pair, so a new return between them in another
    file is a section left open; returning after the put is fine."""
    from reviewbot.tree import knowledge as kn
    files = ["drivers/md/dm.c", "drivers/md/dm-verity-loadpin.c"]
    try:
        real = kernel_files(files)
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    base = make_tree(tree, real)
    kn.build(str(tree), base, tmp_path / "cache", procs=1)
    old = "\tif (!table || table->num_targets != 1)\n\t\tgoto out;\n"

    def run(new):
        def edit(text):
            assert text.count(old) == 1
            return text.replace(old, new)
        msgs = make_series(tree, [("dm verity: loadpin: return early without a single target", {files[1]: edit})])
        res = review_mbox(b"".join(msgs), Options(tree=str(tree), only_rules={"LCK002"}, min_confidence="low"))
        return [f for r in res.patches for f in r.findings]
    got = run("\tif (!table || table->num_targets != 1)\n\t\treturn false;\n")
    assert len(got) == 1 and got[0].confidence == "medium"
    assert "dm_put_live_table()" in got[0].message and "RCU read-side" in got[0].message
    assert run("\tif (!table || table->num_targets != 1) {\n\t\tdm_put_live_table(md, srcu_idx);\n"
               "\t\tdm_put(md);\n\t\treturn false;\n\t}\n") == []


def _kb_review(tmp_path, monkeypatch, files, target, subject, edit, code):
    """Review one edit of TARGET in a tree of the real FILES, with the
    tree's knowledge base built; returns the findings of CODE."""
    from reviewbot.tree import knowledge as kn
    try:
        real = kernel_files(files)
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    base = make_tree(tree, real)
    kn.build(str(tree), base, tmp_path / "cache", procs=1)
    msgs = make_series(tree, [(subject, {target: edit})])
    res = review_mbox(b"".join(msgs), Options(tree=str(tree), only_rules={code}, min_confidence="low"))
    return [f for r in res.patches for f in r.findings]


MGMT = ["net/bluetooth/mgmt.c", "net/bluetooth/mgmt_util.c", "net/bluetooth/hci_core.c",
        "include/net/bluetooth/hci_core.h"]
MGMT_OLD = "\tif (!cmd) {\n\t\terr = -ENOMEM;\n\t\tgoto failed;\n\t}\n\n\terr = hci_send_cmd(hdev, HCI_OP_WRITE_AUTH_ENABLE"


@pytest.mark.parametrize("new, found", [
    ("\tif (!cmd)\n\t\treturn -ENOMEM;\n\n\terr = hci_send_cmd(hdev, HCI_OP_WRITE_AUTH_ENABLE", True),
    ("\tif (!cmd) {\n\t\thci_dev_unlock(hdev);\n\t\treturn -ENOMEM;\n\t}\n\n"
     "\terr = hci_send_cmd(hdev, HCI_OP_WRITE_AUTH_ENABLE", False)])
def test_a_wrapper_lock_whose_object_goes_to_calls_that_release_nothing_stays_held(
        tmp_path, monkeypatch, new, found):
    """set_link_security() hands hdev to many calls under hci_dev_lock();
    the tree says none of them releases a lock (same-file helpers, macros,
    mgmt_util.c, hci_core.c), so a new early return still holds it."""
    def edit(text):
        assert text.count(MGMT_OLD) == 1
        return text.replace(MGMT_OLD, new)
    got = _kb_review(tmp_path, monkeypatch, MGMT, MGMT[0],
                     "Bluetooth: MGMT: return early when the pending command cannot be added", edit, "LCK002")
    assert bool(got) == found
    if found:
        assert len(got) == 1 and "hci_dev_lock()" in got[0].message


TTY = ["drivers/tty/serdev/serdev-ttyport.c", "drivers/tty/tty_mutex.c"]
TTY_OLD = "\ttty_lock(tty);\n\tif (tty->ops->close)\n\t\ttty->ops->close(tty, NULL);\n\ttty_unlock(tty);\n"


@pytest.mark.parametrize("new, found", [
    ("\ttty_lock(tty);\n\tif (!tty->ops->close)\n\t\ttty_unlock(tty);\n\telse\n"
     "\t\ttty->ops->close(tty, NULL);\n\ttty_unlock(tty);\n", True),
    ("\ttty_lock(tty);\n\tif (!tty->ops->close) {\n\t\ttty_unlock(tty);\n\t\treturn;\n\t}\n"
     "\ttty->ops->close(tty, NULL);\n\ttty_unlock(tty);\n", False)])
def test_a_wrapper_unlock_on_a_path_that_already_unlocked_is_flagged(tmp_path, monkeypatch, new, found):
    """tty_lock()/tty_unlock() (tty_mutex.c) in serdev's ttyport_close():
    an unlock for a missing close op that then falls into the common
    unlock releases twice."""
    def edit(text):
        assert text.count(TTY_OLD) == 1
        return text.replace(TTY_OLD, new)
    got = _kb_review(tmp_path, monkeypatch, TTY, TTY[0], "serdev: ttyport: unlock early without a close op",
                     edit, "LCK007")
    assert bool(got) == found
    if found:
        assert "tty_unlock(tty)" in got[0].message and "double unlock" in got[0].message
