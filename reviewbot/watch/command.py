"""`reviewbot watch` and `reviewbot watch status` (plugged into cli.py by
register())."""
from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import datetime, timezone

import click

from reviewbot.errors import ReviewbotError


class WatchBusy(ReviewbotError):
    exit_code = 75      # EX_TEMPFAIL: cron may simply try again later


def _default_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "reviewbot")


def _state_path(value: str | None, s) -> str:
    return os.path.expanduser(value or s.get("state") or os.path.join(_default_dir(), "watch.sqlite"))


def _echo(text: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    click.echo(f"{stamp} reviewbot watch: {text}", err=True)


def _when(ts) -> str:
    if not ts:
        return "never"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_reviewer(text: str | None) -> tuple[str, str]:
    # as review.parse_reviewer, without importing the review pipeline
    # (a poll that finds nothing to review stays quick)
    import email.utils
    name, addr = email.utils.parseaddr(text or "")
    if not addr or "@" not in addr:
        return ("reviewbot", "reviewbot@localhost.invalid")
    return (name, addr)


def register(cli: click.Group) -> None:
    from reviewbot.cli import _settings

    @cli.group(invoke_without_command=True)
    @click.option("--lore-url", help="public-inbox server (default https://lore.kernel.org/; git config reviewbot.lore-url).")
    @click.option("--list", "lists", multiple=True, metavar="NAME",
                  help="Watch the list (inbox) NAME; repeatable. Also [reviewbot \"watch.NAME\"] list = NAME.")
    @click.option("--query", "queries", multiple=True, metavar="Q",
                  help="Watch a public-inbox search over all lists, e.g. 'dfn:net/xfrm/'; repeatable. "
                       "Also [reviewbot \"watch.NAME\"] query = Q (with list = L: search that list only).")
    @click.option("--state", "state_path", type=click.Path(dir_okay=False),
                  help="SQLite state database, created if absent (git config reviewbot.state; "
                       "default ~/.local/state/reviewbot/watch.sqlite).")
    @click.option("--outbox", type=click.Path(file_okay=False),
                  help="Directory for NAME.json and NAME.mbox drafts (git config reviewbot.outbox; "
                       "default ~/.local/state/reviewbot/outbox).")
    @click.option("--tree", type=click.Path(file_okay=False),
                  help="Kernel git tree to apply series to (never modified; git config reviewbot.tree).")
    @click.option("--since", help="How far back each poll looks: YYYY-MM-DD or e.g. 14d, the 14 days "
                                  "before the poll (git config reviewbot.since; default 7d).")
    @click.option("--once", is_flag=True, help="One pass, then exit (for cron; the default).")
    @click.option("--interval", type=float, metavar="SECONDS",
                  help="Poll every SECONDS until SIGTERM/SIGINT, which finish the series in hand "
                       "(git config reviewbot.interval).")
    @click.option("--grace", type=float, metavar="HOURS",
                  help="Review an incomplete series this long after its newest part's Date "
                       "(git config reviewbot.grace-hours; default 6).")
    @click.option("--from", "from_", help='Reviewer identity "Name <addr>" for the drafts.')
    @click.option("--min-confidence", type=click.Choice(["low", "medium", "high"]), default=None,
                  help="Lowest confidence that goes into replies (JSON keeps all).")
    @click.pass_context
    def watch(ctx, lore_url, lists, queries, state_path, outbox, tree, since, once, interval, grace, from_,
              min_confidence):
        """Poll lists on a lore (public-inbox) server, review each new patch
        series revision once, and leave reply drafts in the outbox.

        A series is reviewed when all its patches (and the cover letter)
        are in, or GRACE hours after its newest part.  Nothing is sent:
        NAME.mbox files are ready for `git send-email`.  `reviewbot watch
        status` shows what is pending, reviewed and failed."""
        ctx.ensure_object(dict)
        ctx.obj["watch_state"] = state_path
        if ctx.invoked_subcommand is not None:
            return
        from reviewbot.watch import watcher as w
        from reviewbot.lore.fetch import HttpPolicy

        s = _settings(ctx)
        if once and interval is not None:
            raise click.UsageError("give --once or --interval, not both")
        if interval is None and not once and s.get("interval"):
            try:
                interval = float(s.get("interval"))
            except ValueError:
                raise ReviewbotError(f"reviewbot.interval {s.get('interval')!r} is not a number") from None
        if interval is not None and interval <= 0:
            raise click.UsageError("--interval must be positive")
        try:
            grace_hours = float(grace if grace is not None else s.get("grace-hours", "6"))
        except ValueError:
            raise ReviewbotError(f"reviewbot.grace-hours {s.get('grace-hours')!r} is not a number") from None
        if grace_hours < 0:
            raise click.UsageError("--grace must not be negative")
        targets = w.make_targets(lore_url or s.get("lore-url"), list(lists), list(queries),
                                 w.watch_sections(s.items()) if not (lists or queries) else {})
        if not targets:
            raise click.UsageError("nothing to watch: give --list NAME or --query Q "
                                   "(or [reviewbot \"watch.NAME\"] sections in git config)")
        state = _state_path(state_path, s)
        out = os.path.expanduser(outbox or s.get("outbox") or os.path.join(_default_dir(), "outbox"))
        tree = tree or s.get("tree")
        tree = os.path.expanduser(tree) if tree else None
        for d in (os.path.dirname(os.path.abspath(state)), out):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as exc:
                raise ReviewbotError(f"{d}: {exc.strerror}") from None
        opts = w.WatchOptions(
            lore_url=lore_url or s.get("lore-url"),
            targets=targets,
            state=state,
            outbox=out,
            since=w.parse_since(since or s.get("since") or "7d"),
            since_relative=w.since_is_relative(since or s.get("since") or "7d"),
            since_spec=since or s.get("since") or "7d",
            tree=tree,
            grace_hours=grace_hours,
            interval=interval,
            reviewer=parse_reviewer(from_ or s.get("from")),
            min_confidence=min_confidence or s.get("min-confidence"),
            policy=HttpPolicy(timeout=float(s.get("timeout")), retries=int(s.get("retries"))),
            echo=_echo,
        )
        lock = open(state + ".lock", "a")
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise WatchBusy(f"another reviewbot watch is using {state}; not starting a second one") from None
            stopper = w.Stopper()
            stopper.install()
            watcher = w.Watcher(opts, stopper)
            try:
                code = watcher.run()
            finally:
                watcher.close()
            if stopper.signal is not None:
                _echo("stopped by signal; state saved")
                code = 0
        finally:
            lock.close()
        ctx.exit(code)

    @watch.command("status")
    @click.option("--state", "state_path", type=click.Path(dir_okay=False),
                  help="SQLite state database (git config reviewbot.state).")
    @click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
    @click.pass_context
    def status(ctx, state_path, as_json):
        """Show pending, reviewed and failed series and the last poll of each list."""
        from reviewbot.watch.state import State
        s = _settings(ctx)
        path = _state_path(state_path or (ctx.obj or {}).get("watch_state"), s)
        if not os.path.exists(path):
            raise ReviewbotError(f"{path}: no watch state yet (run `reviewbot watch` first)")
        st = State(path)
        try:
            counts = st.counts()
            pending = st.series(("pending",))
            failed = st.series(("failed",))
            polls = st.polls()
            reviewed = st.reviewed(10)
        finally:
            st.close()
        if as_json:
            click.echo(json.dumps({
                "state": path,
                "counts": counts,
                "pending": [{"subject": p.subject, "version": p.version, "total": p.total,
                             "have": sorted(i for i in p.parts if i), "missing": p.missing,
                             "cover": 0 in p.parts, "error": p.error} for p in pending],
                "failed": [{"subject": p.subject, "version": p.version, "error": p.error} for p in failed],
                "lists": polls,
                "reviewed": reviewed,
            }, indent=2, ensure_ascii=False))
            return
        order = ("pending", "reviewed", "failed", "superseded", "skipped")
        click.echo(f"state: {path}")
        click.echo("series: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in order))
        now = time.time()
        if pending:
            click.echo("pending:")
            for p in pending:
                have = len([i for i in p.parts if i])
                cover = "" if p.total == 1 else (", cover in" if 0 in p.parts else ", no cover yet")
                age = (now - p.last_date) / 3600
                extra = f"; last error: {p.error}" if p.error else ""
                click.echo(f"  v{p.version} {p.subject[:60] or '(no subject yet)'}: {have}/{p.total} patches{cover}, "
                           f"newest part {age:.1f}h old{extra}")
        if failed:
            click.echo("failed:")
            for p in failed:
                click.echo(f"  v{p.version} {p.subject[:60]}: {p.error}")
        click.echo("lists:")
        for r in polls:
            how = "ok" if not r["last_error"] else f"error: {r['last_error']}"
            click.echo(f"  {r['watch']}: last poll {_when(r['last_poll'])}, last success {_when(r['last_ok'])}, "
                       f"{r['messages']} messages seen; {how}")
        if not polls:
            click.echo("  (none polled yet)")
        if reviewed:
            click.echo("latest reviews:")
            for r in reviewed:
                click.echo(f"  {r['name']}.json  v{r['version']} {r['subject'][:60]} "
                           f"({r['replies']} repl{'y' if r['replies'] == 1 else 'ies'}, {_when(r['finished'])})")
