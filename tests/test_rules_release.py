"""The missing-release rules (REL001-REL003) on real linux-6.1 files:
what a reviewer would notice beyond the fixture snapshots."""
from __future__ import annotations

import pathlib

import pytest

from reviewbot.review import Options, review_mbox
from support.ktree import KernelSourceMissing, kernel_files, make_patch, make_series, make_tree

DATA = pathlib.Path(__file__).parent / "data"
SOCKMAP = "net/core/sock_map.c"
WDT = "drivers/watchdog/gpio_wdt.c"
DCCP = "net/dccp/proto.c"
AXP = "drivers/edac/armada_xp_edac.c"
ALX = "drivers/net/ethernet/atheros/alx/main.c"
REPLACE = "fs/btrfs/dev-replace.c"
AHB = "drivers/net/wireless/ath/ath10k/ahb.c"
TOPSTAR = "drivers/platform/x86/topstar-laptop.c"
SPMI = "drivers/spmi/spmi.c"


@pytest.fixture(scope="module")
def files():
    try:
        return kernel_files([SOCKMAP, WDT, DCCP, AXP, ALX, REPLACE, AHB, TOPSTAR, SPMI])
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))


def _tree(tmp_path, files, *paths):
    tree = tmp_path / "tree"
    make_tree(tree, {p: files[p] for p in paths})
    return tree


def _sub(old, new):
    def edit(text):
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


def _findings(mbox: bytes, tree, code: str, with_tree: bool = True):
    res = review_mbox(mbox, Options(tree=str(tree) if with_tree else None, only_rules={code}))
    assert not [n for n in res.notes if n.startswith("rule ")], res.notes
    return {r.patch.index: r.findings for r in res.patches}


# -- REL001 ----------------------------------------------------------------

_SOCK_HASH_OPS = "const struct bpf_map_ops sock_hash_ops = {\n"


def _lru_twin(text: str, with_release: bool) -> str:
    start = text.index(_SOCK_HASH_OPS)
    end = text.index("};\n", start) + 3
    table = text[start:end].replace("sock_hash_ops", "sock_hash_lru_ops")
    if not with_release:
        table = table.replace("\t.map_release_uref\t= sock_hash_release_progs,\n", "")
    return text[:end] + "\n" + table + text[end:]


@pytest.mark.parametrize("with_release", [False, True])
def test_new_twin_table_without_release_hook(tmp_path, files, with_release):
    """seed002's story: a second sockhash-like bpf_map_ops table lacks the
    .map_release_uref its twin has; the question names both tables."""
    tree = _tree(tmp_path, files, SOCKMAP)
    mbox = make_patch(tree, {SOCKMAP: lambda t: _lru_twin(t, with_release)},
                      "bpf, sockmap: Add an LRU flavour of sockhash")
    got = _findings(mbox, tree, "REL001")[1]
    if with_release:
        assert got == []
        return
    assert len(got) == 1
    f = got[0]
    assert "sock_hash_lru_ops" in f.message and ".map_release_uref" in f.message
    assert "sock_map_ops" in f.message or "sock_hash_ops" in f.message
    assert f.confidence == "medium"


def test_gap_already_there_is_not_reported_again(tmp_path, files):
    """Patch 1 drops .map_release_uref from sock_hash_ops (reported); patch 2
    only touches that table elsewhere and must not repeat the question."""
    tree = _tree(tmp_path, files, SOCKMAP)
    msgs = make_series(tree, [
        ("bpf, sockmap: Drop sockhash release_uref",
         {SOCKMAP: _sub("\t.map_release_uref\t= sock_hash_release_progs,\n", "")}),
        ("bpf, sockmap: Use the generic BTF check for sockhash",
         {SOCKMAP: _sub("\t.map_check_btf\t\t= map_check_no_btf,\n\t.map_btf_id\t\t= &sock_hash_map_btf_ids[0],",
                        "\t.map_check_btf\t\t= NULL,\n\t.map_btf_id\t\t= &sock_hash_map_btf_ids[0],")}),
    ])
    got = _findings(b"".join(msgs), tree, "REL001")
    assert [f.message.split(",")[0] for f in got[1]] == ["This drops .map_release_uref from sock_hash_ops"]
    assert got[2] == []


