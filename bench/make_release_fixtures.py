"""Rebuild the missing-release fixtures (rules/fixtures/REL00x/) from the
linux-6.1 tarball: real files, a realistic change, `git format-patch`.

    python bench/make_release_fixtures.py
"""
from __future__ import annotations

import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.ktree import kernel_files, make_patch, make_series, make_tree  # noqa: E402

FIX = ROOT / "rules" / "fixtures"
AUTHOR = "Jane Developer <jane@example.org>"


def sub(old: str, new: str, count: int = 1):
    def edit(text: str) -> str:
        assert text.count(old) >= 1, old
        return text.replace(old, new, count)
    return edit


def chain(*edits):
    def edit(text: str) -> str:
        for e in edits:
            text = e(text)
        return text
    return edit


def fixture(code: str, name: str, paths: list[str], patches, body: str = "", cover=None):
    """Write CODE/NAME.mbox and CODE/<stem>.tree/ (the pre-image files)."""
    import tempfile
    files = kernel_files(paths)
    d = FIX / code
    d.mkdir(parents=True, exist_ok=True)
    stem = name.split("-", 1)[1]
    tree_dir = d / f"{name}.tree"
    if tree_dir.exists():
        shutil.rmtree(tree_dir)
    for rel, data in files.items():
        p = tree_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        make_tree(pathlib.Path(tmp) / "t", files)
        if isinstance(patches, tuple):
            subject, edits = patches
            msgs = [make_patch(pathlib.Path(tmp) / "t", edits, subject, AUTHOR, body=body)]
        else:
            msgs = make_series(pathlib.Path(tmp) / "t", patches, AUTHOR, cover=cover)
    (d / f"{name}.mbox").write_bytes(b"".join(m if m.endswith(b"\n") else m + b"\n" for m in msgs))
    print("wrote", d / f"{name}.mbox", "tree", stem)


def rel001():
    path = "net/core/sock_map.c"
    # bad: sockhash loses .map_release_uref (the drift seed002 5/6 fixed)
    fixture("REL001", "bad-sockhash-release-uref", [path], (
        "bpf, sockmap: Drop progs of a sockhash when the map is freed",
        {path: chain(
            sub("\tstruct hlist_head unlink_list;\n\tstruct bpf_shtab_elem *elem;\n"
                "\tstruct hlist_node *node;\n\tint i;\n",
                "\tstruct hlist_head unlink_list;\n\tstruct bpf_shtab_elem *elem;\n"
                "\tstruct hlist_node *node;\n\tint i;\n\n"
                "\tpsock_progs_drop(&htab->progs);\n"),
            sub("static void sock_hash_release_progs(struct bpf_map *map)\n"
                "{\n"
                "\tpsock_progs_drop(&container_of(map, struct bpf_shtab, map)->progs);\n"
                "}\n\n", ""),
            sub("\t.map_release_uref\t= sock_hash_release_progs,\n", ""))},
    ), body="There is no need for a separate release callback: drop the\n"
            "programs of a sockhash together with its buckets in map_free.")
    # ok: a new member added to both twins
    fixture("REL001", "ok-sockmap-both-twins", [path], (
        "bpf, sockmap: Check BTF of both socket map types the same way",
        {path: chain(
            sub("\t.map_release_uref\t= sock_map_release_progs,\n",
                "\t.map_release_uref\t= sock_map_release_progs,\n\t.map_fd_sys_lookup_elem\t= NULL,\n"),
            sub("\t.map_release_uref\t= sock_hash_release_progs,\n",
                "\t.map_release_uref\t= sock_hash_release_progs,\n\t.map_fd_sys_lookup_elem\t= NULL,\n"))},
    ), body="Spell out that neither socket map type has a sys lookup of fds.")



_STATE_CHANGE_HANDLER = """static void sk_psock_state_change(struct sock *sk)
{
	struct sk_psock *psock;

	rcu_read_lock();
	psock = sk_psock(sk);
	if (psock && sk->sk_state == TCP_CLOSE)
		schedule_delayed_work(&psock->work, 0);
	rcu_read_unlock();
}

struct sk_psock *sk_psock_init(struct sock *sk, int node)
"""

_STATE_CHANGE_CHAINED = """static void sk_psock_state_change(struct sock *sk)
{
	void (*state_change)(struct sock *sk) = NULL;
	struct sk_psock *psock;

	rcu_read_lock();
	psock = sk_psock(sk);
	if (psock) {
		if (sk->sk_state == TCP_CLOSE)
			schedule_delayed_work(&psock->work, 0);
		state_change = psock->saved_state_change;
	}
	rcu_read_unlock();
	if (state_change)
		state_change(sk);
}

struct sk_psock *sk_psock_init(struct sock *sk, int node)
"""


