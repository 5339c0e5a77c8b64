"""Benchmark (not a test): how fast `reviewbot watch` ingests a list.

Builds a 10,000-message archive from tests/data/lists/dccp.mbox repeated
with rewritten Message-IDs (threads kept: In-Reply-To/References rewritten
the same way) and dates shifted a day per copy, serves it with a real
public-inbox-httpd on loopback, and times one poll of it (search, gzip
stream, classification, SQLite), reviews excluded, in a child process whose
peak RSS is reported.  Then times a second poll (nothing new, but a poll
reads the whole window: the server's order is only roughly by arrival).

    python bench/bench_watch.py [--messages 10000] [--cache DIR]

The indexed archive is cached (tests/support/lore.py prebuilt_server).
"""
from __future__ import annotations

import argparse
import email.utils
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

_MID = re.compile(rb"<([^<>\s]+@[^<>\s]+)>")


def archive(n: int) -> list[bytes]:
    from support.lore import split_mbox
    base = split_mbox((ROOT / "tests" / "data" / "lists" / "dccp.mbox").read_bytes())
    out: list[bytes] = []
    copy = 0
    while len(out) < n:
        for raw in base:
            if len(out) >= n:
                break
            head, sep, body = raw.partition(b"\n\n")
            if copy:
                tag = b"c%d." % copy
                head = re.sub(rb"^(Message-I[Dd]|In-Reply-To|References):.*(\n[ \t].*)*",
                              lambda m: _MID.sub(lambda x: b"<" + tag + x.group(1) + b">", m.group(0)),
                              head, flags=re.M)
                m = re.search(rb"^Date:\s*(.+)$", head, re.M)
                if m:
                    try:
                        when = email.utils.parsedate_to_datetime(m.group(1).decode()).timestamp() - copy * 86400
                        head = head[:m.start()] + b"Date: " + email.utils.formatdate(when).encode() + head[m.end():]
                    except Exception:
                        pass
            out.append(head + sep + body)
        copy += 1
    return out


def child(url: str, state: str, outbox: str) -> None:
    """One poll in this process; print figures as JSON."""
    from reviewbot.watch import watcher as w
    opts = w.WatchOptions(lore_url=url, targets=w.make_targets(url, ["dccp"], [], {}), state=state,
                          outbox=outbox, since="20000101")
    watcher = w.Watcher(opts)
    t0 = time.perf_counter()
    n = watcher.poll(opts.targets[0])
    t1 = time.perf_counter()
    watcher.state.poll_finished("dccp", None)
    n2 = watcher.poll(opts.targets[0])
    t2 = time.perf_counter()
    due, waiting = watcher.due()
    t3 = time.perf_counter()
    counts = watcher.state.counts()
    watcher.close()
    print(json.dumps({"ingested": n, "seconds": t1 - t0, "second_poll_new": n2, "second_poll_seconds": t2 - t1,
                      "due_seconds": t3 - t2, "series_due": len(due), "series_waiting": waiting,
                      "series_by_state": counts,
                      "peak_rss_mib": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """VmHWM of this process.  (ru_maxrss would not do: Linux keeps it across
    exec, so it would report the parent that holds the whole archive.)"""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/reviewbot-bench/watch"))
    ap.add_argument("--child", nargs=3, metavar=("URL", "STATE", "OUTBOX"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return 0
    from support.lore import prebuilt_server
    t = time.perf_counter()
    msgs = archive(a.messages)
    print(f"archive: {len(msgs)} messages, {sum(map(len, msgs)) / 1e6:.1f} MB", flush=True)
    srv = prebuilt_server({"dccp": msgs}, Path(a.cache))
    print(f"server ready (built or cached) in {time.perf_counter() - t:.1f}s", flush=True)
    with srv, tempfile.TemporaryDirectory() as tmp:
        srv.start()
        p = subprocess.run([sys.executable, __file__, "--child", srv.url, os.path.join(tmp, "w.sqlite"),
                            os.path.join(tmp, "outbox")], capture_output=True, text=True)
        if p.returncode:
            print(p.stderr, file=sys.stderr)
            return 1
        r = json.loads(p.stdout)
    rate = r["ingested"] / r["seconds"] if r["seconds"] else 0
    print(f"first poll: {r['ingested']} messages in {r['seconds']:.2f}s = {rate:.0f} messages/s "
          f"(target: {a.messages} in < 60 s)")
    print(f"second poll (nothing new): {r['second_poll_new']} new in {r['second_poll_seconds']:.2f}s")
    print(f"choosing due series: {r['due_seconds']:.2f}s; {r['series_due']} due, {r['series_waiting']} waiting; "
          f"by state {r['series_by_state']}")
    print(f"peak RSS of the polling process: {r['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
