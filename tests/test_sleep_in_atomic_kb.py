"""LCK003 with the tree's knowledge base: a sleeping call added to a
function that its callers (files away) reach in atomic context, or that the
tree installs as a callback run in atomic context (real linux-6.1 code)."""
from __future__ import annotations

import pytest

from support.ktree import kb_tree, review_edit

NETVSC = "drivers/net/hyperv/netvsc.c"
HYPERV = [NETVSC, "drivers/net/hyperv/rndis_filter.c", "drivers/net/hyperv/netvsc_drv.c"]
NETLINK = "net/netlink/af_netlink.c"
VMALLOC = "mm/vmalloc.c"          # vfree() -> might_sleep_if()


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """hv_netvsc's three files, af_netlink.c and vmalloc.c, with the
    knowledge base."""
    return kb_tree(tmp_path_factory.mktemp("lck003"), HYPERV + [NETLINK, VMALLOC])


def _review(kb, monkeypatch, subject, path, old, new):
    tree, cache = kb
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(cache))

    def edit(text):
        assert text.count(old) == 1
        return text.replace(old, new)
    return review_edit(tree, subject, path, edit, "LCK003")


def test_gfp_kernel_in_a_function_the_xmit_path_reaches_under_rcu(kb, monkeypatch):
    """netvsc_dma_map() made to allocate with GFP_KERNEL: three calls up,
    rndis_filter_send_request() calls netvsc_send() inside
    rcu_read_lock() (the transmit path gets there with BH off too)."""
    got = _review(kb, monkeypatch, "hv_netvsc: allocate the DMA ranges with GFP_KERNEL", NETVSC,
                  "\t\t\t\t    sizeof(*packet->dma_range),\n\t\t\t\t    GFP_ATOMIC);",
                  "\t\t\t\t    sizeof(*packet->dma_range),\n\t\t\t\t    GFP_KERNEL);")
    assert len(got) == 1 and got[0].confidence == "medium", got
    msg = got[0].message
    assert msg.startswith("kcalloc() with GFP_KERNEL can sleep, but netvsc_dma_map() can be reached in atomic")
    assert "rndis_filter_send_request()" in msg and "netvsc_send_pkt() -> netvsc_dma_map()" in msg


def test_gfp_kernel_in_device_setup_is_fine(kb, monkeypatch):
    """The same kind of change in alloc_net_device(), which only the
    probe path (process context) calls."""
    got = _review(kb, monkeypatch, "hv_netvsc: allocate the device with kvzalloc", NETVSC,
                  "net_device = kzalloc(sizeof(struct netvsc_device), GFP_KERNEL);",
                  "net_device = kvzalloc(sizeof(struct netvsc_device), GFP_KERNEL);")
    assert got == []


def test_vfree_in_an_skb_destructor(kb, monkeypatch):
    """netlink_skb_destructor() is installed as skb->destructor, which runs
    wherever the skb is freed (softirq included): vfree() may sleep there,
    vfree_atomic() is the tree's answer."""
    got = _review(kb, monkeypatch, "netlink: free the vmalloc'ed head directly", NETLINK,
                  "\t\t\tvfree_atomic(skb->head);", "\t\t\tvfree(skb->head);")
    assert len(got) == 1 and got[0].confidence == "medium", got
    msg = got[0].message
    assert "vfree()" in msg and "netlink_skb_destructor() runs in atomic context" in msg
    assert "assigned to .destructor of struct sk_buff" in msg


def test_stale_knowledge_is_built_anew(kb, tmp_path):
    """A knowledge file written by another version of reviewbot is not
    read: `reviewbot index` (open_db with build_missing) builds it again."""
    import sqlite3
    import shutil
    from reviewbot.tree import knowledge as kn
    tree, cache0 = kb
    cache = tmp_path / "cache"
    shutil.copytree(cache0, cache)
    [p] = cache.glob("knowledge-*.sqlite")
    db = sqlite3.connect(p)
    db.execute("UPDATE meta SET v='0' WHERE k='version'")
    db.commit()
    db.close()
    assert kn.open_db(str(tree), "HEAD", cache) is None
    kb = kn.open_db(str(tree), "HEAD", cache, build_missing=True, procs=1)
    assert kb is not None and kb.meta["version"] == str(kn.VERSION)
    assert kb.view().contexts("netlink_skb_destructor")
