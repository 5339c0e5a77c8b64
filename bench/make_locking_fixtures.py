"""Regenerate the fixtures of the locking rules (LCK001-LCK005).

Each fixture is a realistic change to real linux-6.1 code, made with git
and `git format-patch` (tests/support/ktree.py); the pre-image files go in
`rules/fixtures/CODE/NAME.tree/` (shared by `bad-NAME` and `ok-NAME`).

    python bench/make_locking_fixtures.py        # then review `git diff`
    REVIEWBOT_REGEN=1 python -m pytest -q tests/test_rule_fixtures.py -k LCK
"""
from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.ktree import kernel_files, make_patch, make_series, make_tree  # noqa: E402

FIX = ROOT / "rules" / "fixtures"
AUTHOR = "Jane Developer <jane@example.org>"
SOCKMAP = "net/core/sock_map.c"


def rep(old: str, new: str):
    def edit(text: str) -> str:
        assert text.count(old) == 1, f"not exactly one match for {old[:60]!r}"
        return text.replace(old, new)
    return edit


def chain(*fns):
    def edit(text: str) -> str:
        for f in fns:
            text = f(text)
        return text
    return edit


def build(code: str, mbox_name: str, tree_name: str, files: list[str],
          patches: list[tuple[str, dict]], bodies: list[str] | None = None) -> None:
    d = FIX / code
    d.mkdir(parents=True, exist_ok=True)
    data = kernel_files(files)
    tree_dir = d / (tree_name + ".tree")
    if tree_dir.exists():
        shutil.rmtree(tree_dir)
    for p, b in data.items():
        t = tree_dir / p
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_bytes(b)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp) / "t"
        make_tree(work, data)
        if len(patches) == 1:
            msgs = [make_patch(work, patches[0][1], patches[0][0], AUTHOR, body=(bodies or [""])[0])]
        else:
            msgs = make_series(work, patches, AUTHOR, body=bodies)
    (d / (mbox_name + ".mbox")).write_bytes(b"".join(m if m.endswith(b"\n") else m + b"\n" for m in msgs))
    print("wrote", (d / (mbox_name + ".mbox")).relative_to(ROOT))


def lck002():
    anchor = "\traw_spin_lock_bh(&stab->lock);\n\tosk = stab->sks[idx];\n"
    bad = rep(anchor, anchor + "\tif (osk == sk)\n\t\treturn -EEXIST;\n")
    ok = rep(anchor, anchor + "\tif (osk == sk) {\n\t\tret = -EEXIST;\n\t\tgoto out_unlock;\n\t}\n")
    body = ("Updating a sockmap slot with the socket it already holds drops and\n"
            "re-takes the link for nothing; refuse it with -EEXIST.")
    subj = "bpf, sockmap: refuse to replace a socket with itself"
    build("LCK002", "bad-sockmap", "sockmap", [SOCKMAP], [(subj, {SOCKMAP: bad})], [body])
    build("LCK002", "ok-sockmap", "sockmap", [SOCKMAP], [(subj, {SOCKMAP: ok})], [body])


def lck003():
    old = "\t\t\t\t   GFP_ATOMIC | __GFP_NOWARN,\n\t\t\t\t   htab->map.numa_node);"
    bad = rep(old, old.replace("GFP_ATOMIC", "GFP_KERNEL"))
    ok = rep(old, old.replace("GFP_ATOMIC", "GFP_NOWAIT"))
    build("LCK003", "bad-sockhash-alloc", "sockhash-alloc", [SOCKMAP],
          [("bpf, sockmap: let sockhash element allocation reclaim", {SOCKMAP: bad})],
          ["Under memory pressure GFP_ATOMIC fails quickly and map updates\n"
           "return -ENOMEM spuriously; allow the allocation to reclaim."])
    build("LCK003", "ok-sockhash-alloc", "sockhash-alloc", [SOCKMAP],
          [("bpf, sockmap: do not dip into reserves for sockhash elements", {SOCKMAP: ok})],
          ["Element allocation does not need the atomic reserves; GFP_NOWAIT\n"
           "fails without reclaiming and leaves the reserves alone."])


