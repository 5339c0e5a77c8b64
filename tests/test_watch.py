"""`reviewbot watch` against a real public-inbox-httpd on loopback, fed in
steps: real dccp list mail, the SK_LOOKUP series v1 then v2, the xfrm
patch v1, v2 and a v3 that drops the PREEMPT_RT ifdefs.  Watchers are real
processes; crash tests kill them with SIGKILL."""
from __future__ import annotations

import email.utils
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.lore import LoreServer, message_id, split_mbox

DATA = Path(__file__).resolve().parent / "data"
SK_V1 = DATA / "lists" / "sk_lookup-v1.mbox"
SK_V2 = DATA / "lists" / "sk_lookup-v2.mbox"
XFRM_V1 = DATA / "messages" / "xfrm-lock-input-tasklet-v1.mbox"
XFRM_V2 = DATA / "messages" / "xfrm-lock-input-tasklet-v2.mbox"
SINCE = "2019-01-01"
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*-v\d+-[0-9a-f]{12}$")


def _date_of(raw: bytes) -> str:
    m = re.search(rb"^Date:\s*(.+)$", raw.split(b"\n\n", 1)[0], re.M)
    try:
        return email.utils.parsedate_to_datetime(m.group(1).decode()).strftime("%Y%m%d")
    except Exception:
        return "0"


def dccp_slice(since: str = "20240901") -> list[bytes]:
    """Real dccp list mail from *since* on (48 messages, 4 series to review,
    one of them after superseding older revisions; SK_LOOKUP, from 2020, is
    not in it).  The whole archive works too, it is just slower to index."""
    return [m for m in split_mbox((DATA / "lists" / "dccp.mbox").read_bytes()) if _date_of(m) >= since]


def redate(raw: bytes, when: float) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    head = re.sub(rb"^Date:.*$", b"Date: " + email.utils.formatdate(when).encode(), head, count=1, flags=re.M)
    return head + sep + body


def env_for(tmp: Path, gitconfig: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    cfg = tmp / "gitconfig"
    cfg.write_text(gitconfig)
    env["GIT_CONFIG_GLOBAL"] = str(cfg)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env.pop("REVIEWBOT_DEBUG", None)
    return env


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "reviewbot.cli", *args]


class Watch:
    """A state database and an outbox, and `reviewbot watch` runs on them."""

    def __init__(self, tmp: Path, url: str, lists=("dccp",), gitconfig: str = ""):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.lists = list(lists)
        self.state = tmp / "state" / "watch.sqlite"
        self.outbox = tmp / "outbox"
        self.env = env_for(tmp, gitconfig)

    def args(self, *extra, grace="6") -> list[str]:
        a = ["watch", "--lore-url", self.url, "--state", str(self.state), "--outbox", str(self.outbox),
             "--since", SINCE, "--grace", grace, "--from", "Rita Reviewer <rita@example.org>"]
        for name in self.lists:
            a += ["--list", name]
        return cmd(*a, *extra)

    def run(self, *extra, grace="6", expect=0) -> subprocess.CompletedProcess:
        p = subprocess.run(self.args("--once", *extra, grace=grace), capture_output=True, text=True,
                           env=self.env, timeout=300)
        assert "Traceback" not in p.stderr, p.stderr
        if expect is not None:
            assert p.returncode == expect, p.stderr
        return p

    def status(self) -> dict:
        p = subprocess.run(cmd("watch", "status", "--state", str(self.state), "--json"), capture_output=True,
                           text=True, env=self.env, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def reviews(self) -> dict[str, dict]:
        if not self.outbox.exists():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(self.outbox.glob("*.json"))}

    def inodes(self) -> dict[str, tuple]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in self.outbox.glob("*.json")}


def _timestamp(raw: bytes) -> float:
    m = re.search(rb"^Date:\s*(.+)$", raw.split(b"\n\n", 1)[0], re.M)
    try:
        return email.utils.parsedate_to_datetime(m.group(1).decode()).timestamp()
    except Exception:
        return 0.0


