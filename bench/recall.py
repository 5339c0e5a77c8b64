#!/usr/bin/env python3
"""Recall bench: the installed CLI over the recall corpus (bench/corpus/).

    python3 bench/recall.py [--only-set bug|clean|thread] [--family F]
                            [--jobs 2] [--limit N] [--no-tree-threads]
                            [--out bench/results/recall-latest.json]
    python3 bench/recall.py --compare OLD.json [NEW.json]

Every case is reviewed by a separate `reviewbot review MBOX --format json
--min-confidence low` process (the installed CLI: the package is installed
editable, so it runs this working tree's code), --jobs of them at a time;
one taking over --timeout seconds (120) is killed and recorded as a timeout.
With --rev REV the code under test is that commit of this repository
instead of the working tree (exported with `git archive` to
~/.cache/reviewbot-bench/recall-src/<commit>, laid out as the editable
install maps it, and put first on PYTHONPATH): other people's uncommitted
work in the shared working tree then does not count.

- bug cases (set "bug"): --tree on a shared, unchecked-out clone of the 6.1
  tree (~/.cache/reviewbot-bench/recall-tree, made once from
  $REVIEWBOT_KERNEL_TREE or ~/.cache/reviewbot-tests/linux-6.1-git, which is
  never written), --base its HEAD. The clone's tree index is built first
  (`reviewbot index`; cached per tree, so a second run only checks it).
- clean cases (set "clean"): --tree the clone, --base the commit
  bench/corpus/build.py's make_base() makes in it (HEAD with the patch
  reverted).
- threads (bench/corpus/threads/*/submission.mbox): without a tree, and
  with the tree at HEAD (two columns; --no-tree-threads drops the second).

A case's mbox is its committed case.mbox; a case that has none yet gets one
made the way build.py makes it, in memory (the corpus is never written).

Verdict of a bug case or thread: "raised" when a finding of the case's
family has confidence medium or high, "raised-low" when it has one only at
low, else "missed"; "right_file" when such a finding's path is one of the
case's files. Reply-worthy = medium or high. Findings of a bug case outside
its family are its noise.

The run writes one record per case as JSON (--out); --compare OLD [NEW]
prints which cases NEW gained and lost against OLD (NEW defaults to the
latest run) and the clean-case findings that are new or gone.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "bench" / "corpus"
CASES, THREADS = CORPUS / "cases", CORPUS / "threads"
DEFAULT_OUT = ROOT / "bench" / "results" / "recall-latest.json"
SOURCE_TREE = Path(os.environ.get(
    "REVIEWBOT_KERNEL_TREE",
    Path.home() / ".cache" / "reviewbot-tests" / "linux-6.1-git"))
CLONE = Path.home() / ".cache" / "reviewbot-bench" / "recall-tree"
SRC_CACHE = Path.home() / ".cache" / "reviewbot-bench" / "recall-src"
LAUNCH = ("import sys; sys.argv[0] = 'reviewbot'; "
          "from reviewbot.cli import main; sys.exit(main())")
FAMILIES = ("locking", "missing-release", "duplicated-helper", "preempt-rt")
REPLY = ("medium", "high")
RANK = {"missed": 0, "raised-low": 1, "raised": 2}


# -- the corpus --------------------------------------------------------------

def _build_module():
    """bench/corpus/build.py, imported from its path (read, never changed)."""
    spec = importlib.util.spec_from_file_location("recall_corpus_build",
                                                  CORPUS / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_cases(a) -> list[dict]:
    """case.json of every case to run, with its folder, in id order."""
    out = []
    for base, want in ((CASES, ("bug", "clean")), (THREADS, ("thread",))):
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            try:
                case = json.loads((d / "case.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue                      # a case still being written
            if not isinstance(case, dict) or case.get("set") not in want:
                continue
            if case["set"] == "thread":
                if not (d / "submission.mbox").exists():
                    continue
            elif not (d / "raw.patch").exists():
                continue
            case["_dir"] = d
            out.append(case)
    if a.only_set:
        out = [c for c in out if c["set"] == a.only_set]
    if a.family:
        out = [c for c in out if c["set"] == "clean" or c.get("family") == a.family]
    if a.limit:
        seen = collections.Counter()
        kept = []
        for c in out:
            seen[c["set"]] += 1
            if seen[c["set"]] <= a.limit:
                kept.append(c)
        out = kept
    return out


def prepare_clone() -> str:
    """The shared clone's HEAD (clone made once, no checkout)."""
    if not (CLONE / ".git").exists() and not (CLONE / "HEAD").exists():
        CLONE.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "--quiet", "--shared", "--no-checkout",
                        str(SOURCE_TREE), str(CLONE)], check=True)
    return subprocess.run(["git", "-C", str(CLONE), "rev-parse", "HEAD"],
                          check=True, capture_output=True,
                          text=True).stdout.strip()


