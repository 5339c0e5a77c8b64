"""`reviewbot index`: build (or update) the function index of a tree.

DUP001/DUP002 use the index of the review's base commit when the cache
holds it (or a full index the base is a delta of); building one for a
whole kernel tree takes about a minute on two cores, so it is done here,
ahead of reviews, rather than during one (or with REVIEWBOT_DUPINDEX=build).
Beside it, the tree knowledge base (reviewbot.tree.knowledge: locks,
may-sleep, contexts, lock order, release pairs) is built, or made as a
delta on a cached full base when HEAD moved.
"""
from __future__ import annotations

import os
import time

import click

from reviewbot.errors import ReviewbotError


def register(cli: click.Group) -> None:
    @cli.command("index")
    @click.option("--tree", type=click.Path(file_okay=False, exists=True), default=".",
                  help="Kernel git tree (only read; default: the current directory).")
    @click.option("--rev", default="HEAD", help="Commit to index (default HEAD).")
    @click.option("--procs", type=int, default=min(2, os.cpu_count() or 1), help="Worker processes.")
    @click.option("--rebuild", is_flag=True, help="Build a full index even if a delta would do.")
    @click.option("--knowledge/--no-knowledge", default=True,
                  help="Also build the tree knowledge base (locks, may-sleep, contexts, pairs).")
    def index_cmd(tree, rev, procs, rebuild, knowledge):
        """Index the C functions of TREE at REV for the duplicated-helper rules."""
        from reviewbot.tree import dupindex as dx
        t0 = time.perf_counter()
        try:
            if rebuild:
                idx = dx.DupIndex.build(tree, rev, procs=procs)
            else:
                idx = dx.DupIndex.open(tree, rev, build=True, procs=procs)
        except RuntimeError as exc:
            raise ReviewbotError(f"--tree {tree}: {exc}") from None
        kind = "delta on " + idx.base.meta["commit"][:12] if idx.delta is not None else "full"
        click.echo(f"indexed {len(idx)} functions of {idx.commit[:12]} ({kind}) in "
                   f"{time.perf_counter() - t0:.1f} s; cache {dx.default_cache_dir()}")
        if not knowledge:
            return
        from reviewbot.tree import knowledge as kn
        t0 = time.perf_counter()
        try:
            if rebuild:
                kb = kn.Knowledge.load(kn.build(tree, rev, procs=procs), dx.default_cache_dir())
            else:
                kb = kn.open_db(tree, rev, build_missing=True, procs=procs)
        except RuntimeError as exc:
            raise ReviewbotError(f"--tree {tree}: {exc}") from None
        kind = "delta on " + kb.meta["parent"][10:22] if kb.meta.get("parent") else "full"
        click.echo(f"knowledge of {kb.commit[:12]} ({kind}) in {time.perf_counter() - t0:.1f} s: {kb.path.name}")
