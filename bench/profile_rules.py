"""Per-rule timing of the rules stage on the bench inputs.

    python bench/profile_rules.py [--large] [--runs N] [--json-out FILE] [--cprofile FILE]

Default input: the 17-message series of bench/bench_review.py
(~/.cache/reviewbot-bench/series17/*.patch: 16 patches re-adding real
functions to net/core/filter.c, net/core/sock_map.c, net/ipv4/tcp_bpf.c);
--large: the single patch re-adding the whole net/ipv4/tcp_input.c
(~/.cache/reviewbot-bench/large/*.patch).  Both are applied to the linux
6.1 tree in ~/.cache/reviewbot-bench/tree (run
`python3 bench/bench_review.py --runs 1` once to create them).

Each run is a fresh process (a cold review, as `reviewbot review` does):
one in which each rule is timed on its own, in code order (the first rule
touching a file pays for its parse and for whatever caches it fills), and
one measuring the stages as the review runs them (all rules in one
engine.run).  Medians over the runs are shown, and the peak RSS.
--json-out writes the findings (per patch and series) as JSON, to compare
before/after a change.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reviewbot import engine
from reviewbot import review  # noqa: E402

CACHE = pathlib.Path(os.path.expanduser("~/.cache/reviewbot-bench"))


def _inputs(large: bool) -> bytes:
    pat = "large/*.patch" if large else "series17/*.patch"
    files = sorted(glob.glob(str(CACHE / pat)))
    if not files:
        sys.exit(f"no {CACHE / pat}: run `python3 bench/bench_review.py --runs 1` first")
    return b"".join(pathlib.Path(f).read_bytes() for f in files)


def one_run(data: bytes, per_rule: bool) -> tuple[dict, dict, review.Result]:
    times: dict[str, float] = {}
    orig_run = engine.run

    def per_rule_run(rules, contexts, only=None):
        """Each rule alone, then the real run."""
        for r in rules:
            if only and r.code not in only and r.name not in only:
                continue
            t = time.perf_counter()
            orig_run([r], contexts, only)
            times[r.code] = time.perf_counter() - t
        return orig_run(rules, contexts, only)

    if per_rule:
        engine.run = per_rule_run
    try:
        res = review.review_mbox(data, review.Options(tree=str(CACHE / "tree")))
    finally:
        engine.run = orig_run
    return times, res.timings, res


def findings_json(res: review.Result) -> dict:
    return {
        "patches": [{"index": r.patch.index, "notes": r.notes,
                     "findings": [f.to_json() for f in r.findings]} for r in res.patches],
        "series_findings": [f.to_json() for f in res.series_findings],
        "notes": res.notes,
    }


def _child(mode: str, large: bool, json_out: str | None, cprofile: str | None) -> dict:
    data = _inputs(large)
    if cprofile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    times, timings, res = one_run(data, per_rule=(mode == "per-rule"))
    if cprofile:
        prof.disable()
        prof.dump_stats(cprofile)
    if json_out:
        pathlib.Path(json_out).write_text(json.dumps(findings_json(res), indent=1, sort_keys=True))
    import resource
    return {"per_rule": times, "stages": timings,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _spawn(mode: str, large: bool, json_out=None, cprofile=None) -> dict:
    import subprocess
    cmd = [sys.executable, __file__, "--child", mode] + (["--large"] if large else [])
    if json_out:
        cmd += ["--json-out", json_out]
    if cprofile:
        cmd += ["--cprofile", cprofile]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="the single patch re-adding net/ipv4/tcp_input.c")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians are shown (default 3)")
    ap.add_argument("--json-out", help="write the findings (of a whole-stage run) as JSON")
    ap.add_argument("--cprofile", help="also write a cProfile of one whole-stage run to this file")
    ap.add_argument("--child", choices=("per-rule", "stage"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.large, args.json_out, args.cprofile)))
        return
    _inputs(args.large)
    per_rule: dict[str, list[float]] = {}
    stage: dict[str, list[float]] = {}
    rss = []
    for i in range(args.runs):
        # every run is a fresh process: a cold review, as `reviewbot review` does
        got = _spawn("per-rule", args.large)
        for k, v in got["per_rule"].items():
            per_rule.setdefault(k, []).append(v)
        got = _spawn("stage", args.large, args.json_out if i == 0 else None,
                     args.cprofile if i == 0 else None)
        for k, v in got["stages"].items():
            stage.setdefault(k, []).append(v)
        rss.append(got["maxrss_mb"])
    med = {k: statistics.median(v) for k, v in per_rule.items()}
    print(f"input: {'large' if args.large else 'series17'}, runs: {args.runs} (medians, seconds; "
          "each run a fresh process)")
    print("per rule (each alone, in code order; the first rule touching a file pays its parse):")
    for k, v in sorted(med.items(), key=lambda x: -x[1]):
        print(f"  {k:8s} {v:7.3f}")
    print(f"  {'sum':8s} {sum(med.values()):7.3f}")
    print("stages of the review (all rules together, as a review runs them):")
    for k, v in stage.items():
        print(f"  {k:8s} {statistics.median(v):7.3f}   (all: {', '.join(f'{x:.3f}' for x in v)})")
    print(f"peak RSS: {max(rss):.0f} MB")
    if args.json_out:
        print("findings written to", args.json_out)
    if args.cprofile:
        print("profile written to", args.cprofile)


if __name__ == "__main__":
    main()
