#!/usr/bin/env python3
"""Generate case.mbox for every case of the recall corpus (see README.md).

    python3 bench/corpus/build.py [--check] [--tree PATH] [--only ID ...]

For each cases/<id>/ holding case.json and raw.patch:

- bug: the diff of raw.patch is reverted from the tree's HEAD (a temporary
  index in a scratch clone, never the tree itself) and committed with a
  neutral message ("Rework f()"); case.mbox is that commit as
  `git format-patch` writes it, with Message-ID <case-<id>@bench.invalid>.
- clean: commit A is HEAD with the diff reverted ("bench: revert <id>"),
  commit B is A with the diff applied forward, carrying the patch's own
  subject and message (stable's "commit X upstream." lines and its trailing
  sign-offs dropped); case.mbox is B as a mail, and case.json gets
  "base_tree", the tree of A. make_base() recreates A in any clone of the
  tree (bench/recall.py uses it).

Identities and dates are fixed and git's user configuration is ignored, so
a second run writes the same bytes. Threads (corpus/threads/) are not built
here. A case whose patch no longer applies is reported and skipped; the exit
status is then 1. --check builds nothing and writes nothing: it only reports.
Only python3's standard library and git are used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"
DEFAULT_TREE = Path(os.environ.get(
    "REVIEWBOT_KERNEL_TREE",
    Path.home() / ".cache" / "reviewbot-tests" / "linux-6.1-git"))
SCRATCH = Path.home() / ".cache" / "reviewbot-bench" / "corpus-scratch"

NAME, EMAIL = "Bench Author", "bench@example.invalid"
DATE = "2023-01-02T00:00:00+00:00"
SIGNOFF = f"Signed-off-by: {NAME} <{EMAIL}>"

_STABLE_SIGNOFF = re.compile(
    r"^Signed-off-by: (Sasha Levin|Greg Kroah-Hartman) <[^>]*>\s*$")
_UPSTREAM_LINE = re.compile(
    r"^\s*(commit [0-9a-f]{40} upstream\.?"
    r"|\[ ?Upstream commit [0-9a-f]{40} ?\]"
    r"|Stable-dep-of: .*)\s*$", re.IGNORECASE)
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


class CaseError(Exception):
    """A case that cannot be built (bad case.json, patch does not apply)."""


# -- git plumbing ------------------------------------------------------------

def git_env(index: str | None = None) -> dict:
    """The environment of every git call: fixed identity and dates, no
    user or system configuration, optionally a temporary index."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_")}
    env.update({
        "GIT_AUTHOR_NAME": NAME, "GIT_AUTHOR_EMAIL": EMAIL,
        "GIT_AUTHOR_DATE": DATE,
        "GIT_COMMITTER_NAME": NAME, "GIT_COMMITTER_EMAIL": EMAIL,
        "GIT_COMMITTER_DATE": DATE,
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C", "TZ": "UTC",
    })
    if index:
        env["GIT_INDEX_FILE"] = index
    return env


def git(repo, *args, input: bytes | None = None, index: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["git", "-C", str(repo), "-c", "core.abbrev=12",
                        *args], input=input, env=git_env(index),
                       capture_output=True)
    if check and r.returncode:
        raise CaseError(f"git {' '.join(args[:2])}: "
                        + r.stderr.decode(errors="replace").strip()[:500])
    return r


def rev(repo, name: str) -> str:
    return git(repo, "rev-parse", "--verify", name).stdout.decode().strip()


def tree_with(repo, base: str, diff: bytes, reverse: bool) -> str:
    """The tree of `base` with `diff` applied (or reverted), built in a
    temporary index: neither the work tree nor the repo's index is used."""
    tmp = tempfile.mkdtemp(prefix="bench-index-")
    try:
        index = os.path.join(tmp, "index")
        git(repo, "read-tree", base, index=index)
        r = git(repo, "apply", "--cached", *(["-R"] if reverse else []),
                "-", input=diff, index=index, check=False)
        if r.returncode:
            raise CaseError(("reverse-apply" if reverse else "apply")
                            + " failed: " + r.stderr.decode(
                                errors="replace").strip()[:500])
        return git(repo, "write-tree", index=index).stdout.decode().strip()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit_tree(repo, tree: str, parent: str, message: str) -> str:
    return git(repo, "commit-tree", tree, "-p", parent, "-F", "-",
               input=message.encode()).stdout.decode().strip()


