"""Soak (not a test): kill real `reviewbot watch --once` processes with
SIGKILL at random moments, 20 times, while mail keeps arriving, then check
that the outbox holds exactly the reviews an uninterrupted run makes, none
of them written twice.

    python bench/soak_watch.py [--kills 20] [--seed N] [--since 20240101]

A real public-inbox-httpd on loopback serves a slice of the dccp archive;
SK_LOOKUP v1 and v2 are added a third and two thirds of the way through.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.lore import LoreServer  # noqa: E402
from test_watch import SK_V1, SK_V2, Watch, dccp_slice  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--since", default="20240101", help="dccp slice start (YYYYMMDD)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    print(f"seed {a.seed}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        srv = LoreServer(tmp / "lore")
        srv.add_inbox("dccp", dccp_slice(a.since))
        with srv:
            srv.start()
            w = Watch(tmp / "killed", srv.url)
            # the reference watcher is never killed and sees the same steps
            # (every revision is reviewed, whatever order it arrives in:
            # bench/replay_watch.py checks that on the whole archive)
            ref = Watch(tmp / "ref", srv.url)
            ref.run()
            kept: dict[str, tuple] = {}
            kills = 0
            t0 = time.time()
            steps = {a.kills // 3: SK_V1, 2 * a.kills // 3: SK_V2}
            for i in range(a.kills):
                if i in steps:
                    srv.add_inbox("dccp", [steps[i]])
                    ref.run()
                    print(f"added {steps[i].name}", flush=True)
                proc = subprocess.Popen(w.args("--once"), env=w.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
                time.sleep(rng.uniform(0.1, 2.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                err = proc.communicate(timeout=120)[1]
                if "Traceback" in err:
                    print(err, file=sys.stderr)
                    return 1
                now = w.inodes()
                for name, ino in kept.items():
                    if now.get(name) != ino:
                        print(f"FAIL: {name} rewritten or lost after a crash", file=sys.stderr)
                        return 1
                kept.update(now)
                print(f"run {i + 1}: {'killed' if proc.returncode == -9 else 'finished'}, "
                      f"{len(now)} reviews in the outbox", flush=True)
            w.run()
            got = w.reviews()
            expected = set(ref.reviews())
            db = sqlite3.connect(w.state)
            intents = db.execute("SELECT COUNT(*) FROM reviews WHERE state='intent'").fetchone()[0]
            done = db.execute("SELECT COUNT(*) FROM reviews WHERE state='done'").fetchone()[0]
            ids = [r["series"]["message_id"] for r in got.values()]
            stray = [p.name for p in w.outbox.iterdir() if p.suffix not in (".json", ".mbox")]
            problems = []
            if set(got) != expected:
                problems.append(f"outbox differs from an uninterrupted run: missing {sorted(expected - set(got))}, "
                                f"extra {sorted(set(got) - expected)}")
            if len(ids) != len(set(ids)):
                problems.append("a series has two reviews")
            if intents or done != len(got):
                problems.append(f"state: {intents} intents left, {done} done vs {len(got)} files")
            if stray:
                problems.append(f"stray files {stray}")
            if any(w.inodes().get(n) != ino for n, ino in kept.items()):
                problems.append("a review file was rewritten")
            print(json.dumps({"kills": kills, "runs": a.kills, "reviews": len(got), "expected": len(expected),
                              "seconds": round(time.time() - t0, 1), "problems": problems}))
            return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