def case_mbox(build, case: dict, head: str) -> tuple[bytes, str | None]:
    """(mbox bytes, base commit for --base) of a bug or clean case."""
    d = case["_dir"]
    base = head
    if case["set"] == "clean":
        base = build.make_base(str(CLONE), d)
    mbox = d / "case.mbox"
    if mbox.exists():
        return mbox.read_bytes(), base
    # no case.mbox yet: made as build.build_case() makes it, kept in memory
    _, raw = build.load_case(d)
    diff = build._encode(build.diff_part(raw))
    msgid = f"<case-{case['id']}@bench.invalid>"
    if case["set"] == "bug":
        tree = build.tree_with(CLONE, head, diff, reverse=True)
        commit = build.commit_tree(CLONE, tree, head, build.bug_message(case))
    else:
        subject, body = build.mail_message(raw)
        tree = build.tree_with(CLONE, base, diff, reverse=False)
        message = subject + "\n\n" + (body + "\n" if body else "")
        commit = build.commit_tree(CLONE, tree, base, message)
    return build.format_patch(CLONE, commit, msgid), base


# -- the code under test ----------------------------------------------------

def cli_at(rev: str | None) -> tuple[list[str], dict | None, str]:
    """(command prefix, environment, commit) of the CLI to run: the
    installed one (the working tree), or the code of commit REV."""
    if rev is None:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        return ["reviewbot"], None, head
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify",
                             rev + "^{commit}"], check=True, capture_output=True,
                            text=True).stdout.strip()
    src = SRC_CACHE / commit
    if not (src / "reviewbot" / "cli.py").exists():
        SRC_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=commit[:12] + ".", dir=SRC_CACHE.parent))
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", commit,
                               "reviewbot", "rules", "templates"],
                              check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=arch, check=True)
        # the editable install maps reviewbot.rules and .templates to ./rules
        # and ./templates
        for sub in ("rules", "templates"):
            if (tmp / sub).exists():
                (tmp / sub).rename(tmp / "reviewbot" / sub)
        try:
            tmp.rename(src)
        except OSError:                     # made meanwhile by another run
            shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
    # -P: not the current directory first on sys.path (the working tree)
    return [sys.executable, "-P", "-c", LAUNCH], env, commit


# -- one review --------------------------------------------------------------

def run_cli(mbox: Path, tree: str | None, base: str | None, a) -> dict:
    cmd = [*a.cli, "review", str(mbox), "--format", "json",
           "--min-confidence", "low"]
    if tree:
        cmd += ["--tree", tree]
    if base:
        cmd += ["--base", base]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=a.cli_env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)       # the CLI and any child of it
        proc.communicate()
        return {"status": "timeout", "seconds": round(time.monotonic() - t0, 1)}
    res = {"status": "ok", "seconds": round(time.monotonic() - t0, 1)}
    try:
        doc = json.loads(out)
    except ValueError:
        res.update(status="error", rc=proc.returncode,
                   error=err.decode(errors="replace").strip()[-400:])
        return res
    findings, applies = [], []
    for p in doc.get("patches", []):
        applies.append(p.get("applies"))
        findings += p.get("findings", [])
    findings += doc.get("series_findings", [])
    res["applies"] = (None if all(x is None for x in applies)
                      else all(x is not False for x in applies))
    res["findings"] = [{k: f.get(k) for k in
                        ("rule", "family", "confidence", "path", "line", "message")}
                       for f in findings]
    return res


def verdict(case: dict, res: dict) -> None:
    """Add verdict/right_file (bug, thread) or nothing (clean) to RES."""
    if res["status"] != "ok" or case["set"] == "clean":
        return
    fam = [f for f in res["findings"] if f["family"] == case.get("family")]
    files = set(case.get("files") or [])
    hi = [f for f in fam if f["confidence"] in REPLY]
    res["verdict"] = "raised" if hi else "raised-low" if fam else "missed"
    res["right_file"] = any(f["path"] in files for f in (hi or fam))