def rel002():
    h, c = "include/linux/skmsg.h", "net/core/skmsg.c"
    member = sub("\tvoid (*saved_data_ready)(struct sock *sk);\n",
                 "\tvoid (*saved_data_ready)(struct sock *sk);\n"
                 "\tvoid (*saved_state_change)(struct sock *sk);\n")
    save = sub("\tpsock->saved_write_space = sk->sk_write_space;\n",
               "\tpsock->saved_write_space = sk->sk_write_space;\n"
               "\tpsock->saved_state_change = sk->sk_state_change;\n"
               "\tsk->sk_state_change = sk_psock_state_change;\n")
    fixture("REL002", "bad-psock-state-change", [h, c], (
        "skmsg: Kick the backlog when a psock's socket closes",
        {h: member, c: chain(sub("struct sk_psock *sk_psock_init(struct sock *sk, int node)\n",
                                 _STATE_CHANGE_HANDLER), save)},
    ), body="Schedule the backlog worker from sk_state_change so that queued\n"
            "skbs are dropped as soon as the socket is closed.")
    restore = sub("\tsk_psock_restore_proto(sk, psock);\n\trcu_assign_sk_user_data(sk, NULL);\n",
                  "\tsk_psock_restore_proto(sk, psock);\n"
                  "\tsk->sk_state_change = psock->saved_state_change;\n"
                  "\trcu_assign_sk_user_data(sk, NULL);\n")
    fixture("REL002", "ok-psock-state-change-chained", [h, c], (
        "skmsg: Kick the backlog when a psock's socket closes",
        {h: member, c: chain(sub("struct sk_psock *sk_psock_init(struct sock *sk, int node)\n",
                                 _STATE_CHANGE_CHAINED), save, restore)},
    ), body="Schedule the backlog worker from sk_state_change so that queued\n"
            "skbs are dropped as soon as the socket is closed, then chain to\n"
            "the socket's own callback; put it back when the psock is dropped.")



_PROC_NET = """static int dccp_proc_show(struct seq_file *seq, void *v)
{
	seq_printf(seq, "InErrs: %%lu\\n", DCCP_MIB_READ(DCCP_MIB_INERRS));
	return 0;
}

static int __net_init dccp_proc_init_net(struct net *net)
{
	if (!proc_create_net_single("dccp_stats", 0444, net->proc_net,
				    dccp_proc_show, NULL))
		return -ENOMEM;
	return 0;
}
%(exit)s
static struct pernet_operations dccp_proc_net_ops = {
	.init = dccp_proc_init_net,
%(exit_member)s};

static int __init dccp_init(void)
"""

_PROC_EXIT = """
static void __net_exit dccp_proc_exit_net(struct net *net)
{
	remove_proc_entry("dccp_stats", net->proc_net);
}
"""


def _dccp(with_exit: bool, ladder_ok: bool, fini_ok: bool = True):
    proc = _PROC_NET % {"exit": _PROC_EXIT if with_exit else "",
                        "exit_member": "\t.exit = dccp_proc_exit_net,\n" if with_exit else ""}
    edits = [sub("static int __init dccp_init(void)\n", proc)]
    if ladder_ok:
        edits.append(sub("\trc = dccp_sysctl_init();\n\tif (rc)\n\t\tgoto out_ackvec_exit;\n",
                         "\trc = register_pernet_subsys(&dccp_proc_net_ops);\n\tif (rc)\n"
                         "\t\tgoto out_ackvec_exit;\n\n"
                         "\trc = dccp_sysctl_init();\n\tif (rc)\n\t\tgoto out_unregister_pernet;\n"))
        edits.append(sub("out_ackvec_exit:\n", "out_unregister_pernet:\n"
                         "\tunregister_pernet_subsys(&dccp_proc_net_ops);\nout_ackvec_exit:\n"))
    else:
        edits.append(sub("\trc = dccp_sysctl_init();\n",
                         "\trc = register_pernet_subsys(&dccp_proc_net_ops);\n\tif (rc)\n"
                         "\t\tgoto out_ackvec_exit;\n\n\trc = dccp_sysctl_init();\n"))
    if fini_ok:
        edits.append(sub("\tccid_cleanup_builtins();\n",
                         "\tunregister_pernet_subsys(&dccp_proc_net_ops);\n\tccid_cleanup_builtins();\n"))
    return {"net/dccp/proto.c": chain(*edits)}


def rel003():
    subj = "dccp: Add /proc/net/dccp_stats"
    body = "Show the DCCP error counters of a namespace in /proc/net/dccp_stats."
    paths = ["net/dccp/proto.c"]
    fixture("REL003", "bad-dccp-proc-no-netns-exit", paths,
            (subj, _dccp(with_exit=False, ladder_ok=True)), body=body)
    fixture("REL003", "bad-dccp-proc-unwind-skipped", paths,
            (subj, _dccp(with_exit=True, ladder_ok=False)), body=body)
    fixture("REL003", "bad-dccp-proc-fini", paths,
            (subj, _dccp(with_exit=True, ladder_ok=True, fini_ok=False)), body=body)
    fixture("REL003", "ok-dccp-proc", paths,
            (subj, _dccp(with_exit=True, ladder_ok=True)), body=body)
    # the real fix that adds the missing netns cleanup (no tree: it predates 6.1)
    shutil.copy(ROOT / "tests" / "data" / "messages" / "flow-dissector-netns-cleanup-v2.mbox",
                FIX / "REL003" / "ok-flow-dissector-netns-cleanup.mbox")


if __name__ == "__main__":
    for fn in sys.argv[1:] or ["rel001", "rel002", "rel003"]:
        if fn in globals():
            globals()[fn]()
