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


if __name__ == "__main__":
    for fn in sys.argv[1:] or ["rel001", "rel002", "rel003"]:
        if fn in globals():
            globals()[fn]()