def run_case(build, case: dict, head: str, a) -> dict:
    rec = {"id": case["id"], "set": case["set"], "family": case.get("family"),
           "subtype": case.get("subtype"), "files": case.get("files") or [],
           "runs": {}}
    with tempfile.TemporaryDirectory(prefix="recall-") as tmp:
        if case["set"] == "thread":
            mbox = case["_dir"] / "submission.mbox"
            rec["runs"]["notree"] = run_cli(mbox, None, None, a)
            if not a.no_tree_threads:
                rec["runs"]["tree"] = run_cli(mbox, str(CLONE), head, a)
        else:
            try:
                data, base = case_mbox(build, case, head)
            except Exception as e:           # build.CaseError, git failures
                rec["runs"]["tree"] = {"status": "error",
                                       "error": f"cannot make the case: {e}"[:400]}
                return rec
            mbox = Path(tmp) / "case.mbox"
            mbox.write_bytes(data)
            rec["runs"]["tree"] = run_cli(mbox, str(CLONE), base, a)
    for res in rec["runs"].values():
        verdict(case, res)
    return rec


# -- the report --------------------------------------------------------------

def pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f}%)" if d else "-"


def recall_rows(records: list[dict], mode: str, key) -> list[tuple]:
    """(group, cases, raised, on right file, any conf, right file) rows."""
    groups = collections.defaultdict(list)
    for r in records:
        res = r["runs"].get(mode)
        if res is not None:
            groups[key(r)].append(res)
            groups["all"].append(res)
    rows = []
    for g in sorted(groups, key=lambda g: (g == "all", g)):
        rs = groups[g]
        ok = [x for x in rs if x["status"] == "ok"]
        hi = [x for x in ok if x["verdict"] == "raised"]
        anyc = [x for x in ok if x["verdict"] != "missed"]
        rows.append((g, len(rs), len(hi), sum(x["right_file"] for x in hi),
                     len(anyc), sum(x["right_file"] for x in anyc)))
    return rows


def recall_table(records, mode, key, title) -> list[str]:
    rows = recall_rows(records, mode, key)
    out = [f"| {title} | cases | raised (medium+) | on right file | "
           f"raised (any conf.) | on right file |", "|---|---:|---:|---:|---:|---:|"]
    for g, n, hi, hirf, anyc, anyrf in rows:
        g = f"**{g}**" if g == "all" else g
        out.append(f"| {g} | {n} | {pct(hi, n)} | {hirf} | {pct(anyc, n)} | {anyrf} |")
    return out


def raised_by(records, mode) -> str:
    """Which rules raised the cases raised (medium+) in their family."""
    rules = collections.Counter()
    for r in records:
        res = r["runs"].get(mode, {})
        if res.get("verdict") == "raised":
            rules.update({f["rule"] for f in res["findings"]
                          if f["family"] == r["family"] and f["confidence"] in REPLY})
    return ("cases raised by rule: " + (", ".join(f"{k} {v}" for k, v in
                                                  sorted(rules.items())) or "none") + ".")


def noise_line(records, mode, what) -> str:
    """Findings of cases outside their own family, per rule."""
    noise, noise_any, n = collections.Counter(), collections.Counter(), 0
    for r in records:
        res = r["runs"].get(mode, {})
        if res.get("status") != "ok":
            continue
        n += 1
        for f in res["findings"]:
            if f["family"] != r["family"]:
                noise_any[f["rule"]] += 1
                if f["confidence"] in REPLY:
                    noise[f["rule"]] += 1
    return (f"Noise of {what} outside their family: {sum(noise.values())} medium+ "
            f"findings ({sum(noise_any.values())} at any confidence) over {n} cases"
            + (" (medium+ per rule: " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(noise.items())) + ")"
               if noise else "") + ".")


