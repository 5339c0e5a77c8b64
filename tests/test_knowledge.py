"""The tree knowledge base (reviewbot.tree.knowledge, issue 15) on small git
trees of real 6.1 files: answers that can be read in their source."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from reviewbot.tree import knowledge as kn
from support import ktree

TRKBALL = "drivers/input/mouse/pxa930_trkball.c"
FILES = [TRKBALL, "net/core/neighbour.c", "net/core/sock_map.c", "drivers/base/core.c",
         "lib/kobject.c", "drivers/base/bus.c"]


@pytest.fixture(scope="module")
def real():
    try:
        return {p: d.decode() for p, d in ktree.kernel_files(FILES).items()}
    except ktree.KernelSourceMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def built(real, tmp_path_factory):
    """(tree, base, cache, view) of a tree of FILES with its knowledge built."""
    tmp = tmp_path_factory.mktemp("kb")
    tree = tmp / "linux"
    base = ktree.make_tree(tree, real)
    cache = tmp / "cache"
    path = kn.build(str(tree), base, cache, procs=1)
    kb = kn.Knowledge.load(path, cache)
    return tree, base, cache, kb.view()


def test_probe_calling_msleep_may_sleep_with_its_chain(built):
    _, _, _, v = built
    # the probe sleeps (its first witness: kzalloc(..., GFP_KERNEL))
    chain = v.may_sleep("pxa930_trkball_probe")
    assert chain and chain[0].startswith(f"pxa930_trkball_probe ({TRKBALL}:")
    assert "GFP_KERNEL" in chain[-1]
    # pxa930_trkball_config -> write_tbcr -> msleep(1), as in the source
    chain = v.may_sleep("pxa930_trkball_config")
    assert len(chain) == 2 and "calls write_tbcr()" in chain[0]
    assert chain[-1].startswith(f"write_tbcr ({TRKBALL}:") and "calls msleep()" in chain[-1]
    # the interrupt handler does not sleep
    assert v.may_sleep("pxa930_trkball_interrupt") is None


def test_handler_registered_with_request_irq_runs_in_hardirq(built):
    _, _, _, v = built
    ctxs = v.contexts("pxa930_trkball_interrupt")
    assert [c for c, _ in ctxs] == ["hardirq"]
    assert "request_irq() in pxa930_trkball_probe" in ctxs[0][1]


def test_lock_order_in_one_function_and_through_a_callee(built):
    _, _, _, v = built
    # neigh_forced_gc(), neigh_periodic_work(): write_lock_bh(&tbl->lock),
    # then write_lock(&n->lock), in one function
    w = v.order_edge("struct neigh_table.lock", "struct neighbour.lock")
    assert w and len(w) == 1 and re.match(r"neigh_(forced_gc|periodic_work) \(net/core/neighbour.c:\d+\) "
                                          r"takes struct neighbour.lock with write_lock\(\)", w[0])
    # sock_map_update_elem_sys() holds lock_sock(sk) and calls
    # sock_map_update_common(), which takes the stab's raw spinlock
    w = v.order_edge("struct sock.sk_lock", "struct bpf_stab.lock")
    assert w is not None and len(w) == 2
    assert w[0].startswith("sock_map_update_elem_sys (net/core/sock_map.c:")
    assert w[1].startswith("sock_map_update_common (net/core/sock_map.c:") and "raw_spin_lock_bh" in w[1]
    assert ("struct sock.sk_lock", "struct bpf_stab.lock") in {(a, b) for a, b, _ in
                                                              v.edges_to("struct bpf_stab.lock")}
    # (through the wrapper sock_map_sk_acquire(): lock_sock(); rcu_read_lock())
    assert ("a", "struct sock.sk_lock", "sock") in v.lock_wrapper("sock_map_sk_acquire")
    held = {c: h for c, _, h in v.calls("sock_map_update_elem_sys")}
    assert ("struct sock.sk_lock", "sock") in held["sock_map_update_common"]
    taken = {t["class"]: t for t in v.locks_taken("sock_map_update_elem_sys")}
    assert "struct bpf_stab.lock" in taken and len(taken["struct bpf_stab.lock"]["path"]) == 2


def test_get_put_pair_mined_with_high_support(built):
    _, _, _, v = built
    # drivers/base/bus.c: bus_get(bus) ... bus_put(bus) in nearly every caller
    best = v.release_for("bus_get")[0]
    assert best[0] == "bus_put" and best[3] == "mined"
    assert best[1] >= 5 and best[1] / best[2] >= 0.8
    assert v.release_for("get_device")[0][0] == "put_device"
    from reviewbot.analysis.rulekit import release_names_known
    assert release_names_known("bus_get", v) == ("bus_put",)
    assert release_names_known("get_device") == ("put_device",)     # the hand-written table
    # callers of kobject_init_and_add()/kobject_add() put the kobject when it fails
    fails = v.release_on_failure("kobject_add")
    assert fails and fails[0][0] == "kobject_put"


def test_definitions_real_one_first(built):
    _, _, _, v = built
    defs = v.definitions("write_tbcr")
    assert len(defs) == 1 and defs[0]["path"] == TRKBALL and defs[0]["static"]
    assert v.definitions("no_such_function") == []


def test_overlay_of_a_post_image_overrides_the_base(built, real):
    _, _, _, v0 = built
    kb = v0.kb
    text = real[TRKBALL].replace("\t\tmsleep(1);\n", "\t\tudelay(1);\n")
    assert text != real[TRKBALL]
    v = kb.view({TRKBALL: text})
    assert v.may_sleep("pxa930_trkball_config") is None
    assert v.may_sleep("pxa930_trkball_probe")         # kzalloc(GFP_KERNEL) still
    assert v.contexts("pxa930_trkball_interrupt")[0][0] == "hardirq"
    # the base is untouched
    assert kb.view().may_sleep("pxa930_trkball_probe")


def test_facts_command(built, monkeypatch, capsys):
    from reviewbot.cli import main
    tree, base, cache, _ = built
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(cache))
    assert main(["facts", "pxa930_trkball_interrupt", "--tree", str(tree), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    d, = out["definitions"]
    assert d["path"] == TRKBALL and d["contexts"][0]["context"] == "hardirq"
    assert main(["facts", "pxa930_trkball_config", "--tree", str(tree)]) == 0
    text = capsys.readouterr().out
    assert "may sleep: yes" in text and "msleep()" in text
    assert main(["facts", "nope_nothing", "--tree", str(tree)]) == 0
    assert "not defined" in capsys.readouterr().out


def test_incremental_update_after_a_commit_that_changes_one_file(built, real, tmp_path):
    tree0, base, cache0, _ = built
    tree = ktree.clone_tree(tree0, tmp_path / "linux")
    cache = tmp_path / "cache"
    cache.mkdir()
    for p in cache0.iterdir():                       # the full base, as `reviewbot index` left it
        os.link(p, cache / p.name)
    (tree / TRKBALL).write_text(real[TRKBALL].replace("\t\tmsleep(1);\n", "\t\tudelay(1);\n"))
    ktree.git(tree, "commit", "-q", "-am", "trkball: no sleep")
    head = ktree.git(tree, "rev-parse", "HEAD").decode().strip()
    kb = kn.open_db(str(tree), head, cache)
    assert kb is not None and kb.meta["parent"]          # a delta on the base
    assert set(kb.delta_facts) == {TRKBALL}               # only the changed file re-extracted
    v = kb.view()
    assert v.may_sleep("pxa930_trkball_config") is None
    assert v.may_sleep("write_tbcr") is None
    assert v.order_edge("struct neigh_table.lock", "struct neighbour.lock")
    # opened again: the delta is cached
    assert kn.open_db(str(tree), head, cache).path == kb.path
    # nothing written into the repository
    st = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True)
    assert st.stdout == ""


def test_scope_guards_hold_their_lock_to_the_end_of_the_scope():
    # guard()/scoped_guard() are not in 6.1: a small text of the later style
    from reviewbot.analysis import facts as F
    text = ("static void f(struct foo *p)\n{\n\tguard(mutex)(&p->lock);\n\tspin_lock(&p->slock);\n"
            "\tbar();\n\tspin_unlock(&p->slock);\n}\n\n"
            "static int g(struct foo *p)\n{\n\tscoped_guard(spinlock_irqsave, &p->slock) {\n"
            "\t\tif (p->x)\n\t\t\treturn 1;\n\t\tbaz();\n\t}\n\tqux();\n\treturn 0;\n}\n")
    ff = F.extract(text, "x.c")
    f, g = ff["funcs"]
    calls, acq, order, _, _ = F.simulate(f["ev"], {}, f["t"], f["p"])
    assert ("struct foo.lock", "struct foo.slock") in {(a, b) for a, b, _, _ in order}
    assert dict((c, h) for c, _, h in calls)["bar"] == (("struct foo.lock", "mutex"), ("struct foo.slock", "spin"))
    assert f["seed"] and f["seed"][0][0] == "guard(mutex)"
    calls, _, _, _, _ = F.simulate(g["ev"], {}, g["t"], g["p"])
    held = {c: h for c, _, h in calls}
    assert held["baz"] == (("struct foo.slock", "spin"),) and held["qux"] == ()


def test_for_context_lays_the_series_post_images_over_the_base(built, real, monkeypatch):
    from types import SimpleNamespace as NS
    tree, base, cache, _ = built
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(cache))
    kn._LOADED.clear()
    post = real[TRKBALL].replace("\t\tmsleep(1);\n", "\t\tudelay(1);\n")
    fv = NS(path=TRKBALL, post=post, diff=NS(is_c=True, is_deleted=False))
    ctx = NS(tree_path=str(tree), base=base, files=[fv], all_patches=[])
    ctx.all_patches.append(ctx)
    v = kn.for_context(ctx)
    assert v is not None and v.may_sleep("pxa930_trkball_config") is None
    assert v.may_sleep("pxa930_trkball_probe")
    # no index for this tree: no knowledge (rules fall back)
    monkeypatch.setenv("REVIEWBOT_INDEX_DIR", str(cache.parent / "empty"))
    kn._LOADED.clear()
    assert kn.for_context(ctx) is None
    kn._LOADED.clear()


def test_overlay_changes_the_answer_of_a_base_caller_in_another_file(built):
    _, _, _, v0 = built
    # a stored chain that goes from one file into another (e.g. drivers/base
    # into lib/kobject.c): emptying the second file in an overlay must
    # change the first function's answer
    found = None
    for (chain,) in v0.db.execute("SELECT chain FROM sleep"):
        steps = json.loads(chain)
        paths = [re.search(r"\(([^\s:()]+):\d+\)", st).group(1) for st in steps]
        if len(set(paths)) > 1:
            found = steps, paths
            break
    assert found, "no cross-file chain in the test tree"
    steps, paths = found
    name = steps[0].split(" ", 1)[0]
    other = next(p for p in paths if p != paths[0])
    assert v0.may_sleep(name, paths[0]) == steps
    got = v0.kb.view({other: ""}).may_sleep(name, paths[0])
    assert got != steps and (got is None or all(f"({other}:" not in st for st in got))


@pytest.mark.slow
def test_full_tree_knowledge_when_built():
    """On the whole 6.1 tree, when `reviewbot index` has built its knowledge
    (skipped at once otherwise: building it takes minutes)."""
    tree = ktree.cache_root() / "linux-6.1-git"
    if not (tree / ".git" / "reviewbot-base").exists():
        pytest.skip("no full 6.1 tree")
    kb = kn.open_db(str(tree), "HEAD", max_delta=0)
    if kb is None or kb.meta.get("parent"):
        pytest.skip("no knowledge base of the full tree in the cache (reviewbot index --tree ...)")
    v = kb.view()
    chain = v.may_sleep("rtnl_lock")
    assert chain and "mutex_lock" in chain[-1]
    assert "hardirq" in [c for c, _ in v.contexts("e1000_intr_msi", "drivers/net/ethernet/intel/e1000e/netdev.c")]
    assert any(c == "rtnl" for c, _ in v.contexts("e1000e_open"))
    assert v.release_for("of_node_get")[0][0] == "of_node_put"
    assert "kobject_put" in [r[0] for r in v.release_on_failure("kobject_init_and_add")]
    defs = v.definitions("debugfs_create_dir")
    assert defs[0]["path"] == "fs/debugfs/inode.c" and any(d["stub"] or d["header"] for d in defs[1:])
    assert v.edges_from("rtnl_mutex")
