"""The command line: `reviewbot review|rules|config|check|watch`."""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys

import click

from reviewbot import __version__
from reviewbot.errors import ReviewbotError


class Progress:
    """One status line on stderr while a terminal is watching; silent otherwise."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.shown = False

    def __call__(self, text: str) -> None:
        if not self.enabled:
            return
        sys.stderr.write("\r\x1b[K" + text[:120])
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _settings(ctx: click.Context, validate: bool = True):
    from reviewbot import config
    obj = ctx.find_root().obj or {}
    if "settings" not in obj:
        obj["settings"] = config.load(obj.get("overrides", ()))
    return config.validate(obj["settings"]) if validate else obj["settings"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a setting (reviewbot.KEY), like git -c / b4 -c.")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail to stderr.")
@click.version_option(__version__, prog_name="reviewbot")
@click.pass_context
def cli(ctx: click.Context, overrides, verbose):
    """Review Linux kernel patch series from lore and draft replies."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.CRITICAL, format="%(message)s")
    ctx.obj = {"overrides": overrides, "verbose": verbose}


@cli.command()
@click.argument("source")
@click.option("--lore-url", help="public-inbox server or inbox (default https://lore.kernel.org/; git config reviewbot.lore-url).")
@click.option("--tree", type=click.Path(file_okay=False), help="Kernel git tree to apply the series to (never modified).")
@click.option("--base", help="Revision to apply onto (default: the series' base-commit if known, else HEAD).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default=None, help="Output format.")
@click.option("--mbox-out", help="Write replies for git send-email: a file, or a directory (one file per reply).")
@click.option("--from", "from_", help='Reviewer identity "Name <addr>" (default: git config sendemail.from, else user.name/user.email).')
@click.option("--min-confidence", type=click.Choice(["low", "medium", "high"]), default=None,
              help="Lowest confidence that goes into replies (JSON keeps all).")
@click.option("--rule", "rules", multiple=True, help="Run only this rule (code or name); repeatable.")
@click.pass_context
def review(ctx, source, lore_url, tree, base, fmt, mbox_out, from_, min_confidence, rules):
    """Review the series in SOURCE: a Message-ID, a lore URL, an mbox file or '-'."""
    s = _settings(ctx)
    _review(s, source, lore_url, tree, base, fmt, mbox_out, from_, min_confidence, rules)


def _review(s, source, lore_url, tree, base, fmt, mbox_out, from_, min_confidence, rules):
    from reviewbot.reply import outbox
    from reviewbot.reply import report
    from reviewbot.lore.fetch import HttpPolicy
    from reviewbot.review import Options, parse_reviewer, review_source, to_json

    opts = Options(
        lore_url=lore_url or s.get("lore-url"),
        tree=tree or s.get("tree"),
        base=base,
        reviewer=parse_reviewer(from_ or s.get("from")),
        min_confidence=min_confidence or s.get("min-confidence"),
        policy=HttpPolicy(timeout=float(s.get("timeout")), retries=int(s.get("retries"))),
        only_rules=set(rules) or None,
    )
    fmt = fmt or s.get("format")
    progress = Progress()
    try:
        res = review_source(source, opts, progress=progress)
    finally:
        progress.done()
    written = []
    if mbox_out and res.replies:
        written = outbox.write(res.replies, mbox_out)
    if fmt == "json":
        click.echo(json.dumps(to_json(res), indent=2, ensure_ascii=False))
    else:
        click.echo(report.text(res), nl=False)
        for path in written:
            click.echo(f"wrote {path}")
        if mbox_out and not res.replies:
            click.echo("no replies to write")


@cli.group(invoke_without_command=True)
@click.pass_context
def rules(ctx):
    """List the review rules (`rules explain CODE` for one rule's documentation)."""
    if ctx.invoked_subcommand is None:
        from reviewbot.engine import discover
        for r in discover():
            click.echo(f"{r.code:<8} {r.name:<32} {r.family:<18} {r.severity:<8} {r.confidence}")


@rules.command()
@click.argument("code")
def explain(code):
    """Print the documentation of rule CODE (code or name)."""
    from reviewbot.engine import discover
    for r in discover():
        if code in (r.code, r.name):
            click.echo(f"{r.code} {r.name} (family {r.family}, severity {r.severity}, confidence {r.confidence})\n")
            click.echo(r.doc())
            return
    raise ReviewbotError(f"no rule {code!r} (see `reviewbot rules`)")


@cli.command("config")
@click.pass_context
def config_cmd(ctx):
    """Print the effective settings and where each came from."""
    s = _settings(ctx, validate=False)     # show bad values too: this is where to look
    for key, value, origin in s.items():
        click.echo(f"reviewbot.{key}={value}\t# {origin}")


def _load_optional(name: str):
    import importlib
    try:
        return importlib.import_module(f"reviewbot.{name}")
    except ModuleNotFoundError:
        return None


for _mod in ("reply.checkcmd", "watch.command", "tree.indexcmd", "tree.factscmd"):
    _m = _load_optional(_mod)
    if _m is not None and hasattr(_m, "register"):
        _m.register(cli)


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like Ctrl-C so that every `finally`
    (temporary index and objects, partial output files) runs.  A
    BaseException, so that no `except Exception` swallows it and click
    does not turn it into Abort."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _install_signal_handlers() -> dict:
    seen = {"n": 0}

    def handler(signum, frame):
        seen["n"] += 1
        if seen["n"] == 1:
            raise Interrupted(signum)
        if seen["n"] >= 3:      # third time: stop waiting for the cleanup
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        # second time: the cleanup of the first is running; let it finish

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):      # not the main thread
            pass
    return old


def script() -> None:
    """The `reviewbot` command; main() is for callers in a process of their own.

    A review makes a great many small objects (syntax nodes, facts, flows)
    and frees few of them before it ends, so the cyclic garbage collector
    is run less often (a young generation of 10,000 objects, not 700), and
    at exit the heap is frozen so that the interpreter's shutdown does not
    walk it once more.  Together ~0.1 s of a review of a 7,000-line file;
    the peak memory is the same (bench/bench_review.py)."""
    gc.set_threshold(10_000, 50, 100)
    rc = main()
    gc.freeze()
    sys.exit(rc)


def main(argv=None) -> int:
    # `reviewbot ... | head` ends quietly; restored on return (a caller
    # running main() in-process keeps its own SIGPIPE handling)
    old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    old_handlers = _install_signal_handlers()
    try:
        return _main(argv)
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        if old_pipe is not None:
            signal.signal(signal.SIGPIPE, old_pipe)


def _main(argv=None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="reviewbot", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv       # ctx.exit(N) in a command (e.g. `check` with findings)
    except click.exceptions.Abort:
        click.echo("reviewbot: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ReviewbotError as exc:
        click.echo(f"reviewbot: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("reviewbot: interrupted", err=True)
        return 130
    except Interrupted as exc:
        if exc.signum == signal.SIGTERM:
            click.echo("reviewbot: terminated", err=True)
            return 128 + signal.SIGTERM
        click.echo("reviewbot: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except MemoryError:
        click.echo("reviewbot: out of memory on this input", err=True)
        return 1
    except Exception as exc:  # last resort: one line, never a traceback
        if os.environ.get("REVIEWBOT_DEBUG"):
            raise
        click.echo(f"reviewbot: internal error: {exc.__class__.__name__}: {str(exc)[:200]}", err=True)
        return 70
    return 0


if __name__ == "__main__":
    script()