def test_gap_closed_later_in_the_series_is_not_reported(tmp_path, files):
    tree = _tree(tmp_path, files, SOCKMAP)
    line = "\t.map_release_uref\t= sock_hash_release_progs,\n"
    msgs = make_series(tree, [
        ("bpf, sockmap: Drop sockhash release_uref", {SOCKMAP: _sub(line, "")}),
        ("bpf, sockmap: Bring back sockhash release_uref",
         {SOCKMAP: _sub("\t.map_check_btf\t\t= map_check_no_btf,\n\t.map_btf_id\t\t= &sock_hash_map_btf_ids[0],",
                        line.rstrip("\n") + "\n\t.map_check_btf\t\t= map_check_no_btf,\n"
                        "\t.map_btf_id\t\t= &sock_hash_map_btf_ids[0],")}),
    ])
    got = _findings(b"".join(msgs), tree, "REL001")
    assert got == {1: [], 2: []}


_PROC_OPS = """static int dccp_stats_show(struct seq_file *seq, void *v)
{
	seq_printf(seq, "InErrs: %lu\\n", DCCP_MIB_READ(DCCP_MIB_INERRS));
	return 0;
}

static int dccp_stats_open(struct inode *inode, struct file *file)
{
	return single_open(file, dccp_stats_show, NULL);
}

static const struct proc_ops dccp_stats_proc_ops = {
	.proc_open	= OPEN,
	.proc_read	= seq_read,
	.proc_lseek	= seq_lseek,
RELEASE};

static int __init dccp_init(void)
"""


@pytest.mark.parametrize("open_fn,release,flagged", [
    ("dccp_stats_open", "", True),
    ("dccp_stats_open", "\t.proc_release\t= single_release,\n", False),
    ("simple_open", "", False),       # nothing to undo
])
def test_open_hook_needs_release(tmp_path, files, open_fn, release, flagged):
    tree = _tree(tmp_path, files, DCCP)
    new = _PROC_OPS.replace("OPEN", open_fn).replace("RELEASE", release)
    mbox = make_patch(tree, {DCCP: _sub("static int __init dccp_init(void)\n", new)},
                      "dccp: Add proc_ops for the DCCP counters")
    got = _findings(mbox, tree, "REL001")[1]
    if not flagged:
        assert got == []
        return
    assert len(got) == 1
    assert "dccp_stats_proc_ops" in got[0].message and "single_open()" in got[0].message
    assert ".proc_release" in got[0].message


# -- REL002 ----------------------------------------------------------------

def test_seed002_unhash_hook_uses_its_saved_callback():
    """seed002 4/6 saves sk_prot->unhash and calls it from bpf_tcp_unhash:
    nothing to ask (and no tree is needed to see it)."""
    res = review_mbox((DATA / "seeds" / "seed002.mbox").read_bytes(),
                      Options(only_rules={"REL001", "REL002", "REL003"}))
    assert [f for r in res.patches for f in r.findings] == []


def test_saved_callback_dropped_from_a_patch_is_found_without_tree():
    """Take seed002 4/6 and remove the lines that call the saved unhash:
    the save alone is reported, even with no tree."""
    text = (DATA / "seeds" / "seed002.mbox").read_text()
    start = text.index("From mboxrd@z", text.index("[bpf PATCH 3/6]"))
    end = text.index("From mboxrd@z", text.index("[bpf PATCH 4/6]"))
    patch = text[start:end]
    assert "+\tunhash_fun = psock->save_unhash;\n" in patch
    patch = patch.replace("+\tunhash_fun = psock->save_unhash;\n", "+\tunhash_fun = NULL;\n")
    res = review_mbox(patch.encode(), Options(only_rules={"REL002"}))
    got = [f for r in res.patches for f in r.findings]
    assert len(got) == 1 and "save_unhash" in got[0].message