def format_patch(repo, commit: str, msgid: str) -> bytes:
    return git(repo, "format-patch", "-1", "--stdout", "--no-signature",
               f"--add-header=Message-ID: {msgid}", commit).stdout


# -- reading raw.patch -------------------------------------------------------

def diff_part(raw: str) -> str:
    """The diff of a patch mail: from its first `diff --git` line (or the
    first `--- `/`+++ ` pair, for a quilt patch without one) to the end of
    its last hunk, hunk lengths counted, so the mail signature is left out."""
    lines = raw.split("\n")
    start = next((i for i, l in enumerate(lines)
                  if l.startswith("diff --git ")), None)
    if start is None:
        start = next((i for i in range(len(lines) - 1)
                      if lines[i].startswith("--- ")
                      and lines[i + 1].startswith("+++ ")), None)
    if start is None:
        raise CaseError("raw.patch has no diff")
    out, i, end = [], start, start
    while i < len(lines):
        line = lines[i]
        m = _HUNK.match(line)
        if m:
            old = int(m.group(1)) if m.group(1) is not None else 1
            new = int(m.group(2)) if m.group(2) is not None else 1
            i += 1
            while (old > 0 or new > 0) and i < len(lines):
                l = lines[i]
                if l.startswith("\\"):
                    pass
                elif l.startswith("-"):
                    old -= 1
                elif l.startswith("+"):
                    new -= 1
                elif l.startswith(" ") or l == "":
                    old -= 1
                    new -= 1
                else:
                    raise CaseError(f"hunk cut short at line {i + 1}")
                i += 1
            while i < len(lines) and lines[i].startswith("\\"):
                i += 1
            end = i
            continue
        if (line.startswith(("diff --git ", "--- ", "+++ ", "index ",
                             "new file mode", "deleted file mode",
                             "old mode", "new mode", "similarity index",
                             "rename from", "rename to", "copy from",
                             "copy to", "dissimilarity index",
                             "Binary files"))):
            i += 1
            continue
        break
    if end == start:
        raise CaseError("raw.patch has no hunk")
    return "\n".join(lines[start:end]) + "\n"


def mail_message(raw: str) -> tuple[str, str]:
    """Subject (without "[PATCH ...]" prefixes) and body of a patch mail,
    without stable's upstream-commit lines, its in-body From: line, and its
    trailing Sasha Levin / Greg Kroah-Hartman sign-offs."""
    lines = raw.split("\n")
    i = 1 if lines and lines[0].startswith("From ") else 0
    subject = None
    while i < len(lines) and lines[i] != "":
        if lines[i].lower().startswith("subject:"):
            subject = lines[i][len("subject:"):].strip()
            while i + 1 < len(lines) and lines[i + 1][:1] in (" ", "\t"):
                i += 1
                subject += " " + lines[i].strip()
        i += 1
    if subject is None:
        raise CaseError("raw.patch has no Subject")
    while True:
        s = re.sub(r"^\[[^\]]*PATCH[^\]]*\]\s*", "", subject, flags=re.I)
        if s == subject:
            break
        subject = s
    body = []
    for line in lines[i + 1:]:
        if line == "---" or line.startswith("diff --git ") or (
                line.startswith("--- a/")):
            break
        body.append(line)
    # in-body pseudo headers (From:, Date:) at the top
    while body and (body[0] == "" or re.match(r"^(From|Date): ", body[0])):
        body.pop(0)
    body = [l for l in body if not _UPSTREAM_LINE.match(l)]
    while body and (body[-1].strip() == ""
                    or _STABLE_SIGNOFF.match(body[-1])):
        body.pop()
    while body and body[0].strip() == "":
        body.pop(0)
    text = "\n".join(body)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return subject, text


# -- cases -------------------------------------------------------------------