def archive_mail(windows=(("", "9"),)) -> list[bytes]:
    """The dccp archive (its mail whose Date falls in one of *windows*,
    (since, until) as YYYYMMDD; by default all of it) and both SK_LOOKUP
    revisions, oldest Date first."""
    msgs = [m for m in split_mbox((DATA / "lists" / "dccp.mbox").read_bytes())
            if any(a <= _date_of(m) < b for a, b in windows)]
    msgs += split_mbox(SK_V1.read_bytes()) + split_mbox(SK_V2.read_bytes())
    return sorted(msgs, key=_timestamp)


def split_parts(msgs: list[bytes], parts: int, shuffled: bool, rng: random.Random) -> list[list[bytes]]:
    """*parts* slices of about equal size, in Date order or shuffled."""
    msgs = list(msgs)
    if shuffled:
        rng.shuffle(msgs)
    step = -(-len(msgs) // parts)
    return [msgs[i:i + step] for i in range(0, len(msgs), step)]


_SINCE_PARA = re.compile(r"Since v\d+: .*?\n\n", re.S)


def comparable(review: dict) -> dict:
    """A review without what depends on which older revision had been
    reviewed by then (its "since vN" note and paragraph): in a shuffled
    replay, v2 may be complete and reviewed before v1 arrives at all."""
    r = json.loads(json.dumps(review))
    r.pop("timings", None)
    r["notes"] = [n for n in r.get("notes") or [] if not n.startswith("since v")]
    for rep in r.get("replies") or []:
        if isinstance(rep.get("body"), str):
            rep["body"] = _SINCE_PARA.sub("", rep["body"])
    return r


def revision_of(review: dict) -> tuple:
    return (review["series"]["message_id"], review["series"]["version"])


def reference_run(srv, msgs: list[bytes], tmp: Path) -> tuple[dict[str, dict], int]:
    """One uninterrupted run over the whole archive (every series due):
    its outbox and how many series (revisions of one lineage) it holds."""
    srv.add_inbox("dccp", msgs)
    w = Watch(tmp, srv.url)
    w.run(grace="0")
    db = sqlite3.connect(w.state)
    rows = db.execute("SELECT series_key, lineage FROM reviews WHERE state='done'").fetchall()
    db.close()
    return w.reviews(), len({lineage or key for key, lineage in rows})


def replay(srv, parts: list[list[bytes]], tmp: Path, rng: random.Random, kill_p: float = 0.5,
           kill_within: tuple[float, float] = (0.5, 6.0)) -> dict:
    """Feed *parts* one after the other to inbox 'dccp' of the running
    server *srv*; after each, a `reviewbot watch --once` that is SIGKILLed
    with probability *kill_p* at a random moment *kill_within* seconds
    after it started (if it is still running: start, poll or reviews).
    Once all mail is in, the grace period passes (--grace 0), again with a
    run killed first, at a random moment after its first review.  Returns the watcher, the outbox and what went wrong
    on the way (a file written twice, a traceback)."""
    w = Watch(tmp, srv.url)
    kept: dict[str, tuple] = {}
    kills, problems = 0, []

    def one_run(grace: str, kill: bool, after_review: bool = False):
        nonlocal kills
        proc = subprocess.Popen(w.args("--once", grace=grace), env=w.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        head = []
        if kill and after_review:
            # mid-run for sure: a random moment after its first review
            for line in proc.stderr:
                head.append(line)
                if "reviewed v" in line:
                    time.sleep(rng.uniform(0, 0.2))
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        kills += 1
                    break
        elif kill:
            try:
                proc.wait(timeout=rng.uniform(*kill_within))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        err = "".join(head) + proc.communicate(timeout=600)[1]
        if "Traceback" in err:
            problems.append(err[-2000:])
        now = w.inodes()
        for name, ino in kept.items():
            if now.get(name) != ino:
                problems.append(f"{name} rewritten or removed after it was written")
        kept.update(now)

    for part in parts:
        srv.add_inbox("dccp", part)
        one_run("6", rng.random() < kill_p)
    one_run("0", True, after_review=True)
    one_run("0", False)
    return {"watch": w, "reviews": w.reviews(), "kills": kills, "runs": len(parts) + 2, "problems": problems}


def compare(ref: dict[str, dict], series: int, got: dict[str, dict]) -> dict:
    """Counts of a replay against the reference outbox (*series*: how many
    series its revisions belong to)."""
    revs = {revision_of(r) for r in ref.values()}
    got_revs = [revision_of(r) for r in got.values()]
    dup = len(got_revs) - len(set(got_revs))
    return {
        "series": series,
        "revisions": len(revs),
        "reviews": len(got),
        "duplicates": dup,
        "lost": len(revs - set(got_revs)),
        "extra": sorted(set(got) - set(ref)),
        "missing": sorted(set(ref) - set(got)),
        "differ": sorted(n for n in set(ref) & set(got) if comparable(ref[n]) != comparable(got[n])),
        # the same review but for its "since vN" note (arrival order)
        "since_notes_differ": sum(1 for n in set(ref) & set(got) if comparable(ref[n]) == comparable(got[n])
                                  and dict(ref[n], timings=None) != dict(got[n], timings=None)),
    }


def new_entries(before: dict, after: dict) -> dict:
    return {k: v for k, v in after.items() if k not in before}


@pytest.fixture(scope="module")
def dccp_lore(tmp_path_factory):
    """Read-only for the tests using it: the dccp slice in inbox 'dccp'."""
    srv = LoreServer(tmp_path_factory.mktemp("dccp-lore"))
    srv.add_inbox("dccp", dccp_slice())
    with srv:
        srv.start()
        yield srv


# ---------------------------------------------------------------------------


def test_watch_help_and_status_help():
    for args in (("watch", "--help"), ("watch", "status", "--help")):
        p = subprocess.run(cmd(*args), capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "Usage: reviewbot watch" in p.stdout
    p = subprocess.run(cmd("watch", "--help"), capture_output=True, text=True, timeout=60)
    for opt in ("--list", "--query", "--state", "--outbox", "--since", "--once", "--interval", "--grace", "status"):
        assert opt in p.stdout


def test_list_fed_in_steps_then_sk_lookup_v1_and_v2(lore_factory, tmp_path):
    srv = lore_factory()
    srv.add_inbox("dccp", dccp_slice())
    w = Watch(tmp_path, srv.url)

    w.run()
    first = w.reviews()
    assert len(first) >= 3
    ids = [r["series"]["message_id"] for r in first.values()]
    assert len(ids) == len(set(ids)), "a series was reviewed twice"
    assert all(NAME_RE.match(n) for n in first)
    for name, r in first.items():       # drafts exist exactly when there are replies
        assert (w.outbox / f"{name}.mbox").exists() == bool(r["replies"])
    st = w.status()
    assert st["counts"]["reviewed"] == len(first)
    assert st["lists"][0]["watch"] == "dccp" and st["lists"][0]["last_error"] is None
    # Each revision is reviewed once, older revisions too.
    revisions = [revision_of(r) for r in first.values()]
    assert len(revisions) == len(set(revisions))

    stamp = w.inodes()
    again = w.run()
    assert w.inodes() == stamp, "a second run rewrote or added outbox files"
    assert "0 new message(s), 0 reviewed" in again.stderr

    srv.add_inbox("dccp", [SK_V1])
    w.run()
    added = new_entries(first, w.reviews())
    assert len(added) == 1
    (v1_name, v1), = added.items()
    assert v1["series"]["version"] == 1 and v1["series"]["total"] == 17
    assert v1["series"]["subject"] == "Run a BPF program on socket lookup"
    assert len(v1["patches"]) == 17

    before = w.reviews()
    srv.add_inbox("dccp", [SK_V2])
    w.run()
    added = new_entries(before, w.reviews())
    assert len(added) == 1
    (v2_name, v2), = added.items()
    assert v2_name != v1_name
    assert v2["series"]["version"] == 2
    since = [n for n in v2["notes"] if n.startswith("since v1")]
    assert since and v1["series"]["message_id"] in since[0] and v1_name in since[0]
    assert w.status()["counts"]["reviewed"] == len(first) + 2


def _xfrm_v3() -> bytes:
    """v3 of the xfrm patch as its author would resend it after review: the
    PREEMPT_RT ifdefs gone, the locked helper used unconditionally."""
    return b"""From: Tom Rix <trix@redhat.com>
Date: Thu, 24 Oct 2019 09:10:00 -0700
Message-ID: <xfrm-v3-20191024@reviewbot-tests.invalid>
Subject: [PATCH v3 1/1] xfrm : lock input tasklet skb queue
To: steffen.klassert@secunet.com, herbert@gondor.apana.org.au, davem@davemloft.net
Cc: netdev@vger.kernel.org
Content-Type: text/plain; charset=utf-8

On PREEMPT_RT the tasklet queue can be reached concurrently; initialise
it with the locked helper so that the lock is valid on every config.

Signed-off-by: Tom Rix <trix@redhat.com>
---
 net/xfrm/xfrm_input.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/net/xfrm/xfrm_input.c b/net/xfrm/xfrm_input.c
index 9b599ed66d97..decd515f84cf 100644
--- a/net/xfrm/xfrm_input.c
+++ b/net/xfrm/xfrm_input.c
@@ -798,7 +798,7 @@ void __init xfrm_input_init(void)
 \t\tstruct xfrm_trans_tasklet *trans;
 
 \t\ttrans = &per_cpu(xfrm_trans_tasklet, i);
-\t\t__skb_queue_head_init(&trans->queue);
+\t\tskb_queue_head_init(&trans->queue);
 \t\ttasklet_init(&trans->tasklet, xfrm_trans_reinject,
 \t\t\t     (unsigned long)trans);
 \t}
-- 
2.23.0
"""


def test_new_revision_says_which_findings_are_gone(lore_factory, tmp_path):
    srv = lore_factory()
    srv.add_inbox("netdev", [XFRM_V1])
    w = Watch(tmp_path, srv.url, lists=("netdev",))
    w.run()
    assert len(w.reviews()) == 1

    before = w.reviews()
    srv.add_inbox("netdev", [XFRM_V2])
    w.run()
    (v2_name, v2), = new_entries(before, w.reviews()).items()
    assert [f["rule"] for p in v2["patches"] for f in p["findings"]] == ["RT001"]
    assert any(n.startswith("since v1") and "0 finding(s) resolved" in n and "1 new" in n for n in v2["notes"])

    before = w.reviews()
    srv.add_inbox("netdev", [_xfrm_v3()])
    w.run()
    (v3_name, v3), = new_entries(before, w.reviews()).items()
    assert v3["series"]["version"] == 3
    assert not [f for p in v3["patches"] for f in p["findings"]]
    assert any(n.startswith("since v2") and "1 finding(s) resolved" in n for n in v3["notes"])
    # The draft to v3 says so, in a reply to v3's own message.
    mbox = (w.outbox / f"{v3_name}.mbox").read_text()
    assert "In-Reply-To: <xfrm-v3-20191024@reviewbot-tests.invalid>" in mbox
    body = " ".join(mbox.split())
    assert "Since v2: the preempt-rt-ifdef question on net/xfrm/xfrm_input.c is resolved." in body
    assert "\n-- \n" in mbox


def test_incomplete_series_waits_for_grace_or_its_last_patch(lore_factory, tmp_path):
    now = time.time()
    sockhash = split_mbox((DATA / "seeds" / "seed002.mbox").read_bytes())   # [bpf PATCH 0/6] + replies
    sk_v1 = split_mbox(SK_V1.read_bytes())
    subj = lambda raw: re.search(rb"^Subject: (.*)$", raw, re.M).group(1)     # noqa: E731
    hostile = b"""From: Mallory <mallory@example.invalid>
Message-ID: <hostile-1@example.invalid>
Subject: [PATCH] ../../../tmp/$(touch pwned)/..\\x1b[31m;rm -rf ~
Date: x

Signed-off-by: Mallory <mallory@example.invalid>
---
diff --git a/net/dccp/proto.c b/net/dccp/proto.c
--- a/net/dccp/proto.c
+++ b/net/dccp/proto.c
@@ -1,3 +1,3 @@
 a
-b
+c
 d
"""
    srv = lore_factory()
    # sockhash 6/6 never arrives; its newest part is ten minutes old
    srv.add_inbox("netdev", [redate(m, now - 600) for m in sockhash if b"PATCH 6/6]" not in subj(m)]
                  + [redate(hostile, now - 60)])
    w = Watch(tmp_path, srv.url, lists=("netdev",))

    p = w.run(grace="6")
    assert "1 waiting" in p.stderr
    names = list(w.reviews())
    assert len(names) == 1      # only the single patch (complete) was reviewed
    assert NAME_RE.match(names[0]) and names[0].startswith("tmp-touch-pwned-x1b-31m-rm-rf-v1-")
    assert {p.name for p in tmp_path.rglob("*pwned*")} == {names[0] + ".json"}
    pending, = w.status()["pending"]
    assert pending["total"] == 6 and pending["missing"] == [6] and pending["cover"]

    # Grace counts from when the watcher first saw the newest part (its
    # Date is ten minutes old): 1 s later, a grace of 0.25 s has passed.
    time.sleep(1)
    w.run(grace=f"{0.25 / 3600:.8f}")
    (name, res), = new_entries({names[0]: None}, w.reviews()).items()
    assert res["series"]["subject"] == "BPF fixes for sockhash" and len(res["patches"]) == 5
    assert any("6/6" in n and "missing" in n for n in res["notes"])
    assert w.status()["pending"] == []

    # SK_LOOKUP arrives without patch 5 (sent just now): it waits; when 5
    # comes it is reviewed at once, long before the grace period is over.
    is5 = lambda m: b"05/17]" in subj(m)      # noqa: E731
    before = w.reviews()
    srv.add_inbox("netdev", [redate(m, now) for m in sk_v1 if not is5(m)])
    w.run(grace="6")
    assert w.reviews() == before
    assert w.status()["pending"][0]["missing"] == [5]
    srv.add_inbox("netdev", [redate(m, now) for m in sk_v1 if is5(m)])
    w.run(grace="6")
    (name, res), = new_entries(before, w.reviews()).items()
    assert res["series"]["version"] == 1 and len(res["patches"]) == 17
    assert not any("missing" in n for n in res["notes"])


def test_failing_list_does_not_stop_the_others(dccp_lore, tmp_path):
    # watches from git config sections, as a cron job would have them
    cfg = ('[reviewbot "watch.gone"]\n\tlist = no-such-list\n'
           '[reviewbot "watch.dccp"]\n\tlist = dccp\n'
           '[reviewbot "watch.ipv4"]\n\tquery = dfn:net/dccp/ipv4.c\n'   # over /all/
           '[reviewbot "watch.bad-query"]\n\tquery = "("\n'
           '[reviewbot]\n\tretries = 0\n')   # the server answers 500 to a bad query: no backoff here
    w = Watch(tmp_path, dccp_lore.url, lists=(), gitconfig=cfg)
    p = w.run(expect=1)
    errors = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 2 and any("gone:" in e and "no-such-list" in e for e in errors)
    assert any("bad-query:" in e and "HTTP 500" in e for e in errors)
    assert len(w.reviews()) >= 3
    lists = {r["watch"]: r for r in w.status()["lists"]}
    assert lists["dccp"]["last_error"] is None and lists["dccp"]["last_ok"]
    assert "no such inbox" in lists["gone"]["last_error"]
    # the query watch saw patches the list watch saw too: reviewed once
    assert lists["ipv4"]["last_error"] is None and 0 < lists["ipv4"]["messages"] < lists["dccp"]["messages"]
    ids = [r["series"]["message_id"] for r in w.reviews().values()]
    assert len(ids) == len(set(ids))
    text = subprocess.run(cmd("watch", "status", "--state", str(w.state)), capture_output=True, text=True,
                          env=w.env, timeout=60).stdout
    assert "gone: last poll" in text and "error: " in text and "reviewed" in text

    # Bad input: one line on stderr, no traceback, state and outbox untouched.
    stamp, size = w.inodes(), w.state.stat().st_size
    for extra, what in ((["--since", "last tuesday"], "--since"),
                        (["--list", "../etc"], "not a list name"),
                        (["--lore-url", "ftp://x"], "--lore-url")):
        p = subprocess.run(w.args("--once", *extra), capture_output=True, text=True, env=w.env, timeout=60)
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and what in p.stderr
    assert w.inodes() == stamp and w.state.stat().st_size == size
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    p = subprocess.run(cmd("watch", "status", "--state", str(junk)), capture_output=True, text=True,
                       env=w.env, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "not a usable SQLite database" in p.stderr
    assert junk.read_bytes() == b"this is not sqlite" * 100


def test_kill_9_at_random_moments_leaves_one_review_per_series(dccp_lore, tmp_path):
    ref = Watch(tmp_path / "ref", dccp_lore.url)
    t0 = time.monotonic()
    ref.run()
    whole = time.monotonic() - t0       # how long an uninterrupted pass takes here
    expected = set(ref.reviews())
    assert len(expected) >= 3

    w = Watch(tmp_path / "killed", dccp_lore.url)
    rng = random.Random(int(os.environ.get("REVIEWBOT_KILL_SEED", "1234")))
    kept: dict[str, tuple] = {}
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(w.args("--once"), env=w.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        # a random moment early enough in the pass that it is still working
        time.sleep(rng.uniform(0.05, 0.35) * whole)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        err = proc.communicate(timeout=60)[1]
        assert "Traceback" not in err
        now = w.inodes()
        # a review file, once written, is never written again
        for name, ino in kept.items():
            assert now.get(name) == ino, f"{name} rewritten after a crash"
        kept.update(now)
    assert kills >= 2
    w.run()
    got = w.reviews()
    assert set(got) == expected
    assert all(w.inodes()[n] == ino for n, ino in kept.items())
    ids = [r["series"]["message_id"] for r in got.values()]
    assert len(ids) == len(set(ids))
    assert not [p for p in w.outbox.iterdir() if p.suffix not in (".json", ".mbox")]
    for name, r in got.items():
        assert (w.outbox / f"{name}.mbox").exists() == bool(r["replies"])
    db = sqlite3.connect(w.state)
    assert db.execute("SELECT COUNT(*) FROM reviews WHERE state='done'").fetchone()[0] == len(expected)
    assert db.execute("SELECT COUNT(*) FROM reviews WHERE state='intent'").fetchone()[0] == 0


def test_sigterm_finishes_the_series_in_hand_and_exits(dccp_lore, tmp_path):
    w = Watch(tmp_path, dccp_lore.url)
    proc = subprocess.Popen(w.args("--interval", "30"), env=w.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "reviewed v" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest
    assert "stopped by signal" in rest and "Traceback" not in rest
    done = w.reviews()
    st = w.status()
    assert st["counts"]["reviewed"] == len(done) >= 1
    # the next run does the rest, and nothing twice
    stamp = w.inodes()
    w.run()
    assert all(w.inodes()[n] == s for n, s in stamp.items())
    assert len(w.reviews()) >= 3
    # a second watcher on the same state while one runs is refused
    proc = subprocess.Popen(w.args("--interval", "30"), env=w.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "pass done" in line:
            break
    p = w.run(expect=75)
    assert "another reviewbot watch" in p.stderr
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 0


# dccp mail of September 2021 (a patch sent twice) and of March and April
# 2023 (the io_uring thread of issue 19), with SK_LOOKUP v1 and v2
REPLAY_WINDOWS = (("20210901", "20211001"), ("20230301", "20230501"))


def test_replay_in_parts_shuffled_and_killed_gives_the_outbox_of_one_run(lore_factory, tmp_path):
    """The archive fed in 3 parts in shuffled order, runs SIGKILLed at
    random moments: the outbox is that of one uninterrupted run over the
    whole archive, one review per series revision.  (The full matrix, 2, 3
    and 10 parts, Date order and shuffled, over the whole dccp archive:
    bench/replay_watch.py.)"""
    msgs = archive_mail(REPLAY_WINDOWS)
    rng = random.Random(int(os.environ.get("REVIEWBOT_KILL_SEED", "1234")))
    ref, series = reference_run(lore_factory(), msgs, tmp_path / "ref")
    r = replay(lore_factory(), split_parts(msgs, 3, True, rng), tmp_path / "replay", rng, kill_p=1.0,
               kill_within=(0.2, 1.5))
    assert not r["problems"], r["problems"]
    c = compare(ref, series, r["reviews"])
    assert (c["duplicates"], c["lost"], c["extra"], c["missing"], c["differ"]) == (0, 0, [], [], []), c
    assert r["kills"] >= 1
    assert c["reviews"] == c["revisions"] and c["revisions"] > c["series"] >= 5

    # The thread of issue 19: a cover saying 0/5 over RFC patches 1/4..4/4,
    # and a [PATCH RFC] posted as a reply inside it.  Two reviews, each of
    # its own series: never the host series twice.
    got = r["reviews"]
    cover = "20230406144330.1932798-1-leitao@debian.org"
    host = [x for x in got.values() if x["series"]["message_id"] == cover]
    assert len(host) == 1 and len(host[0]["patches"]) == 4
    assert any("5/5" in n and "missing" in n for n in host[0]["notes"])
    guest = [x for x in got.values() if x["series"]["message_id"] == "20230406165705.3161734-1-leitao@debian.org"]
    assert len(guest) == 1 and len(guest[0]["patches"]) == 1
    assert not any("thread holds revisions" in n for x in got.values() for n in x["notes"])
    # the same patch sent twice, hours apart, in two threads: two postings,
    # each reviewed as itself (not both as "v2" of what the thread holds)
    ccid = sorted(x["series"]["message_id"] for x in got.values()
                  if x["series"]["subject"] == "dccp: don't duplicate ccid when cloning dccp sock")
    assert ccid == ["D95F1297-95A1-4AC9-B0C2-803C453B1BAE@psu.edu", "F3E0B9C9-14F1-43F5-AC6C-E5DB346A8090@psu.edu"]
    sk = sorted(x["series"]["version"] for x in got.values()
                if x["series"]["subject"] == "Run a BPF program on socket lookup")
    assert sk == [1, 2]
    db = sqlite3.connect(r["watch"].state)
    assert db.execute("SELECT COUNT(*) FROM reviews WHERE state='intent'").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM mail").fetchone()[0] == 0     # mail kept only while pending


def test_poll_reads_past_known_messages_when_the_server_order_is_rough(tmp_path):
    """A search answer is only roughly newest first (an extindex's shards
    interleave, a cross-posted message keeps its first number): a poll
    reads the whole answer, so a new message behind 100 known ones is not
    missed."""
    import gzip
    import http.server
    import threading

    from reviewbot.watch import watcher as wmod

    msgs = split_mbox((DATA / "lists" / "dccp.mbox").read_bytes())[:101]
    answer = {"msgs": msgs[:100]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"".join(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n" + m + b"\n" for m in answer["msgs"])
            data = gzip.compress(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        opts = wmod.WatchOptions(lore_url=url, targets=wmod.make_targets(url, ["dccp"], [], {}),
                                 state=str(tmp_path / "w.sqlite"), outbox=str(tmp_path / "out"), since="20190101")
        w = wmod.Watcher(opts)
        try:
            t = opts.targets[0]
            assert w.poll(t) == 100
            answer["msgs"] = msgs[:100] + msgs[100:]     # the new one last
            assert w.poll(t) == 1
            assert w.state.seen_many("dccp", [message_id(msgs[100])])
        finally:
            w.close()
    finally:
        httpd.shutdown()
