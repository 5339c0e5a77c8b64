"""`reviewbot check`: review one patch message on stdin, as b4 runs checks.

b4 feeds each patch to a check command on stdin, with the top of the git
tree it runs in as working directory (`b4.am-perpatch-check-cmd` for
`b4 am -k`, `b4.prep-perpatch-check-cmd` for `b4 prep --check`,
`b4.review-perpatch-check-cmd` for the review TUI).  For the first two it
reads checkpatch-style lines from stdout ("ERROR:" makes a line a
failure, anything else a warning) and turns every stderr line into a
failure; no output means "passed all checks".  For the review TUI it
expects a JSON list of `{"tool", "status": pass|warn|fail, "summary",
"details", "url"}`.

The working directory, when it is a git tree, is the tree the patch is
applied to (in a scratch index: the tree itself is never written to).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click

from reviewbot.errors import ReviewbotError, TreeError

# What b4 writes for each severity (checkpatch's words).  Info findings
# are checkpatch's CHECK: level: printed only with --strict.
LEVEL = {"error": "ERROR", "warning": "WARNING", "info": "CHECK"}
STATUS = {"error": "fail", "warning": "warn", "info": "pass"}
_ORDER = {"pass": 0, "warn": 1, "fail": 2}


def git_toplevel(path: str) -> str | None:
    """The top of the git work tree containing PATH, or None."""
    try:
        proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.decode(errors="replace").strip()
    return out if proc.returncode == 0 and out else None


# In quoted-printable every "=" starts "=XX" or a soft line break, and
# every byte is 7-bit; decoded C code has "= ", "==", "=\n" with 8-bit
# bytes, or no "=" at all (then decoding changes nothing).
_QP_BAD_EQ = re.compile(rb"=(?![0-9A-Fa-f]{2}|\n)")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_B64_LINE = re.compile(rb"^[A-Za-z0-9+/=]*$")


def undo_predecoding(data: bytes) -> bytes:
    """b4 hands check commands the original headers over a body it has
    already decoded, so a quoted-printable or base64 patch arrives with a
    Content-Transfer-Encoding that no longer holds.  When the body does not
    look encoded, say so in the headers (8bit) so that it is not decoded a
    second time (which turns `==` into `=` and the like)."""
    text = data.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        return data
    m = re.search(rb"(?im)^content-transfer-encoding:[ \t]*([A-Za-z0-9-]+)[ \t]*$", head)
    if not m:
        return data
    cte = m.group(1).lower()
    if cte == b"quoted-printable":
        encoded = not _QP_BAD_EQ.search(body) and not _EIGHT_BIT.search(body)
    elif cte == b"base64":
        encoded = all(_B64_LINE.match(line.strip()) for line in body.split(b"\n"))
    else:
        return data
    if encoded:
        return data
    head = head[:m.start(1)] + b"8bit" + head[m.end(1):]
    return head + sep + body


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _location(f) -> str:
    if f.path and f.line:
        return f"{f.path}:{f.line}: "
    if f.path:
        return f"{f.path}: "
    return ""


def checkpatch_lines(res, strict: bool) -> list[str]:
    """One line per finding, `PATH:LINE: WARNING: message [CODE]`."""
    out = []
    for pr in res.patches:
        for f in pr.findings:
            if f.severity == "info" and not strict:
                continue
            out.append(f"{_location(f)}{LEVEL.get(f.severity, 'WARNING')}: {_one_line(f.message)} [{f.rule}]")
    for f in res.series_findings:
        if f.severity == "info" and not strict:
            continue
        out.append(f"{_location(f)}{LEVEL.get(f.severity, 'WARNING')}: {_one_line(f.message)} [{f.rule}]")
    return out


def _added_line(patch, path, line) -> str:
    fd = patch.diff.file(path) if path else None
    if fd is None or line is None:
        return ""
    for h in fd.hunks:
        for ln in h.lines:
            if ln.kind == "+" and ln.new_no == line:
                return ln.text.strip()
    return ""


def b4_review_results(res, tree: str | None) -> list[dict]:
    """The JSON b4's review-perpatch-check-cmd expects: one result for
    reviewbot, its findings as a JSON list in `details` (the shape b4's
    own checkpatch and patchwork checks use, so its TUI lists them)."""
    details: list[dict] = []
    counts = {"error": 0, "warning": 0, "info": 0}
    worst = "pass"
    pairs = [(pr.patch, f) for pr in res.patches for f in pr.findings]
    pairs += [(None, f) for f in res.series_findings]
    for patch, f in pairs:
        status = STATUS.get(f.severity, "warn")
        counts[f.severity] = counts.get(f.severity, 0) + 1
        if _ORDER[status] > _ORDER[worst]:
            worst = status
        entry = {
            "status": status,
            "context": f"{f.rule} {f.name}",
            "state": f.severity,
            "description": f"{_location(f)}{_one_line(f.message)}",
        }
        src = _added_line(patch, f.path, f.line) if patch is not None else ""
        if src:
            entry["srcline"] = src
        details.append(entry)
    for pr in res.patches:
        if pr.applies is False:
            details.append({"status": "pass", "description":
                            f"note: {pr.apply_error or 'does not apply'} to {tree}; reviewed the diff text only"})
    parts = []
    for sev, word in (("error", "error"), ("warning", "warning"), ("info", "note")):
        if counts.get(sev):
            parts.append(f"{counts[sev]} {word}{'s' if counts[sev] != 1 else ''}")
    if not res.patches:
        summary = "no patch in this message"
    elif not any(pr.patch.has_diff for pr in res.patches):
        summary = "no diff in this message"
    else:
        summary = ", ".join(parts) if parts else "no findings"
    if any(pr.applies is False for pr in res.patches):
        summary += " (diff only: does not apply)"
    result = {"tool": "reviewbot", "status": worst, "summary": summary, "url": ""}
    result["details"] = json.dumps(details, ensure_ascii=False) if details else ""
    return [result]


def choose_tree(tree_opt: str | None, no_tree: bool, setting: str | None) -> str | None:
    if no_tree:
        return None
    if tree_opt:
        return tree_opt
    top = git_toplevel(os.getcwd())
    if top:
        return top
    return setting or None


def register(cli: click.Group) -> None:
    @cli.command("check")
    @click.argument("patch", required=False, default="-", type=click.Path(dir_okay=False, allow_dash=True))
    @click.option("--format", "fmt", type=click.Choice(["checkpatch", "b4-review"]), default="checkpatch",
                  show_default=True,
                  help="checkpatch: `PATH:LINE: WARNING: message` lines (b4.am-perpatch-check-cmd, "
                       "b4.prep-perpatch-check-cmd); b4-review: the JSON list of "
                       "b4.review-perpatch-check-cmd.")
    @click.option("--tree", type=click.Path(file_okay=False),
                  help="Kernel git tree to apply the patch to (default: the git tree of the working "
                       "directory, as b4 runs checks there; else git config reviewbot.tree). Never modified.")
    @click.option("--no-tree", is_flag=True, help="Review the diff text only; do not apply it anywhere.")
    @click.option("--strict", is_flag=True, help="Also print info-level findings, as CHECK: lines.")
    @click.option("--min-confidence", type=click.Choice(["low", "medium", "high"]), default=None,
                  help="Lowest confidence reported (default: git config reviewbot.min-confidence, else medium).")
    @click.option("--rule", "rules", multiple=True, help="Run only this rule (code or name); repeatable.")
    @click.pass_context
    def check(ctx, patch, fmt, tree, no_tree, strict, min_confidence, rules):
        """Review one patch message (PATCH file, or stdin) the way b4 runs checks.

        \b
        Prints nothing and exits 0 when the patch is clean; otherwise one
        line per finding and exit status 1 (like checkpatch.pl).  With
        --format b4-review it always prints a JSON list and exits 0.
        Use it from b4:
          git config b4.am-perpatch-check-cmd "reviewbot check"
          git config b4.review-perpatch-check-cmd "reviewbot check --format b4-review"
        """
        from reviewbot.cli import _settings
        from reviewbot.findings import confidence_at_least
        from reviewbot.review import Options, review_mbox

        s = _settings(ctx)
        if patch == "-":
            if sys.stdin.isatty():
                raise ReviewbotError("check reads one patch message on standard input "
                                     "(or give a file): pipe a patch in")
            data = sys.stdin.buffer.read()
        else:
            try:
                with open(patch, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise ReviewbotError(f"{patch}: {exc.strerror or exc}") from None
        if not data.strip():
            raise ReviewbotError("no patch message on standard input" if patch == "-" else f"{patch} is empty")
        the_tree = choose_tree(tree, no_tree, s.get("tree"))
        minimum = min_confidence or s.get("min-confidence") or "medium"
        opts = Options(tree=the_tree, min_confidence=minimum, only_rules=set(rules) or None)
        data = undo_predecoding(data)
        try:
            res = review_mbox(data, opts)
        except TreeError:
            if tree or not the_tree or the_tree == s.get("tree"):
                raise
            # The working directory's git tree is only a guess (b4 runs
            # checks wherever it is started): if it cannot be used (no
            # commit yet, say), review the diff text alone.
            opts.tree = the_tree = None
            res = review_mbox(data, opts)
        for pr in res.patches:
            pr.findings = [f for f in pr.findings if confidence_at_least(f.confidence, minimum)]
        res.series_findings = [f for f in res.series_findings if confidence_at_least(f.confidence, minimum)]
        if fmt == "b4-review":
            click.echo(json.dumps(b4_review_results(res, the_tree), ensure_ascii=False))
            return
        if not any(pr.patch.has_diff for pr in res.patches):
            # checkpatch.pl says the same ("Does not appear to be a
            # unified-diff format patch"); b4 only checks patches
            raise ReviewbotError("no diff in this message: nothing to check")
        lines = checkpatch_lines(res, strict)
        for line in lines:
            click.echo(line)
        if lines:
            ctx.exit(1)