def test_saving_into_a_member_declared_elsewhere_is_not_judged(tmp_path):
    """psock->saved_write_space is declared in a header the patch does not
    touch and used in other files: a new save of it says nothing."""
    files = kernel_files(["net/core/skmsg.c"])
    tree = _tree(tmp_path, files, "net/core/skmsg.c")
    mbox = make_patch(tree, {"net/core/skmsg.c": _sub(
        "\tpsock->saved_write_space = sk->sk_write_space;\n",
        "\tpsock->saved_write_space = sk->sk_write_space;\n\tpsock->saved_data_ready = sk->sk_data_ready;\n")},
        "skmsg: Remember sk_data_ready early")
    assert _findings(mbox, tree, "REL002")[1] == []


# -- REL003 ----------------------------------------------------------------

_CLK = ("\tpriv = devm_kzalloc(dev, sizeof(*priv), GFP_KERNEL);\n\tif (!priv)\n\t\treturn -ENOMEM;\n")


def _wdt_clk(getter: str, store: bool = False):
    added = (f"\n\tclk = {getter}(dev, NULL);\n\tif (IS_ERR(clk))\n\t\treturn PTR_ERR(clk);\n")
    if store:
        added += "\tpriv->clk = clk;\n"

    def edit(text):
        text = _sub("\tconst char *algo;\n\tint ret;\n", "\tconst char *algo;\n\tstruct clk *clk;\n\tint ret;\n")(text)
        if store:
            text = _sub("\tbool\t\t\talways_running;\n", "\tbool\t\t\talways_running;\n\tstruct clk\t\t*clk;\n")(text)
        return _sub(_CLK, _CLK + added)(text)
    return edit


@pytest.mark.parametrize("getter,store,flagged", [
    ("clk_get", False, True),
    ("devm_clk_get_enabled", False, False),     # managed: released by the driver core
    ("clk_get", True, False),                   # handed to priv: ownership moves
])
def test_error_path_after_acquire(tmp_path, files, getter, store, flagged):
    tree = _tree(tmp_path, files, WDT)
    mbox = make_patch(tree, {WDT: _wdt_clk(getter, store)}, "watchdog: gpio_wdt: Enable the bus clock")
    got = _findings(mbox, tree, "REL003")[1]
    if not flagged:
        assert got == []
        return
    assert len(got) == 1
    f = got[0]
    assert f.message.startswith("After clk = clk_get(), the failure path `return ret;` in gpio_wdt_probe()")
    assert "clk_put()" in f.message


def test_release_in_a_failed_hand_over_branch_keeps_the_hand_over(tmp_path, files):
    """devm_add_action_or_reset() takes clk over; the clk_put() in its own
    failure branch (a double put, but another question) does not make the
    later failure paths leaks."""
    tree = _tree(tmp_path, files, WDT)
    base = _wdt_clk("clk_get")
    hand = ("\tret = devm_add_action_or_reset(dev, gpio_wdt_clk_put, clk);\n"
            "\tif (ret) {\n\t\tclk_put(clk);\n\t\treturn ret;\n\t}\n")

    def edit(text):
        text = base(text)
        return _sub("\t\treturn PTR_ERR(clk);\n", "\t\treturn PTR_ERR(clk);\n" + hand)(text)
    mbox = make_patch(tree, {WDT: edit}, "watchdog: gpio_wdt: Enable the bus clock")
    assert _findings(mbox, tree, "REL003")[1] == []


def test_leak_already_there_is_not_reported_again(tmp_path, files):
    tree = _tree(tmp_path, files, WDT)
    msgs = make_series(tree, [
        ("watchdog: gpio_wdt: Enable the bus clock", {WDT: _wdt_clk("clk_get")}),
        ("watchdog: gpio_wdt: Say why a margin is refused",
         {WDT: _sub("\tif (hw_margin < 2 || hw_margin > 65535)\n\t\treturn -EINVAL;\n",
                    "\tif (hw_margin < 2 || hw_margin > 65535) {\n"
                    "\t\tdev_err(dev, \"hw_margin_ms out of range\\n\");\n\t\treturn -EINVAL;\n\t}\n")}),
    ])
    got = _findings(b"".join(msgs), tree, "REL003")
    assert len(got[1]) == 1 and got[2] == []