def report(doc: dict) -> str:
    recs = doc["records"]
    by_set = collections.defaultdict(list)
    for r in recs:
        by_set[r["set"]].append(r)
    L = []
    m = doc["meta"]
    L.append(f"Run {m['date']}: reviewbot "
             + ("commit " if m.get("code") == "commit" else "working tree at ")
             + m["reviewbot_rev"][:12]
             + (f" (+ uncommitted changes in {len(m['dirty'])} files)"
                if isinstance(m.get("dirty"), list) and m["dirty"] else "")
             + f", tree {m['tree_head'][:12]}, {m['jobs']} jobs, "
             f"{m['wall_seconds']:.0f} s wall.")
    L.append(f"Cases: {len(by_set['bug'])} bug, {len(by_set['clean'])} clean, "
             f"{len(by_set['thread'])} threads.")
    bugs = by_set["bug"]
    if bugs:
        fams = collections.Counter(r["family"] for r in bugs)
        L += ["", "### Bug cases (fix reverted onto the 6.1 tree; --tree at HEAD)",
              "", "Per family: " + ", ".join(f"{f} {n}" for f, n in sorted(fams.items())), ""]
        L += recall_table(bugs, "tree", lambda r: r["family"], "family")
        L += [""]
        L += recall_table(bugs, "tree", lambda r: f"{r['family']} / {r['subtype']}",
                          "family / subtype")
        L += ["", raised_by(bugs, "tree"), noise_line(bugs, "tree", "bug cases")]
    threads = by_set["thread"]
    if threads:
        L += ["", "### Review threads (submission only, reviewers' replies removed)", ""]
        modes = [md for md in ("notree", "tree") if any(md in r["runs"] for r in threads)]
        for md in modes:
            label = "no tree" if md == "notree" else "--tree at HEAD"
            L += recall_table(threads, md, lambda r: r["family"], f"family ({label})")
            L.append("")
        if "tree" in modes:
            app = [r["runs"]["tree"].get("applies") for r in threads
                   if r["runs"].get("tree", {}).get("status") == "ok"]
            L.append(f"With the tree, the submission applied to 6.1 in "
                     f"{sum(1 for x in app if x)} of {len(app)} threads.")
        for md in modes:
            L += ["", f"{'No tree' if md == 'notree' else 'Tree'}: "
                  + raised_by(threads, md), noise_line(threads, md, "threads")]
    cleans = by_set["clean"]
    if cleans:
        ok = [r for r in cleans if r["runs"]["tree"]["status"] == "ok"]
        per_rule, per_rule_low = collections.Counter(), collections.Counter()
        with_any = 0
        for r in ok:
            fs = r["runs"]["tree"]["findings"]
            hi = [f for f in fs if f["confidence"] in REPLY]
            with_any += bool(hi)
            for f in fs:
                (per_rule if f["confidence"] in REPLY else per_rule_low)[f["rule"]] += 1
        n = sum(per_rule.values())
        L += ["", "### Clean cases (accepted patches sent onto the tree with them reverted)", "",
              f"Reply-worthy (medium+) findings: {n} over {len(ok)} patches = "
              f"{n / len(ok) if ok else 0:.2f} per patch; {with_any} patches "
              f"with at least one. Low-confidence findings: {sum(per_rule_low.values())}."]
        if per_rule or per_rule_low:
            L += ["", "| rule | medium+ | low |", "|---|---:|---:|"]
            for rule in sorted(set(per_rule) | set(per_rule_low)):
                L.append(f"| {rule} | {per_rule[rule]} | {per_rule_low[rule]} |")
    bad = [(r["id"], md, res["status"], res.get("error", ""))
           for r in recs for md, res in r["runs"].items() if res["status"] != "ok"]
    if bad:
        L += ["", f"Not reviewed ({len(bad)}):"]
        L += [f"- {i} [{md}]: {st} {err.splitlines()[-1] if err else ''}".rstrip()
              for i, md, st, err in bad]
    secs = [res.get("seconds", 0) for r in recs for res in r["runs"].values()]
    if secs:
        L += ["", f"Review time per run: mean {sum(secs) / len(secs):.1f} s, "
              f"max {max(secs):.1f} s."]
    return "\n".join(L) + "\n"


# -- compare -----------------------------------------------------------------