def lck001():
    old = ("\tstruct sk_psock_link *link;\n\n"
           "\twhile ((link = sk_psock_link_pop(psock))) {\n"
           "\t\tsock_map_unlink(sk, link);\n"
           "\t\tsk_psock_free_link(link);\n"
           "\t}\n}\n")
    bad = rep(old, "\tstruct sk_psock_link *link;\n\n"
              "\t/* Keep the psock callbacks stable while the links go away. */\n"
              "\twrite_lock_bh(&sk->sk_callback_lock);\n"
              "\twhile ((link = sk_psock_link_pop(psock))) {\n"
              "\t\tsock_map_unlink(sk, link);\n"
              "\t\tsk_psock_free_link(link);\n"
              "\t}\n"
              "\twrite_unlock_bh(&sk->sk_callback_lock);\n}\n")
    ok = rep(old, "\tstruct sk_psock_link *link;\n\n"
             "\tfor (;;) {\n"
             "\t\t/* Pop under sk_callback_lock, unlink after dropping it:\n"
             "\t\t * the map side takes the bucket lock first.\n"
             "\t\t */\n"
             "\t\twrite_lock_bh(&sk->sk_callback_lock);\n"
             "\t\tlink = sk_psock_link_pop(psock);\n"
             "\t\twrite_unlock_bh(&sk->sk_callback_lock);\n"
             "\t\tif (!link)\n"
             "\t\t\tbreak;\n"
             "\t\tsock_map_unlink(sk, link);\n"
             "\t\tsk_psock_free_link(link);\n"
             "\t}\n}\n")
    body = ("sock_map_remove_links() can race with a verdict program update that\n"
            "swaps the socket callbacks; serialise the two with sk_callback_lock.")
    build("LCK001", "bad-sockmap-links", "sockmap-links", [SOCKMAP],
          [("bpf, sockmap: hold sk_callback_lock while removing links", {SOCKMAP: bad})], [body])
    build("LCK001", "ok-sockmap-links", "sockmap-links", [SOCKMAP],
          [("bpf, sockmap: pop links under sk_callback_lock", {SOCKMAP: ok})], [body])


def lck005():
    head = ("\tif (!sock_map_sk_is_suitable(sk))\n\t\treturn -EOPNOTSUPP;\n\n"
            "\tlocal_bh_disable();\n\tbh_lock_sock(sk);\n")
    tail = ("\tif (!sock_map_sk_state_allowed(sk))\n\t\tret = -EOPNOTSUPP;\n"
            "\telse if (map->map_type == BPF_MAP_TYPE_SOCKMAP)\n")
    bad = rep(head + tail,
              "\tif (!sock_map_sk_is_suitable(sk))\n\t\treturn -EOPNOTSUPP;\n"
              "\tif (!sock_map_sk_state_allowed(sk))\n\t\treturn -EOPNOTSUPP;\n\n"
              "\tlocal_bh_disable();\n\tbh_lock_sock(sk);\n"
              "\tif (map->map_type == BPF_MAP_TYPE_SOCKMAP)\n")
    ok = rep(head + tail,
             "\tif (!sock_map_sk_is_suitable(sk))\n\t\treturn -EOPNOTSUPP;\n"
             "\tif (sk->sk_type != SOCK_STREAM && sk->sk_type != SOCK_DGRAM)\n"
             "\t\treturn -EOPNOTSUPP;\n\n"
             "\tlocal_bh_disable();\n\tbh_lock_sock(sk);\n" + tail)
    build("LCK005", "bad-sockmap-state", "sockmap-state", [SOCKMAP],
          [("bpf, sockmap: check the socket state before locking it", {SOCKMAP: bad})],
          ["Sockets in the wrong state are refused anyway; do it before\n"
           "disabling bottom halves and taking the socket spinlock."])
    build("LCK005", "ok-sockmap-state", "sockmap-state", [SOCKMAP],
          [("bpf, sockmap: refuse raw sockets early", {SOCKMAP: ok})],
          ["The socket type never changes; refuse anything but stream and\n"
           "datagram sockets before taking the socket spinlock."])


def lck004():
    old = ("\tlink->map = map;\n\tspin_lock_bh(&psock->link_lock);\n")
    bad = rep(old, "\tlink->map = map;\n\tspin_lock(&psock->link_lock);\n")
    bad = chain(bad, rep("\tlist_add_tail(&link->list, &psock->link);\n\tspin_unlock_bh(&psock->link_lock);\n",
                         "\tlist_add_tail(&link->list, &psock->link);\n\tspin_unlock(&psock->link_lock);\n"))
    ok = rep("\tlink->link_raw = link_raw;\n", "\tINIT_LIST_HEAD(&link->list);\n\tlink->link_raw = link_raw;\n")
    build("LCK004", "bad-sockmap-link", "sockmap-link", [SOCKMAP],
          [("bpf, sockmap: no need to disable BH for the link list", {SOCKMAP: bad})],
          ["sock_map_add_link() runs in process context; a plain spin_lock()\n"
           "is enough to add to the link list."])
    build("LCK004", "ok-sockmap-link", "sockmap-link", [SOCKMAP],
          [("bpf, sockmap: initialise the link list head", {SOCKMAP: ok})], [""])


if __name__ == "__main__":
    wanted = sys.argv[1:] or [n for n in list(globals()) if n.startswith("lck")]
    for name in wanted:
        globals()[name]()