@pytest.mark.parametrize("freed", [False, True])
def test_added_exit_after_an_old_acquire_handed_to_drvdata(tmp_path, files, freed):
    """axp_mc_probe() hands mci to platform_set_drvdata() and still frees it
    itself when edac_mc_add_mc() fails: a failure path the patch adds after
    the hand-over leaks it unless it frees it too.  The finding quotes the
    added exit (the acquire is not in the patch) and names the acquire's line."""
    tree = _tree(tmp_path, files, AXP)
    release = "\t\tedac_mc_free(mci);\n" if freed else ""
    edit = _sub("\tid = of_match_device(axp_mc_of_match, &pdev->dev);\n",
                "\tid = of_match_device(axp_mc_of_match, &pdev->dev);\n"
                "\tif (!of_device_is_available(pdev->dev.of_node)) {\n" + release +
                "\t\treturn -ENODEV;\n\t}\n")
    mbox = make_patch(tree, {AXP: edit}, "EDAC/armada_xp: Refuse a disabled controller")
    got = _findings(mbox, tree, "REL003")[1]
    if freed:
        assert got == []
        return
    assert len(got) == 1
    f = got[0]
    assert f.message.startswith("After mci = edac_mc_alloc() (line 308), the failure path `return -ENODEV;`")
    assert "edac_mc_free()" in f.message and "The other failure paths do release it." in f.message
    assert f.line == 319 and f.confidence == "high"


def test_netns_fix_is_not_flagged_and_its_pre_image_shape_is():
    """The real flow-dissector fix adds a pernet_operations with only
    .pre_exit: nothing to ask.  A pernet_operations whose .init takes
    something and has no exit side is asked about (fixture
    bad-dccp-proc-no-netns-exit, here without a tree)."""
    fix = (DATA / "messages" / "flow-dissector-netns-cleanup-v2.mbox").read_bytes()
    assert _findings(fix, None, "REL003", with_tree=False)[1] == []
    bad = pathlib.Path(__file__).parent.parent / "rules" / "fixtures" / "REL003" / "bad-dccp-proc-no-netns-exit.mbox"
    got = _findings(bad.read_bytes(), None, "REL003", with_tree=False)[1]
    assert len(got) == 1 and "dccp_proc_net_ops" in got[0].message and ".exit" in got[0].message


# -- REL004: a goto into the unwind ladder turned into a return ------------

def test_return_skipping_the_functions_own_undo(tmp_path, files):
    """alx_alloc_napis() undoes itself at err_out with alx_free_napis():
    returning directly from a later failure leaves its allocations behind."""
    tree = _tree(tmp_path, files, ALX)
    edit = _sub("\t\ttxq = kzalloc(sizeof(*txq), GFP_KERNEL);\n\t\tif (!txq)\n\t\t\tgoto err_out;\n",
                "\t\ttxq = kzalloc(sizeof(*txq), GFP_KERNEL);\n\t\tif (!txq)\n\t\t\treturn -ENOMEM;\n")
    mbox = make_patch(tree, {ALX: edit}, "net: alx: Return early when a tx queue is not allocated")
    got = _findings(mbox, tree, "REL004")[1]
    assert len(got) == 1
    assert got[0].message.startswith("This returns directly where it used to `goto err_out`, but the code at "
                                     "err_out calls alx_free_napis(alx), which undoes what alx_alloc_napis()")


@pytest.mark.parametrize("put_first", [False, True])
def test_return_skipping_a_ladder_the_other_failures_use(tmp_path, files, put_first):
    """No table pairs blkdev_get_by_path() with blkdev_put() here (no tree
    knowledge base either): the function's own ladder, which its later
    failure paths still reach, says bdev is to be put on failure."""
    tree = _tree(tmp_path, files, REPLACE)
    put = "\t\tblkdev_put(bdev, FMODE_EXCL);\n" if put_first else ""
    edit = _sub("\t\t\"dev-replace: zoned type of target device mismatch with filesystem\");\n"
                "\t\tret = -EINVAL;\n\t\tgoto error;\n",
                "\t\t\"dev-replace: zoned type of target device mismatch with filesystem\");\n"
                + put + "\t\treturn -EINVAL;\n")
    mbox = make_patch(tree, {REPLACE: edit}, "btrfs: dev-replace: Return early on a zone type mismatch")
    got = _findings(mbox, tree, "REL004")[1]
    if put_first:
        assert got == []
        return
    assert len(got) == 1
    assert "the code at error calls blkdev_put(bdev), and bdev was taken by blkdev_get_by_path() at line " \
           "259, and the other failure paths after it still go to error." in " ".join(got[0].message.split())


