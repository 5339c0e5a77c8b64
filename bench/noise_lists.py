"""Noise bench over real patch mails from public-inbox mailing-list archives.

Walks one or more public-inbox v2 epoch git repositories (each commit holds
one message in the file `m`), newest first, and keeps the patch mails: the
subject starts with "[PATCH" (any prefix such as [PATCH v2 3/5]; replies
"Re: ..." do not) and the body holds a `diff --git` of a .c file. Each mail
is reviewed alone, the diff only (no tree: these patches do not apply to one
tree), with only the rules asked for. A mail over 1 MB is skipped; a review
that raises or runs past --timeout seconds is counted, not fatal.

Writes a Markdown report (per rule: findings, at medium+ confidence, per
patch; then every finding, to be read one by one) and, with --json-out, the
findings sorted by message id, rule, file, line, so that two runs (before
and after a rule change) can be diffed with --compare.

Held out, do not bench on: cgroups, io-uring, linux-hwmon, netfilter-devel.

    python bench/noise_lists.py --git DIR [DIR ...] [--limit 600]
        [--rules REL003,REL004,REL005|all] [--timeout 60] [--out FILE.md]
        [--json-out FILE.json]
    python bench/noise_lists.py --compare OLD.json NEW.json
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

from reviewbot.findings import confidence_at_least
from reviewbot.review import Options, review_mbox

MAX_BYTES = 1024 * 1024
NOTES_MARK = "<!-- notes: hand-written below, kept when the bench is re-run -->"
PATCH_SUBJECT = re.compile(r"^\[PATCH", re.I)
C_DIFF = re.compile(rb"^diff --git a/\S+\.c b/", re.M)


def list_name(git_dir: str) -> str:
    m = re.search(r"([\w.-]+?)\.vger\.kernel\.org", git_dir)
    return m.group(1).split("+")[-1] if m else pathlib.Path(git_dir).resolve().name


def patch_mails(git_dir: str, limit: int, skipped: collections.Counter):
    """Yield (commit, date, raw message) of up to LIMIT patch mails, newest first."""
    log = subprocess.Popen(["git", "-C", git_dir, "log", "--date=short", "--format=%H %ad %s"],
                           stdout=subprocess.PIPE, text=True, errors="replace")
    cat = subprocess.Popen(["git", "-C", git_dir, "cat-file", "--batch"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
    n = 0
    try:
        for line in log.stdout:
            commit, date, subject = (line.rstrip("\n").split(" ", 2) + ["", ""])[:3]
            if not PATCH_SUBJECT.match(subject.strip()):
                continue
            cat.stdin.write(f"{commit}:m\n".encode())
            cat.stdin.flush()
            header = cat.stdout.readline().split()
            if len(header) < 3:          # "<name> missing"
                skipped["no message file"] += 1
                continue
            raw = cat.stdout.read(int(header[2]))
            cat.stdout.read(1)           # the newline after the object
            if len(raw) > MAX_BYTES:
                skipped["over 1 MB"] += 1
                continue
            if not C_DIFF.search(raw):
                continue
            yield commit, date, raw
            n += 1
            if n >= limit:
                break
    finally:
        log.kill()
        cat.stdin.close()
        cat.kill()
        log.wait()
        cat.wait()


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


def review_one(raw: bytes, rules: set[str] | None, timeout: int):
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        return review_mbox(raw, Options(tree=None, only_rules=rules))
    finally:
        signal.alarm(0)


def run(args) -> dict:
    rules = None if args.rules == "all" else set(args.rules.split(","))
    findings, errors, lists = [], [], {}
    failures = collections.Counter()
    t0 = time.time()
    for git_dir in args.git:
        name = list_name(git_dir)
        skipped = collections.Counter()
        reviewed, dates = 0, []
        for commit, date, raw in patch_mails(git_dir, args.limit, skipped):
            dates.append(date)
            try:
                res = review_one(raw, rules, args.timeout)
            except Exception as exc:     # Timeout included: counted, never fatal
                errors.append({"list": name, "commit": commit, "error": f"{exc.__class__.__name__}: {exc}"[:300]})
                continue
            for note in res.notes:
                if note.startswith("rule "):
                    failures[note.split(" failed")[0]] += 1
            found = [(pr.patch, f) for pr in res.patches for f in pr.findings]
            found += [(res.patches[0].patch, f) for f in res.series_findings if res.patches]
            reviewed += sum(1 for pr in res.patches if pr.patch.has_diff)
            for p, f in found:
                findings.append({"list": name, "msgid": p.msgid, "commit": commit, "subject": p.full_subject,
                                 "rule": f.rule, "path": f.path or "", "line": f.line or 0,
                                 "confidence": f.confidence, "message": " ".join(f.message.split())})
        lists[name] = {"git": git_dir, "patches": reviewed, "skipped": dict(skipped),
                       "dates": f"{min(dates, default='')} .. {max(dates, default='')}"}
        print(f"{name}: {reviewed} patches, {time.time() - t0:.0f} s", file=sys.stderr)
    findings.sort(key=lambda d: (d["msgid"], d["rule"], d["path"], d["line"], d["message"]))
    return {"rules": sorted(rules) if rules else "all", "limit": args.limit, "lists": lists,
            "seconds": round(time.time() - t0, 1), "errors": errors, "rule_failures": dict(failures),
            "findings": findings}


def report(data: dict, command: str) -> str:
    out = []
    w = out.append
    patches = sum(v["patches"] for v in data["lists"].values())
    w("# Noise bench: patch mails from mailing-list archives\n\n")
    w(f"Generated by `{command}` in {data['seconds']:.0f} s.\n\n")
    w(f"Patch mails reviewed one by one, diff only (no tree): **{patches}** ("
      + ", ".join(f"{k}: {v['patches']}, mailed {v['dates']}" for k, v in data["lists"].items()) + "). "
      f"Review errors or timeouts: {len(data['errors'])}.\n\n")
    rules = data["rules"] if data["rules"] != "all" else sorted({f["rule"] for f in data["findings"]})
    w("| rule | findings | medium+ | per patch | medium+ per patch |\n|---|---|---|---|---|\n")
    for r in rules:
        fs = [f for f in data["findings"] if f["rule"] == r]
        med = sum(1 for f in fs if confidence_at_least(f["confidence"], "medium"))
        w(f"| {r} | {len(fs)} | {med} | {len(fs) / max(patches, 1):.4f} | {med / max(patches, 1):.4f} |\n")
    for k, v in data["rule_failures"].items():
        w(f"\n- {k} failed {v} time(s)")
    for e in data["errors"]:
        w(f"\n- error: [{e['list']}] {e['commit'][:12]}: {e['error']}")
    w("\n\n## Every finding\n")
    for r in rules:
        fs = [f for f in data["findings"] if f["rule"] == r]
        w(f"\n### {r} ({len(fs)})\n\n")
        for f in fs:
            w(f"- [{f['list']}] {f['subject'][:100]} <{f['msgid']}> -- `{f['path']}:{f['line']}` "
              f"({f['confidence']}): {f['message']}\n")
    return "".join(out)


def compare(old_path: str, new_path: str) -> None:
    def keyed(path):
        return {(f["msgid"], f["rule"], f["path"], f["line"]): f
                for f in json.loads(pathlib.Path(path).read_text())["findings"]}
    old, new = keyed(old_path), keyed(new_path)
    for title, keys, src in (("gained", new.keys() - old.keys(), new), ("lost", old.keys() - new.keys(), old),
                             ("changed", {k for k in old.keys() & new.keys()
                                          if (old[k]["confidence"], old[k]["message"])
                                          != (new[k]["confidence"], new[k]["message"])}, new)):
        print(f"{title}: {len(keys)}")
        for k in sorted(keys):
            f = src[k]
            print(f"  {f['rule']} [{f['list']}] {f['subject'][:80]}\n    {f['path']}:{f['line']} "
                  f"({f['confidence']}): {f['message'][:300]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--git", nargs="+", help="public-inbox epoch git dirs")
    ap.add_argument("--limit", type=int, default=600, help="newest patch mails per dir (default 600)")
    ap.add_argument("--rules", default="REL003,REL004,REL005", help="comma-separated rule codes, or all")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per mail before it counts as an error")
    ap.add_argument("--out", help="Markdown report (default: printed)")
    ap.add_argument("--json-out", help="findings as JSON, in a stable order")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="print findings gained and lost")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.git:
        ap.error("--git DIR is required (or --compare OLD NEW)")
    data = run(args)
    text = report(data, "python bench/noise_lists.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    if args.out:
        out = pathlib.Path(args.out)
        if out.exists() and NOTES_MARK in out.read_text():
            text += "\n" + NOTES_MARK + out.read_text().split(NOTES_MARK, 1)[1]   # hand-written notes survive
        out.write_text(text)
    print(text if not args.out else text.split("## Every finding")[0])


if __name__ == "__main__":
    main()
