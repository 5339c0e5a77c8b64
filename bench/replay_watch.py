"""Replay (not a test): the whole dccp archive and both SK_LOOKUP revisions
fed to a real public-inbox-httpd on loopback in 2, 3 and 10 parts, in Date
order and shuffled, with `reviewbot watch --once` runs SIGKILLed at random
moments; each outbox is compared with that of one uninterrupted run over
the whole archive.

    python bench/replay_watch.py [--parts 2,3,10] [--orders date,shuffled]
                                 [--kill-p 0.7] [--kill-within 0.5,6] [--seed N]
                                 [--since YYYYMMDD]

After each part, one run (killed with probability --kill-p, --kill-within
seconds after it started); once all mail is in, the grace period passes
(--grace 0): one run killed, one that finishes.  Prints one JSON line per variant: series (in
the reference outbox; a series is the revisions of one lineage),
revisions, reviews, duplicates and lost (both must be 0), extra/missing
outbox names, reviews that differ from the reference (other than in their
"since vN" note, which depends on which older revision had been reviewed
by then), kills.  Exit status 1 when a variant is off.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.lore import LoreServer  # noqa: E402
from test_watch import archive_mail, compare, reference_run, replay, split_parts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="2,3,10")
    ap.add_argument("--orders", default="date,shuffled")
    ap.add_argument("--kill-p", type=float, default=0.7, help="chance that a run after a part is killed")
    ap.add_argument("--kill-within", default="0.5,6", help="a killed run dies this many seconds after its start "
                    "(uniform between the two)")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--since", default="", help="dccp mail from this Date on (YYYYMMDD; default: all)")
    a = ap.parse_args()
    print(f"seed {a.seed}", flush=True)
    msgs = archive_mail(((a.since, "9"),))
    within = tuple(float(x) for x in a.kill_within.split(","))
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        with LoreServer(tmp / "ref-lore") as srv:
            srv.start()
            ref, series = reference_run(srv, msgs, tmp / "ref")
        whole = time.monotonic() - t0
        print(json.dumps({"reference": {"messages": len(msgs), "series": series, "reviews": len(ref),
                                        "seconds": round(whole, 1)}}), flush=True)
        for n in [int(x) for x in a.parts.split(",")]:
            for order in a.orders.split(","):
                rng = random.Random(f"{a.seed}-{n}-{order}")
                t1 = time.monotonic()
                with LoreServer(tmp / f"lore-{n}-{order}") as srv:
                    srv.start()
                    r = replay(srv, split_parts(msgs, n, order == "shuffled", rng), tmp / f"w-{n}-{order}",
                               rng, kill_p=a.kill_p, kill_within=within)
                c = compare(ref, series, r["reviews"])
                ok = (not r["problems"] and c["duplicates"] == 0 and c["lost"] == 0
                      and not c["extra"] and not c["missing"] and not c["differ"])
                bad += not ok
                print(json.dumps({"parts": n, "order": order, **c, "runs": r["runs"], "kills": r["kills"],
                                  "problems": r["problems"][:3], "seconds": round(time.monotonic() - t1, 1),
                                  "ok": ok}), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