@pytest.mark.parametrize("init_stays", [True, False])
def test_undo_of_a_set_up_step_removed_from_the_ladder(tmp_path, files, init_stays):
    """ath10k_ahb_resource_init() undoes ath10k_ahb_clock_init(ar) with
    ath10k_ahb_clock_deinit(ar) at err_clock_deinit: dropping the undo while
    the set-up stays is asked about; dropping both is not."""
    tree = _tree(tmp_path, files, AHB)
    edits = [_sub("err_clock_deinit:\n\tath10k_ahb_clock_deinit(ar);\n", "err_clock_deinit:\n")]
    if not init_stays:
        edits.append(_sub("\tret = ath10k_ahb_clock_init(ar);\n\tif (ret)\n\t\tgoto err_tcsr_mem_unmap;\n\n", ""))

    def edit(text):
        for e in edits:
            text = e(text)
        return text
    mbox = make_patch(tree, {AHB: edit}, "ath10k: ahb: Rework the resource error path")
    got = _findings(mbox, tree, "REL004")[1]
    if not init_stays:
        assert got == []
        return
    assert len(got) == 1
    assert " ".join(got[0].message.split()).startswith(
        "This removes ath10k_ahb_clock_deinit(ar), but ath10k_ahb_clock_init() in this function (line 483) "
        "stays, and the path through line ")


@pytest.mark.parametrize("instead,flagged", [("platform_device_del", True), ("platform_device_unregister", False)])
def test_put_replaced_by_the_undo_of_another_step(tmp_path, files, instead, flagged):
    """platform_device_del() undoes platform_device_add(), not the
    allocation: replacing the failure path's platform_device_put() with it
    leaves the device allocated; platform_device_unregister() (del + put)
    releases it."""
    tree = _tree(tmp_path, files, TOPSTAR)
    edit = _sub("err_device_put:\n\tplatform_device_put(topstar->platform);\n",
                f"err_device_put:\n\t{instead}(topstar->platform);\n")
    mbox = make_patch(tree, {TOPSTAR: edit}, "platform/x86: topstar: Rework the error path")
    got = _findings(mbox, tree, "REL004")[1]
    if not flagged:
        assert got == []
        return
    assert len(got) == 1
    msg = " ".join(got[0].message.split())
    assert msg.startswith("This removes platform_device_put(topstar->platform), but topstar->platform is still "
                          "taken by platform_device_alloc() in this function")
    assert msg.endswith("(platform_device_del() undoes platform_device_add(), not platform_device_alloc().)")


# -- REL005 ----------------------------------------------------------------

_SPMI_FAIL = ("\tif (err < 0) {\n\t\tdev_err(&sdev->dev, \"Can't add %s, status %d\\n\",\n"
              "\t\t\tdev_name(&sdev->dev), err);\n\t\tgoto err_device_add;\n\t}\n")


@pytest.mark.parametrize("new_branch,flagged", [
    # only the message changes: the path had no put_device() before either
    ("\tif (err < 0) {\n\t\tdev_err(&sdev->dev, \"Can't add device: %pe\\n\", ERR_PTR(err));\n"
     "\t\tgoto err_device_add;\n\t}\n", False),
    # the path now frees the device behind its refcount
    ("\tif (err < 0) {\n\t\tkfree(sdev);\n\t\tgoto err_device_add;\n\t}\n", True),
])
def test_old_failure_path_edited_is_not_blamed(tmp_path, files, new_branch, flagged):
    """spmi_device_add()'s device_add() failure path has no put_device() in
    6.1 (its callers drop the reference): a patch that edits that path
    without changing its releases did not introduce the gap; one that
    frees the device there does."""
    tree = _tree(tmp_path, files, SPMI)
    mbox = make_patch(tree, {SPMI: _sub(_SPMI_FAIL, new_branch)}, "spmi: Print error status with %pe format")
    got = _findings(mbox, tree, "REL005")[1]
    assert bool(got) == flagged, got
