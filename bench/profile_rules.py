"""Per-rule timing of the rules stage on the bench inputs.

    python bench/profile_rules.py [--large] [--runs N] [--json-out FILE] [--cprofile FILE]

Default input: the 17-message series of bench/bench_review.py
(~/.cache/reviewbot-bench/series17/*.patch: 16 patches re-adding real
functions to net/core/filter.c, net/core/sock_map.c, net/ipv4/tcp_bpf.c);
--large: the single patch re-adding the whole net/ipv4/tcp_input.c
(~/.cache/reviewbot-bench/large/*.patch).  Both are applied to the linux
6.1 tree in ~/.cache/reviewbot-bench/tree (run
`python3 bench/bench_review.py --runs 1` once to create them).

Each rule is timed on its own, in code order, in a fresh process state per
run (the caches of reviewbot.cparse and of the rules are cleared between
runs, so every run measures a cold review).  The total of the rules stage
is also measured as the review runs it (all rules in one engine.run).
--json-out writes the findings (per patch and series) as JSON, to compare
before/after a change.
"""
from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reviewbot import engine, review  # noqa: E402

CACHE = pathlib.Path(os.path.expanduser("~/.cache/reviewbot-bench"))


def _clear_caches():
    """Forget everything memoised, so that a run is a cold review."""
    from reviewbot import cparse
    cparse._PARSED.clear()
    cparse._MEMO.clear()
    for mod in list(sys.modules.values()):
        name = getattr(mod, "__name__", "")
        if not (name.startswith("reviewbot") or name.startswith("rules")):
            continue
        clear = getattr(mod, "clear_caches", None)
        if callable(clear):
            clear()
        for obj in list(vars(mod).values()):
            if hasattr(obj, "cache_clear") and getattr(obj, "__module__", "") == name:
                try:
                    obj.cache_clear()
                except Exception:
                    pass
    gc.collect()


def _inputs(large: bool) -> bytes:
    pat = "large/*.patch" if large else "series17/*.patch"
    files = sorted(glob.glob(str(CACHE / pat)))
    if not files:
        sys.exit(f"no {CACHE / pat}: run `python3 bench/bench_review.py --runs 1` first")
    return b"".join(pathlib.Path(f).read_bytes() for f in files)


def one_run(data: bytes, per_rule: bool) -> tuple[dict, dict, review.Result]:
    times: dict[str, float] = {}
    orig_run = engine.run

    def timed_run(rules, contexts, only=None):
        if per_rule:
            for r in rules:
                if only and r.code not in only and r.name not in only:
                    continue
                t = time.perf_counter()
                orig_run([r], contexts, only)
                times[r.code] = time.perf_counter() - t
        return orig_run(rules, contexts, only)

    review.engine.run = timed_run
    try:
        res = review.review_mbox(data, review.Options(tree=str(CACHE / "tree")))
    finally:
        review.engine.run = orig_run
    return times, res.timings, res


def findings_json(res: review.Result) -> dict:
    return {
        "patches": [{"index": r.patch.index, "notes": r.notes,
                     "findings": [f.to_json() for f in r.findings]} for r in res.patches],
        "series_findings": [f.to_json() for f in res.series_findings],
        "notes": res.notes,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="the single patch re-adding net/ipv4/tcp_input.c")
    ap.add_argument("--runs", type=int, default=3, help="runs; medians are shown (default 3)")
    ap.add_argument("--json-out", help="write the findings of the last run as JSON")
    ap.add_argument("--cprofile", help="also write a cProfile of one (whole) run to this file")
    args = ap.parse_args(argv)
    data = _inputs(args.large)

    per_rule: dict[str, list[float]] = {}
    stage: dict[str, list[float]] = {}
    res = None
    for _ in range(args.runs):
        # per-rule pass (each rule alone, cold caches)
        _clear_caches()
        times, _, _ = one_run(data, per_rule=True)
        for k, v in times.items():
            per_rule.setdefault(k, []).append(v)
        # whole-stage pass, as a review runs it (cold caches)
        _clear_caches()
        _, timings, res = one_run(data, per_rule=False)
        for k, v in timings.items():
            stage.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in per_rule.items()}
    print(f"input: {'large' if args.large else 'series17'}, runs: {args.runs} (medians, seconds)")
    print("per rule (each alone, in code order; the first rule touching a file pays its parse):")
    for k, v in sorted(med.items(), key=lambda x: -x[1]):
        print(f"  {k:8s} {v:7.3f}")
    print(f"  {'sum':8s} {sum(med.values()):7.3f}")
    print("stages of the review (all rules together):")
    for k, v in stage.items():
        print(f"  {k:8s} {statistics.median(v):7.3f}")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(findings_json(res), indent=1, sort_keys=True))
        print("findings written to", args.json_out)
    if args.cprofile:
        import cProfile
        _clear_caches()
        cProfile.runctx("one_run(data, per_rule=False)", globals(), {"data": data, "one_run": one_run},
                        args.cprofile)
        print("profile written to", args.cprofile)


if __name__ == "__main__":
    main()
