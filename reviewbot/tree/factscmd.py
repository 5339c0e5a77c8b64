"""`reviewbot facts NAME --tree T`: what the tree knowledge base knows about
one function (issue 15): its file, the locks it takes by class, whether it
may sleep and why, its contexts, the lock-order edges into and out of its
locks, and the release pairs it takes part in.  Every definition is shown,
the real one first (config stubs, static inline variants, macros after)."""
from __future__ import annotations

import json

import click

from reviewbot.errors import ReviewbotError


def register(cli: click.Group) -> None:
    @cli.command("facts")
    @click.argument("name")
    @click.option("--tree", type=click.Path(file_okay=False, exists=True), default=".",
                  help="Kernel git tree (only read; default: the current directory).")
    @click.option("--rev", default="HEAD", help="Commit whose knowledge to read (default HEAD).")
    @click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="Output format.")
    def facts_cmd(name, tree, rev, fmt):
        """Print what the knowledge base knows about function NAME."""
        from reviewbot.tree import knowledge
        try:
            kb = knowledge.open_db(tree, rev)
        except RuntimeError as exc:
            raise ReviewbotError(f"--tree {tree}: {exc}") from None
        if kb is None:
            raise ReviewbotError(f"no knowledge base for {rev} of {tree}: run `reviewbot index --tree {tree}`")
        got = kb.view().describe(name)
        if fmt == "json":
            click.echo(json.dumps({"name": name, "commit": kb.commit, "definitions": got}, indent=2))
            return
        if not got:
            click.echo(f"{name}: not defined in {kb.commit[:12]}")
            return
        for i, d in enumerate(got):
            click.echo(f"{name}: {d['path']}:{d['line']}-{d['end']} ({d['kind']}"
                       f"{', static' if d['static'] else ''}{', real definition' if i == 0 and len(got) > 1 else ''})")
            if d["locks_taken"]:
                click.echo("  locks taken:")
                for t in d["locks_taken"]:
                    click.echo(f"    {t['class']} ({t['kind']}): " + " -> ".join(t["path"]))
            click.echo("  may sleep: " + ("yes\n    " + "\n    ".join(d["may_sleep"]) if d["may_sleep"] else "no (as far as the tree shows)"))
            for c in d["contexts"]:
                click.echo(f"  context {c['context']}: {c['witness']}")
            for h in d["held_by_callers"]:
                click.echo(f"  called with {', '.join(c for c, _ in h['held'])} held by {h['caller']} ({h['path']}:{h['line']})")
            for key, title in (("order_edges_in", "order edge into"), ("order_edges_out", "order edge out of")):
                for e in d[key]:
                    click.echo(f"  {title} its locks: {e['a']} -> {e['b']}: " + " -> ".join(e["witness"]))
            p = d["pairs"]
            for r in p["releases"]:
                click.echo(f"  released by {r[0]} (support {r[1]}/{r[2]}, {r[3]})")
            for r in p["acquires"]:
                click.echo(f"  releases what {r[0]} takes (support {r[1]}/{r[2]}, {r[3]})")
            for r in p["release_on_failure"]:
                click.echo(f"  on failure, callers release with {r[0]} ({r[1]}/{r[2]})")