def compare(old_doc: dict, new_doc: dict) -> str:
    old = {r["id"]: r for r in old_doc["records"]}
    new = {r["id"]: r for r in new_doc["records"]}
    gained, lost, moved = [], [], []
    clean_new, clean_gone = [], []
    for cid in sorted(set(old) & set(new)):
        o, n = old[cid], new[cid]
        for md in sorted(set(o["runs"]) & set(n["runs"])):
            ro, rn = o["runs"][md], n["runs"][md]
            tag = f"{cid}" + (f" [{md}]" if n["set"] == "thread" else "")
            if ro["status"] != rn["status"]:
                moved.append(f"{tag}: {ro['status']} -> {rn['status']}")
            if n["set"] == "clean":
                if ro["status"] != "ok" or rn["status"] != "ok":
                    continue
                key = lambda f: (f["rule"], f["path"], f["message"])
                ko = {key(f) for f in ro["findings"] if f["confidence"] in REPLY}
                kn = {key(f) for f in rn["findings"] if f["confidence"] in REPLY}
                clean_new += [f"{cid}: {k[0]} {k[1]}: {k[2][:150]}" for k in sorted(kn - ko)]
                clean_gone += [f"{cid}: {k[0]} {k[1]}: {k[2][:150]}" for k in sorted(ko - kn)]
                continue
            # a timeout or an error counts as missed
            vo, vn = ro.get("verdict", ro["status"]), rn.get("verdict", rn["status"])
            if vo == vn or RANK.get(vo, 0) == RANK.get(vn, 0):
                continue
            line = f"{tag} ({n['family']}/{n['subtype']}): {vo} -> {vn}"
            if RANK.get(vn, 0) > RANK.get(vo, 0):
                rules = sorted({f["rule"] for f in rn["findings"]
                                if f["family"] == n["family"]})
                gained.append(line + f" by {', '.join(rules)}"
                              + (" on the right file" if rn["right_file"] else ""))
            else:
                lost.append(line)
    L = [f"old: {old_doc['meta']['date']} ({old_doc['meta']['reviewbot_rev'][:12]}), "
         f"new: {new_doc['meta']['date']} ({new_doc['meta']['reviewbot_rev'][:12]})"]
    only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    if only_old or only_new:
        L.append(f"cases only in old: {len(only_old)}, only in new: {len(only_new)}")
    for title, items in (("gained", gained), ("lost", lost),
                         ("status changed", moved),
                         ("new clean-case findings (medium+)", clean_new),
                         ("clean-case findings gone (medium+)", clean_gone)):
        L.append(f"{title}: {len(items)}")
        L += [f"  {x}" for x in items]
    return "\n".join(L) + "\n"


# -- main --------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only-set", choices=("bug", "clean", "thread"))
    ap.add_argument("--family", choices=FAMILIES,
                    help="bug cases and threads of this family (clean cases kept)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, help="at most N cases of each set")
    ap.add_argument("--no-tree-threads", action="store_true",
                    help="review threads without a tree only")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--rev", help="run the code of this commit, not the working tree")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--compare", nargs="+", metavar="JSON",
                    help="OLD.json [NEW.json]: cases gained and lost")
    a = ap.parse_args(argv)
    if a.compare:
        if len(a.compare) > 2:
            ap.error("--compare takes OLD.json [NEW.json]")
        old = json.loads(Path(a.compare[0]).read_text())
        new = json.loads(Path(a.compare[1] if len(a.compare) > 1 else a.out).read_text())
        sys.stdout.write(compare(old, new))
        return 0

    a.cli, a.cli_env, rev = cli_at(a.rev)
    build = _build_module()
    head = prepare_clone()
    cases = load_cases(a)
    if not cases:
        print("no cases", file=sys.stderr)
        return 1
    if any(c["set"] != "thread" for c in cases) or not a.no_tree_threads:
        t0 = time.monotonic()
        subprocess.run([*a.cli, "index", "--tree", str(CLONE)], check=True,
                       env=a.cli_env, stdout=subprocess.DEVNULL)
        print(f"tree index ready ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    t0 = time.monotonic()
    records = []
    with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futs = {pool.submit(run_case, build, c, head, a): c for c in cases}
        for i, fut in enumerate(cf.as_completed(futs), 1):
            rec = fut.result()
            records.append(rec)
            short = ", ".join(f"{md}:{res.get('verdict', res['status'])}"
                              for md, res in rec["runs"].items())
            print(f"[{i}/{len(cases)}] {rec['id']}: {short}", file=sys.stderr)
    records.sort(key=lambda r: (r["set"], r["id"]))
    # the working tree's code: say what was not committed (untracked too)
    dirty = [] if a.rev else [
        line[3:] for line in subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--",
             "reviewbot", "rules", "templates"],
            capture_output=True, text=True).stdout.splitlines()]
    doc = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "command": "python3 bench/recall.py " + shlex.join(sys.argv[1:]
                                                                       if argv is None else argv),
                    "reviewbot_rev": rev, "code": "commit" if a.rev else "working tree",
                    "dirty": dirty, "tree_head": head,
                    "jobs": a.jobs, "wall_seconds": round(time.monotonic() - t0, 1)},
           "records": records}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=None, separators=(",", ":"))
                     .replace('{"id":', '\n{"id":') + "\n", encoding="utf-8")
    sys.stdout.write(report(doc))
    print(f"\nwritten {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
