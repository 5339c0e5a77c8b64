"""LCK008 with the tree's knowledge base: a lock taken again several calls
down a function of another file (real linux-6.1 code)."""
from __future__ import annotations

import pytest

from support.ktree import kb_tree, review_edit

ISP = "drivers/media/platform/ti/omap3isp/isp.c"
FILES = [ISP, "include/media/v4l2-device.h", "drivers/media/v4l2-core/v4l2-device.c",
         "drivers/media/v4l2-core/v4l2-dev.c", "drivers/media/mc/mc-device.c"]
UNLOCK = ("\tmutex_unlock(&isp->media_dev.graph_mutex);\n\n"
          "\tret = v4l2_device_register_subdev_nodes(&isp->v4l2_dev);\n\tif (ret < 0)\n\t\treturn ret;\n")


@pytest.fixture(scope="module")
def media_kb(tmp_path_factory):
    """A tree of the omap3isp driver and the V4L2 / media-controller core,
    with its knowledge base built."""
    return kb_tree(tmp_path_factory.mktemp("media"), FILES)


def _review(media_kb, monkeypatch, subject, edit):
    tree, cache = media_kb
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(cache))
    return review_edit(tree, subject, ISP, edit, "LCK008")


def test_registering_subdev_nodes_under_the_graph_mutex_is_flagged(media_kb, monkeypatch):
    """isp_subdev_notifier_complete() made to keep graph_mutex across
    v4l2_device_register_subdev_nodes(): four calls down (v4l2-device.c ->
    v4l2-dev.c -> mc-device.c) media_device_register_entity() takes the
    media_device's graph_mutex again."""
    def edit(text):
        assert text.count(UNLOCK) == 1
        return text.replace(UNLOCK, "\tret = v4l2_device_register_subdev_nodes(&isp->v4l2_dev);\n"
                                    "\tmutex_unlock(&isp->media_dev.graph_mutex);\n\tif (ret < 0)\n"
                                    "\t\treturn ret;\n")
    got = _review(media_kb, monkeypatch, "media: omap3isp: register the nodes under the graph lock", edit)
    assert len(got) == 1 and got[0].confidence == "medium", got
    msg = got[0].message
    assert "isp->media_dev.graph_mutex held" in msg
    assert "media_device_register_entity() takes it with mutex_lock()" in msg


def test_registering_subdev_nodes_after_the_unlock_is_fine(media_kb, monkeypatch):
    """The same function touched, the call left after the unlock."""
    def edit(text):
        assert text.count(UNLOCK) == 1
        return text.replace(UNLOCK, UNLOCK.replace("if (ret < 0)", "if (ret)"))
    assert _review(media_kb, monkeypatch, "media: omap3isp: test the result", edit) == []


# -- LCK001 through a function of another file ------------------------------------

CIFS = ["fs/smb/client/sess.c", "fs/smb/client/connect.c", "fs/smb/client/cifs_debug.c"]
PUT_FIRST = ("\t\tcifs_put_tcp_session(chan->server, 0);\n\n\t\tspin_lock(&ses->chan_lock);\n")
UNLOCK_LAST = "\t\tWARN_ON(ses->chan_count < 1);\n\t\tspin_unlock(&ses->chan_lock);\n\t}\n"


@pytest.fixture(scope="module")
def cifs_kb(tmp_path_factory):
    """fs/smb/client: sess.c, connect.c (cifs_put_tcp_session() takes
    cifs_tcp_ses_lock) and cifs_debug.c (takes a session's chan_lock with
    cifs_tcp_ses_lock held), with its knowledge base."""
    return kb_tree(tmp_path_factory.mktemp("cifs"), CIFS)


def _review_cifs(cifs_kb, monkeypatch, subject, edit):
    tree, cache = cifs_kb
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(cache))
    return review_edit(tree, subject, CIFS[0], edit, "LCK001")


def test_dropping_the_server_under_chan_lock_inverts_the_tree_order(cifs_kb, monkeypatch):
    """cifs_ses_add_channel()'s failure path made to drop the server with
    chan_lock held: cifs_put_tcp_session() (connect.c) takes
    cifs_tcp_ses_lock, which cifs_debug_data_proc_show() holds while it
    takes chan_lock."""
    def edit(text):
        assert text.count(PUT_FIRST) == 1 and text.count(UNLOCK_LAST) == 1
        text = text.replace(PUT_FIRST, "\t\tspin_lock(&ses->chan_lock);\n")
        return text.replace(UNLOCK_LAST, "\t\tWARN_ON(ses->chan_count < 1);\n"
                                         "\t\tcifs_put_tcp_session(chan->server, 0);\n"
                                         "\t\tspin_unlock(&ses->chan_lock);\n\t}\n")
    got = _review_cifs(cifs_kb, monkeypatch, "smb: client: drop the channel's server under chan_lock", edit)
    assert len(got) == 1 and got[0].confidence == "medium", got
    msg = got[0].message
    assert "calls cifs_put_tcp_session() while holding ses->chan_lock" in msg
    assert "cifs_debug_data_proc_show()" in msg and "cifs_tcp_ses_lock" in msg


def test_dropping_the_server_before_chan_lock_is_fine(cifs_kb, monkeypatch):
    def edit(text):
        assert text.count(PUT_FIRST) == 1
        return text.replace(PUT_FIRST, "\t\tcifs_put_tcp_session(chan->server, 0);\n\t\tchan->server = NULL;\n\n"
                                       "\t\tspin_lock(&ses->chan_lock);\n")
    assert _review_cifs(cifs_kb, monkeypatch, "smb: client: forget the dropped server", edit) == []
