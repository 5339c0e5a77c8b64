"""LCK006 with the tree's knowledge base: the lock a wait is made under may
be held by callers in other files."""
from __future__ import annotations

import pytest

from support.ktree import kb_tree, review_edit

INTERFACE = "drivers/greybus/interface.c"
MODULE = "drivers/greybus/module.c"
FILES = [INTERFACE, MODULE]
DEACTIVATE = "\t/* Abort any ongoing mode switch. */\n\tif (intf->mode_switch)\n\t\tcomplete(&intf->mode_switch_completion);\n"
DEL = "\tif (device_is_registered(&intf->dev)) {\n\t\ttrace_gb_interface_del(intf);\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tree, cache = kb_tree(tmp_path_factory.mktemp("lck006"), FILES)
    mp = pytest.MonkeyPatch()
    mp.setenv("REVIEWBOT_INDEX_DIR", str(cache))
    yield tree
    mp.undo()


def _review(tree, subject, old, new, path=INTERFACE):
    def edit(text):
        assert text.count(old) == 1
        return text.replace(old, new)
    return review_edit(tree, subject, path, edit, "LCK006")


def test_a_wait_in_a_function_whose_callers_in_another_file_hold_the_lock(built):
    """gb_interface_deactivate() made to cancel the mode-switch work, whose
    handler takes intf->mutex: module.c calls it with intf->mutex held."""
    got = _review(built, "greybus: interface: cancel the mode switch on deactivate", DEACTIVATE,
                  DEACTIVATE + "\tcancel_work_sync(&intf->mode_switch_work);\n")
    assert len(got) == 1 and got[0].confidence == "medium"
    msg = got[0].message
    assert "struct gb_interface.mutex" in msg and "gb_interface_mode_switch_work()" in msg
    assert "holds struct gb_interface.mutex" in msg


def test_a_wait_in_a_function_called_after_the_lock_is_dropped(built):
    """gb_interface_del() is called after intf->mutex is released."""
    got = _review(built, "greybus: interface: cancel the mode switch on removal", DEL,
                  "\tcancel_work_sync(&intf->mode_switch_work);\n\n" + DEL)
    assert got == []


def test_the_handler_of_a_work_set_up_in_a_file_the_patch_does_not_touch(built):
    """module.c made to cancel the interface's mode-switch work with
    intf->mutex held: the work and its handler (which takes intf->mutex)
    are set up in interface.c, beside it."""
    old = "\tmutex_lock(&intf->mutex);\n\tintf->removed = true;\n"
    got = _review(built, "greybus: module: cancel the mode switch on deregistration", old,
                  old + "\tcancel_work_sync(&intf->mode_switch_work);\n", path=MODULE)
    assert len(got) == 1 and got[0].confidence == "high"
    assert "gb_interface_mode_switch_work() (drivers/greybus/interface.c)" in got[0].message


OCTEP = "drivers/net/ethernet/marvell/octeon_ep/octep_main.c"
STOP = "\t/* Stop Tx from stack */\n\tnetif_tx_stop_all_queues(netdev);\n"


@pytest.fixture(scope="module")
def octep(tmp_path_factory):
    tree, cache = kb_tree(tmp_path_factory.mktemp("lck006-rtnl"), [OCTEP])
    mp = pytest.MonkeyPatch()
    mp.setenv("REVIEWBOT_INDEX_DIR", str(cache))
    yield tree
    mp.undo()


def test_a_wait_in_ndo_stop_for_a_work_that_takes_rtnl(octep):
    """.ndo_stop runs with RTNL held; octep_tx_timeout_task() takes it."""
    got = _review(octep, "octeon_ep: cancel the tx timeout task on stop", STOP,
                  "\tcancel_work_sync(&oct->tx_timeout_task);\n\n" + STOP, path=OCTEP)
    assert len(got) == 1 and got[0].confidence == "medium"
    assert "runs with RTNL held" in got[0].message and "octep_tx_timeout_task()" in got[0].message, got[0].message


def test_a_wait_in_ndo_stop_for_a_work_that_does_not_take_rtnl(octep):
    got = _review(octep, "octeon_ep: cancel the mailbox task on stop", STOP,
                  "\tcancel_work_sync(&oct->ctrl_mbox_task);\n\n" + STOP, path=OCTEP)
    assert got == []