def load_case(case_dir: Path) -> tuple[dict, str]:
    try:
        case = json.loads((case_dir / "case.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CaseError(f"case.json unreadable: {e}")
    if not isinstance(case, dict) or case.get("set") not in ("bug", "clean"):
        raise CaseError(f"case.json: set is {case.get('set')!r}"
                        if isinstance(case, dict) else "case.json not an object")
    raw = (case_dir / "raw.patch").read_bytes().decode("utf-8",
                                                       errors="surrogateescape")
    return case, raw


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def bug_message(case: dict) -> str:
    funcs = case.get("functions") or []
    if funcs:
        what = f"{funcs[0]}()"
    elif case.get("files"):
        what = os.path.basename(case["files"][0])
    else:
        raise CaseError("case.json has neither functions nor files")
    return f"Rework {what}\n\nRework {what}.\n\n{SIGNOFF}\n"


def make_base(repo, case_dir, parent: str = "HEAD") -> str:
    """Recreate a clean case's base commit A in `repo` (a clone of the 6.1
    tree): `parent` with the case's diff reverted, committed with the
    bench's fixed identity and date. Returns the commit id, the same in
    every clone. The repo's work tree and index are not touched."""
    case_dir = Path(case_dir)
    case, raw = load_case(case_dir)
    base = rev(repo, parent + "^{commit}")
    tree = tree_with(repo, base, _encode(diff_part(raw)), reverse=True)
    want = case.get("base_tree")
    if want and want != tree:
        raise CaseError(f"{case['id']}: base tree {tree} is not the "
                        f"recorded {want}")
    return commit_tree(repo, tree, base, f"bench: revert {case['id']}\n")


def build_case(repo, head: str, case_dir: Path, check: bool) -> str:
    case, raw = load_case(case_dir)
    cid = case.get("id") or case_dir.name
    if cid != case_dir.name:
        raise CaseError(f"case.json id {cid!r} is not the folder name")
    diff = _encode(diff_part(raw))
    msgid = f"<case-{cid}@bench.invalid>"
    if case["set"] == "bug":
        tree = tree_with(repo, head, diff, reverse=True)
        if check:
            return "ok"
        commit = commit_tree(repo, tree, head, bug_message(case))
    else:
        subject, body = mail_message(raw)
        tree_a = tree_with(repo, head, diff, reverse=True)
        a = commit_tree(repo, tree_a, head, f"bench: revert {cid}\n")
        tree_b = tree_with(repo, a, diff, reverse=False)
        if check:
            return "ok"
        message = subject + "\n\n" + (body + "\n" if body else "")
        commit = commit_tree(repo, tree_b, a, message)
        if case.get("base_tree") != tree_a:
            case["base_tree"] = tree_a
            (case_dir / "case.json").write_text(
                json.dumps(case, indent=1, ensure_ascii=False) + "\n",
                encoding="utf-8")
    mbox = format_patch(repo, commit, msgid)
    target = case_dir / "case.mbox"
    if not target.exists() or target.read_bytes() != mbox:
        target.write_bytes(mbox)
        return "written"
    return "unchanged"


def scratch_clone(tree: Path) -> Path:
    """The scratch clone (made once, shared objects, no checkout)."""
    if not (SCRATCH / "HEAD").exists() and not (SCRATCH / ".git").exists():
        SCRATCH.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["git", "clone", "--quiet", "--shared",
                            "--no-checkout", str(tree), str(SCRATCH)],
                           env=git_env(), capture_output=True)
        if r.returncode:
            sys.exit("cannot clone the tree: " + r.stderr.decode().strip())
    return SCRATCH


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="only report which cases build; write nothing")
    ap.add_argument("--only", nargs="+", metavar="ID",
                    help="build only these cases")
    ap.add_argument("--tree", type=Path, default=DEFAULT_TREE,
                    help="the 6.1 kernel git tree (read only; default %(default)s)")
    a = ap.parse_args(argv)
    head = rev(a.tree, "HEAD^{commit}")
    repo = scratch_clone(a.tree)
    # the tree's HEAD is visible through the shared objects
    rev(repo, head + "^{commit}")
    dirs = sorted(d for d in CASES.iterdir() if d.is_dir()) \
        if CASES.is_dir() else []
    if a.only:
        wanted = set(a.only)
        missing = wanted - {d.name for d in dirs}
        for m in sorted(missing):
            print(f"{m}: no such case", file=sys.stderr)
        dirs = [d for d in dirs if d.name in wanted]
    failed, counts = [], {}
    for d in dirs:
        if not (d / "case.json").exists() or not (d / "raw.patch").exists():
            print(f"{d.name}: skipped (no case.json or raw.patch)")
            continue
        try:
            status = build_case(repo, head, d, a.check)
        except CaseError as e:
            failed.append(d.name)
            print(f"{d.name}: FAILED: {e}")
            continue
        counts[status] = counts.get(status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{len(dirs)} cases: {summary or 'none built'}; "
          f"{len(failed)} failed" + (": " + " ".join(failed) if failed else ""))
    return 1 if failed or (a.only and missing) else 0


if __name__ == "__main__":
    sys.exit(main())
