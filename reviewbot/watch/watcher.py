"""`reviewbot watch`: poll lists on a public-inbox server, follow patch
series as their parts arrive, review each series revision exactly once and
leave reply drafts in an outbox.

Polling uses the server's own search: ``POST /LIST/?q=QUERY&x=m`` answers a
gzip mbox of the matching messages.  A poll reads the whole answer (the
date window): the server's order is only roughly by arrival (an extindex's
shards interleave, a cross-posted message keeps its first number, mail can
arrive late), so no run of known messages can tell that the rest is known
too.  Known messages cost a header parse and a lookup.

A series revision is what the watcher grouped: the messages of one
author and version under one thread root (a cover letter and its patches),
or one patch sent without a counter (``[PATCH]``, even as a reply inside
another thread).  The review gets exactly those parts, as polled (kept in
the state until the series is reviewed), not whatever the thread holds; and
what is recorded as done is the series that review reported.

Exactly once: see state.py.  Outbox names are a slug of the subject (made
of [a-z0-9-] only) plus a hash of the series key, never raw mail text.
"""
from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import hashlib
import json
import os
import re
import signal
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import requests

from reviewbot.lore import fetch
from reviewbot.errors import LoreError, ReviewbotError, SourceError
from reviewbot.lore.fetch import HttpPolicy


BATCH = 200                 # messages per ingest transaction
PAGE_HINT = 200             # a page of exactly k*200 may mean the server capped it
MAX_ATTEMPTS = 3            # review attempts before a series is marked failed
MAX_MESSAGE_BYTES = 16 * 1024 * 1024   # as mail.MAX_MESSAGE_BYTES
MAX_POLL_BYTES = 4 * 1024 * 1024 * 1024   # decompressed bytes read per poll
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REPLY_RE = re.compile(r"^\s*(re|aw|sv|antw|fw|fwd)\s*(\[\d+\])?\s*:", re.I)
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

@dataclass
class Target:
    """One watched list or query: what `polls` and `status` call a watch."""

    name: str
    inbox: str          # inbox URL (ends in '/'), /all/ for a bare query
    query: str = ""     # public-inbox search terms, ANDed with the date window

    def search(self, since: str) -> str:
        window = f"d:{since}.."
        return f"({self.query}) AND {window}" if self.query else window


@dataclass
class WatchOptions:
    lore_url: str
    targets: list[Target]
    state: str
    outbox: str
    since: str                      # YYYYMMDD
    since_relative: bool = False    # '14d': the 14 days before each poll
    since_spec: str = ""            # the --since text ('14d'), worked out again at each poll
    tree: str | None = None
    grace_hours: float = 6.0
    interval: float | None = None   # None: one pass
    reviewer: tuple[str, str] = ("reviewbot", "reviewbot@localhost.invalid")
    min_confidence: str = "medium"
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    echo: object = None             # callable(str): one line per event


def parse_since(text: str) -> str:
    """--since: YYYY-MM-DD or YYYYMMDD, or N days ('30d')."""
    t = (text or "").strip()
    m = re.fullmatch(r"(\d+)\s*d(ays?)?", t)
    if m:
        dt = datetime.fromtimestamp(time.time() - int(m.group(1)) * 86400, timezone.utc)
        return dt.strftime("%Y%m%d")
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(t, fmt).strftime("%Y%m%d")
        except ValueError:
            pass
    raise ReviewbotError(f"--since {text!r}: expected YYYY-MM-DD, YYYYMMDD or a number of days like 30d")


def since_is_relative(text: str) -> bool:
    return bool(re.fullmatch(r"\d+\s*d(ays?)?", (text or "").strip()))


def server_root(lore_url: str) -> str:
    parts = urllib.parse.urlsplit((lore_url or "").strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ReviewbotError(f"--lore-url must be an http(s) URL, not {lore_url!r}")
    path = parts.path.strip("/")
    return f"{parts.scheme}://{parts.netloc}/" + (path + "/" if path else "")


def make_targets(lore_url: str, lists: list[str], queries: list[str],
                 sections: dict[str, dict[str, str]]) -> list[Target]:
    """Targets from --list/--query and the [reviewbot "watch.NAME"] sections."""
    root = server_root(lore_url)
    out: list[Target] = []

    def inbox(name: str) -> str:
        if not _NAME_RE.match(name):
            raise ReviewbotError(f"{name!r} is not a list name (letters, digits, '.', '_', '-')")
        return root + name + "/"

    for name in lists:
        out.append(Target(name, inbox(name)))
    for q in queries:
        if not q.strip():
            raise ReviewbotError("--query must not be empty")
        out.append(Target("query " + q.strip(), root + "all/", q.strip()))
    for sect, keys in sorted(sections.items()):
        lst, q = keys.get("list", "").strip(), keys.get("query", "").strip()
        if not lst and not q:
            raise ReviewbotError(f'[reviewbot "watch.{sect}"] needs a list or a query key')
        out.append(Target(sect, inbox(lst) if lst else root + "all/", q))
    names = [t.name for t in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ReviewbotError(f"watch {sorted(dup)[0]!r} given twice")
    return out


def watch_sections(settings_items) -> dict[str, dict[str, str]]:
    """Collect keys `watch.NAME.KEY` (git config reviewbot.watch.NAME.KEY)."""
    out: dict[str, dict[str, str]] = {}
    for key, value, _origin in settings_items:
        if not key.startswith("watch."):
            continue
        name, _, sub = key[len("watch."):].rpartition(".")
        if name and sub in ("list", "query"):
            out.setdefault(name, {})[sub] = value
    return out


# ---------------------------------------------------------------------------
# classifying mail
# ---------------------------------------------------------------------------

@dataclass
class Classified:
    msgid: str
    kind: str                       # cover | patch | reply | pull | other
    date: float
    series_key: str | None = None
    anchor: str | None = None
    index: int = 0
    total: int = 1
    version: int = 1
    subject: str = ""               # without prefixes
    lineage: str | None = None
    defines_subject: bool = False
    raw: bytes | None = None        # the mail of a series part (kept until reviewed)


def _decode(value) -> str:
    if value is None:
        return ""
    try:
        text = str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:
        text = str(value)
    return " ".join(text.split())


def parse_subject(subject: str) -> dict:
    """[PATCH v2 3/5] style prefixes -> kind, version, index, total, rest."""
    out = {"reply": False, "patch": False, "pull": False, "version": 1, "index": None, "total": None,
           "rest": subject}
    if _REPLY_RE.match(subject):
        out["reply"] = True
        return out
    s = subject.strip()
    while s.startswith("["):
        end = s.find("]")
        if end < 0:
            break
        tag, s = s[1:end], s[end + 1:].strip()
        for tok in tag.replace(",", " ").split():
            up = tok.upper()
            if "PULL" in up:
                out["pull"] = True
            m = re.fullmatch(r"(?:PATCH|RFC)?V(\d{1,3})", up)
            if up.startswith(("PATCH", "RFC")):
                out["patch"] = True
            if m:
                out["version"] = max(1, int(m.group(1)))
            m = re.fullmatch(r"(\d{1,4})/(\d{1,4})", tok)
            if m:
                out["index"], out["total"] = int(m.group(1)), int(m.group(2))
    out["rest"] = s
    return out


_DIFF_RE = re.compile(rb"^(diff --git |Index: |--- \S[^\n]*\n\+\+\+ )", re.M)


def has_diff(raw: bytes, hdrs) -> bool:
    if _DIFF_RE.search(raw):
        return True
    cte = str(hdrs.get("Content-Transfer-Encoding", "")).lower()
    ctype = str(hdrs.get("Content-Type", "")).lower()
    if "base64" in cte or "quoted-printable" in cte or "multipart" in ctype:
        from reviewbot.lore import mail
        msg = mail.parse_message(raw)
        if msg is not None:
            return bool(_DIFF_RE.search(mail.body_text(msg).encode("utf-8", "replace")))
    return False


def _msgid(value) -> str | None:
    m = re.search(r"<([^<>\s]+)>", str(value or ""))
    if m:
        return m.group(1)
    v = str(value or "").strip()
    return v if v and " " not in v and "@" in v else None


def _refs(hdrs) -> list[str]:
    refs = re.findall(r"<([^<>\s]+)>", str(hdrs.get("References", "") or ""))
    irt = _msgid(hdrs.get("In-Reply-To"))
    if irt and irt not in refs:
        refs.append(irt)
    return refs


def classify(raw: bytes, now: float) -> Classified | None:
    """What one message is to the watcher.  None: unreadable (no Message-ID)."""
    try:
        hdrs = _HEADER_PARSER.parsebytes(raw)
    except Exception:
        return None
    msgid = _msgid(hdrs.get("Message-ID"))
    if not msgid or len(msgid) > 500:
        return None
    date = now
    try:
        dt = email.utils.parsedate_to_datetime(str(hdrs.get("Date", "")))
        if dt is not None:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            date = min(now, dt.timestamp())     # a clock in the future: count from arrival
    except Exception:
        pass
    subject = _decode(hdrs.get("Subject"))
    sub = parse_subject(subject)
    if sub["reply"]:
        return Classified(msgid, "reply", date)
    if sub["pull"]:
        return Classified(msgid, "pull", date)
    if not sub["patch"]:
        return Classified(msgid, "other", date)
    index, total = sub["index"], sub["total"]
    if total is None or total < 1 or index is None or index > total:
        index, total = 1, 1
    total = min(total, 999)
    if index >= 1 and not has_diff(raw, hdrs):
        return Classified(msgid, "other", date)    # [PATCH] in the subject, but no patch
    author = ""
    try:
        author = (email.utils.parseaddr(_decode(hdrs.get("From")))[1] or "").lower()
    except Exception:
        pass
    version = sub["version"]
    refs = _refs(hdrs)
    if sub["index"] is None:
        # [PATCH] without a counter is a series of its own, even when sent
        # as a reply inside another series' thread
        root = msgid
    elif refs:
        root = refs[0]      # the thread's root: the cover, or patch 1
    elif index <= 1:
        root = msgid
    else:   # sent --no-thread: group by sender, revision and day
        root = f"nothread:{datetime.fromtimestamp(date, timezone.utc):%Y%m%d}"
    # Not the N of i/N: a cover saying 0/5 over patches saying 1/4 is one
    # series (the review assembles it as one), not two.
    key = f"{root}|{author}|v{version}"
    rest = sub["rest"]
    c = Classified(msgid, "cover" if index == 0 else "patch", date, key, msgid, index, total, version, rest,
                   raw=raw)
    c.defines_subject = index <= 1
    c.lineage = f"{author}|{' '.join(rest.lower().split())}" if c.defines_subject else None
    return c


# ---------------------------------------------------------------------------
# reading a search answer as a stream of messages
# ---------------------------------------------------------------------------

class MboxStream:
    """Split a (gzip) mbox HTTP answer into raw messages as it arrives,
    bounded in message size and total size."""

    def __init__(self, resp: requests.Response, what: str):
        self.resp = resp
        self.what = what
        self.skipped = 0

    def __iter__(self):
        dec = None
        buf = bytearray()
        total = 0
        oversized = False
        try:
            for chunk in self.resp.iter_content(256 * 1024):
                if dec is None:
                    dec = zlib.decompressobj(16 + zlib.MAX_WBITS) if chunk[:2] == b"\x1f\x8b" else False
                if dec:
                    try:
                        data = dec.decompress(chunk)
                        while dec.eof and dec.unused_data:      # concatenated members
                            rest = dec.unused_data
                            dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                            data += dec.decompress(rest)
                    except zlib.error:
                        raise LoreError(f"{self.what}: corrupt gzip data") from None
                else:
                    data = chunk
                total += len(data)
                if total > MAX_POLL_BYTES:
                    raise LoreError(f"{self.what}: answer larger than {MAX_POLL_BYTES >> 30} GiB")
                buf += data
                start = 0
                while True:
                    pos = buf.find(b"\nFrom ", start)
                    if pos < 0:
                        break
                    part = bytes(buf[start:pos + 1])
                    start = pos + 1
                    if oversized:
                        oversized = False
                        continue
                    if part.startswith(b"From "):
                        yield _unescape(part)
                del buf[:start]
                if len(buf) > MAX_MESSAGE_BYTES and not oversized:
                    # one huge message: drop it up to the next separator
                    # (keep a few bytes: a separator may straddle chunks)
                    oversized = True
                    self.skipped += 1
                    del buf[:-8]
                elif oversized and len(buf) > 64:
                    del buf[:-8]
        except requests.RequestException:
            raise LoreError(f"{self.what}: connection broke while reading the answer") from None
        finally:
            self.resp.close()
        if dec and not dec.eof:
            raise LoreError(f"{self.what}: truncated gzip data")
        if buf.startswith(b"From ") and not oversized:
            yield _unescape(bytes(buf))


_FROM_ESC = re.compile(rb"^>(>*From )", re.M)
_FROM_QUOTE = re.compile(rb"^(>*From )", re.M)


def fetch_raw(inbox: str, msgid: str, policy: HttpPolicy, session=None) -> bytes | None:
    """One message by its Message-ID (None: the server does not have it)."""
    url = inbox + urllib.parse.quote(msgid, safe="@+=!$&*,;:~") + "/raw"
    resp = fetch.http_get(url, policy, session)
    try:
        if resp.status_code in (404, 410):
            return None
        if resp.status_code != 200:
            raise LoreError(f"{inbox}: HTTP {resp.status_code} for <{msgid}>")
        body = resp.raw.read(MAX_MESSAGE_BYTES + 1, decode_content=True)
    except requests.RequestException:
        raise LoreError(f"{inbox}: connection broke while reading <{msgid}>") from None
    finally:
        resp.close()
    if len(body) > MAX_MESSAGE_BYTES:
        return None
    return body


def _unescape(part: bytes) -> bytes:
    """Drop the mbox From line, undo one level of mboxrd quoting."""
    nl = part.find(b"\n")
    body = part[nl + 1:] if nl >= 0 else b""
    return _FROM_ESC.sub(rb"\1", body)


# ---------------------------------------------------------------------------
# the watcher
# ---------------------------------------------------------------------------

class Interrupted(Exception):
    """A signal arrived during a poll."""


class Stopper:
    """SIGTERM/SIGINT set a flag: the series in hand is finished, then exit."""

    def __init__(self):
        self.event = threading.Event()
        self.signal: int | None = None

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.signal = signum
        self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    def sleep(self, seconds: float) -> None:
        self.event.wait(seconds)


@dataclass
class PassReport:
    new_messages: int = 0
    reviewed: int = 0
    failed_lists: list[str] = field(default_factory=list)
    failed_reviews: int = 0
    waiting: int = 0


class Watcher:
    def __init__(self, opts: WatchOptions, stopper: Stopper | None = None):
        from reviewbot.watch.state import State
        self.opts = opts
        self.stop = stopper or Stopper()
        self.state = State(opts.state)
        self.session = requests.Session()
        self.echo = opts.echo or (lambda s: None)

    def close(self):
        self.state.close()
        self.session.close()

    # -- polling -------------------------------------------------------------

    def poll(self, t: Target) -> int:
        """Read new messages of one watch into the state.  Raises
        ReviewbotError (one line) when the list fails."""
        since = self.opts.since
        if self.opts.since_relative and self.opts.since_spec:
            since = parse_since(self.opts.since_spec)   # '7d': the 7 days before this poll
        query = t.search(since)
        self.state.poll_started(t.name, t.inbox, query, since)
        self.state.poll_incomplete(t.name)
        new = 0
        offset = 0
        in_poll: set[str] = set()
        now = time.time()
        while True:
            params = {"q": query, "x": "m"}
            if offset:
                params["o"] = str(offset)
            resp = fetch.http_get(t.inbox, self.opts.policy, self.session, params=params, method="POST")
            if resp.status_code == 404:
                text = resp.text[:200] if resp.headers.get("Content-Type", "").startswith("text/plain") else ""
                resp.close()
                if "No results" in text:
                    break
                raise SourceError(f"{t.inbox}: no such inbox (HTTP 404)")
            if resp.status_code != 200:
                resp.close()
                raise LoreError(f"{t.inbox}: HTTP {resp.status_code} for the search {query!r}")
            count, repeated, added = self._read(t, MboxStream(resp, t.inbox), in_poll, now)
            new += added
            if repeated or count == 0 or count % PAGE_HINT:
                break
            offset += count        # maybe a capped page: ask for the next one
        return new

    def _read(self, t: Target, stream: MboxStream, in_poll: set[str], now: float):
        """Read one answer to its end (the order of a search answer is only
        roughly by arrival: known messages do not mean the rest is known)."""
        count = new = 0
        batch: list[Classified] = []
        repeated = False

        def flush() -> None:
            nonlocal new
            known = self.state.seen_many(t.name, [c.msgid for c in batch])
            fresh = [c for c in batch if c.msgid not in known]
            if fresh:
                new += self.state.ingest(t.name, t.inbox, fresh)
            batch.clear()

        for raw in stream:
            if self.stop.stopped:       # SIGTERM: keep what was read, leave the poll incomplete
                if batch:
                    flush()
                stream.resp.close()
                raise Interrupted()
            c = classify(raw, now)
            if c is None:
                continue
            if c.msgid in in_poll:
                if count == 0:
                    repeated = True     # the server ignored o=: we have it all
                    break
                continue
            in_poll.add(c.msgid)
            count += 1
            batch.append(c)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        if repeated:
            stream.resp.close()
        if stream.skipped:
            self.echo(f"{t.name}: skipped {stream.skipped} message(s) larger than "
                      f"{MAX_MESSAGE_BYTES >> 20} MiB")
        return count, repeated, new

    # -- choosing and reviewing ----------------------------------------------

    def due(self) -> tuple[list, int]:
        """Pending series ready for review: complete, or --grace hours after
        the watcher first saw their newest part (not after its Date: old mail
        arriving late, or split across polls, must not be reviewed before
        its other parts had a chance to come).  Each revision is reviewed,
        older ones first."""
        now = time.time()
        grace = self.opts.grace_hours * 3600
        ready, waiting = [], 0
        for s in self.state.series(("pending",)):
            arrived = s.arrived if s.arrived is not None else s.last_date
            if s.complete or now - arrived >= grace:
                ready.append(s)
            else:
                waiting += 1
        ready.sort(key=lambda s: (s.version, s.last_date, s.key))
        return ready, waiting

    def outbox_name(self, s) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", s.subject.lower()).strip("-")[:48].strip("-") or "series"
        h = hashlib.sha256(s.key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return f"{slug}-v{s.version}-{h}"

    def review_series(self, s) -> bool:
        """Review one series into the outbox.  True when done (or already
        done), False when it failed this time."""
        from reviewbot.reply import outbox
        from reviewbot import review  # heavy: only when there is work
        name = self.state.record_intent(s.key, self.outbox_name(s))
        json_path = os.path.join(self.opts.outbox, name + ".json")
        mbox_path = os.path.join(self.opts.outbox, name + ".mbox")
        if os.path.exists(json_path):
            # Written by a run that died before marking it done.
            try:
                with open(json_path, encoding="utf-8") as fh:
                    data = json.load(fh)
                findings = _findings_of(data)
                ser = data.get("series") or {}
                self.state.mark_done(s.key, s.lineage, int(ser.get("version") or s.version), ser.get("message_id"),
                                     findings, len(data.get("replies") or []))
                self.echo(f"{name}: finished by an earlier run; marked done")
                return True
            except (OSError, ValueError):
                pass        # damaged: review again, overwriting it atomically
        try:
            data = self.series_mbox(s)
            ropts = review.Options(lore_url=self.opts.lore_url, tree=self.opts.tree, reviewer=self.opts.reviewer,
                                   min_confidence=self.opts.min_confidence, policy=self.opts.policy)
            res = review.review_mbox(data, ropts, want_msgid=s.anchor)
        except LoreError as exc:
            # the server's trouble, not the series': retry next pass
            self.state.set_series_state(s.key, "pending", str(exc))
            self.echo(f"error: {s.subject[:60] or s.anchor!r}: {exc}; will retry")
            return False
        except ReviewbotError as exc:
            return self._failed(s, str(exc))
        except Exception as exc:     # a bug on hostile mail must not stop the watch
            return self._failed(s, f"internal error: {exc.__class__.__name__}: {str(exc)[:200]}")
        if res.series is None:
            self.state.set_series_state(s.key, "skipped", "no patch in the series")
            self.state.drop_intent(s.key)
            self.echo(f"{s.subject or s.anchor}: no patch in the series; skipped")
            return True
        twin = self.state.done_review_of(res.series.message_id, res.series.version, s.key)
        if twin is not None:
            # belt and braces: this revision already has its review
            self.state.set_series_state(s.key, "skipped", f"v{res.series.version} <{res.series.message_id}> "
                                        f"already reviewed in {twin['name']}")
            self.state.drop_intent(s.key)
            self.echo(f"{s.subject or s.anchor}: already reviewed in {twin['name']}; skipped")
            return True
        if s.missing and not any("missing" in n for n in res.notes):
            shown = ", ".join(f"{i}/{s.total}" for i in s.missing[:10])
            res.notes.append(f"waited {self.opts.grace_hours:g}h for patch(es) {shown}; reviewed what arrived")
        prev = self.state.previous_review(s.lineage, s.version, s.key)
        if prev is not None:
            since_previous(res, prev, self.opts.reviewer)
        data = review.to_json(res)
        if res.replies:
            outbox.atomic_write(mbox_path, outbox.mbox_bytes(res.replies))
        outbox.atomic_write(json_path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        # what is done is what the review looked at: its root and version
        self.state.mark_done(s.key, s.lineage, res.series.version, res.series.message_id, _findings_of(data),
                             len(res.replies))
        what = f"{len(res.replies)} repl{'y' if len(res.replies) == 1 else 'ies'}"
        self.echo(f"reviewed v{s.version} {s.subject[:60]!r}: {what} -> {json_path}")
        return True

    def series_mbox(self, s) -> bytes:
        """The series as the watcher found it: its parts' mail as polled, in
        order (a part polled by an older reviewbot, which kept no mail, is
        fetched by its Message-ID), as an mboxrd."""
        out = bytearray()
        for _idx, msgid, raw in self.state.parts_mail(s.key):
            if raw is None:
                raw = fetch_raw(s.inbox, msgid, self.opts.policy, self.session)
                if raw is None:
                    continue
            out += b"From mboxrd@z Thu Jan  1 00:00:00 1970\n"
            out += _FROM_QUOTE.sub(rb">\1", raw.replace(b"\r\n", b"\n"))
            if not raw.endswith(b"\n"):
                out += b"\n"
            out += b"\n"
        if not out:
            raise ReviewbotError("none of the series' messages could be read")
        return bytes(out)

    def _failed(self, s, error: str) -> bool:
        final = s.attempts + 1 >= MAX_ATTEMPTS
        self.state.set_series_state(s.key, "failed" if final else "pending", error, attempt=True)
        if final:
            self.state.drop_intent(s.key)
        self.echo(f"error: {s.subject[:60] or s.anchor!r}: {error}"
                  + ("; gave up" if final else "; will retry"))
        return False

    # -- a pass ----------------------------------------------------------------

    def run_pass(self) -> PassReport:
        rep = PassReport()
        for t in self.opts.targets:
            if self.stop.stopped:
                return rep
            try:
                n = self.poll(t)
            except Interrupted:
                return rep
            except ReviewbotError as exc:
                self.state.poll_finished(t.name, str(exc))
                rep.failed_lists.append(t.name)
                self.echo(f"error: {t.name}: {exc}")
                continue
            except Exception as exc:
                msg = f"internal error: {exc.__class__.__name__}: {str(exc)[:200]}"
                self.state.poll_finished(t.name, msg)
                rep.failed_lists.append(t.name)
                self.echo(f"error: {t.name}: {msg}")
                continue
            self.state.poll_finished(t.name, None)
            rep.new_messages += n
            if n:
                self.echo(f"{t.name}: {n} new message(s)")
        # Intents left by a run that died: finish them first.
        pending = {s.key: s for s in self.state.series(("pending",))}
        tried = set()
        for it in self.state.intents():
            if self.stop.stopped:
                return rep
            s = pending.get(it["series_key"])
            if s is not None:
                tried.add(s.key)
                if self.review_series(s):
                    rep.reviewed += 1
                else:
                    rep.failed_reviews += 1
        ready, rep.waiting = self.due()
        for s in ready:
            if self.stop.stopped:
                break
            if s.key in tried:
                continue
            if self.review_series(s):
                rep.reviewed += 1
            else:
                rep.failed_reviews += 1
        return rep

    def clean_outbox(self) -> None:
        """Remove temporary files a killed run left (we hold the lock)."""
        try:
            names = os.listdir(self.opts.outbox)
        except OSError:
            return
        for n in names:
            if n.startswith(".tmp-") and n.endswith(".part"):
                try:
                    os.unlink(os.path.join(self.opts.outbox, n))
                except OSError:
                    pass

    def run(self) -> int:
        """One pass (--once) or a loop (--interval).  Exit code: 0, or 1 when
        a list or a review failed in the last pass."""
        self.clean_outbox()
        while True:
            rep = self.run_pass()
            self.echo(f"pass done: {rep.new_messages} new message(s), {rep.reviewed} reviewed, "
                      f"{rep.waiting} waiting" + (f", {len(rep.failed_lists)} list(s) failed" if rep.failed_lists
                                                   else ""))
            if self.opts.interval is None or self.stop.stopped:
                break
            self.stop.sleep(self.opts.interval)
            if self.stop.stopped:
                break
        return 1 if (rep.failed_lists or rep.failed_reviews) else 0


def _findings_of(data: dict) -> list[dict]:
    out = []
    for f in data.get("series_findings") or []:
        out.append(f)
    for p in data.get("patches") or []:
        out.extend(p.get("findings") or [])
    return [{k: f.get(k) for k in ("rule", "name", "path", "message")} for f in out]


def _key(f: dict) -> tuple:
    return (f.get("rule"), f.get("path"), f.get("message"))


def since_previous(res, prev: dict, reviewer) -> None:
    """Note in the result (and in its first reply) what became of the
    findings of the previous revision."""
    from reviewbot.reply import render
    pv = prev["version"]
    old = {_key(f): f for f in prev["findings"]}
    now = {}
    for f in list(res.series_findings) + [f for p in res.patches for f in p.findings]:
        now.setdefault((f.rule, f.path, f.message), f)
    gone = [old[k] for k in old if k not in now]
    kept = [old[k] for k in old if k in now]
    new = [k for k in now if k not in old]
    note = (f"since v{pv} (<{prev['message_id']}>, outbox {prev['name']}): "
            f"{len(gone)} finding(s) resolved, {len(kept)} still there, {len(new)} new")
    if gone:
        note += "; resolved: " + "; ".join(f"{f['rule']} {f['path'] or 'commit message'}" for f in gone[:10])
    res.notes.append(note)
    if not gone and not kept:
        return
    lines = []
    for f in gone[:5]:
        where = f" on {f['path']}" if f.get("path") else ""
        lines.append(f"the {f['name']} question{where} is resolved")
    for f in kept[:5]:
        where = f" on {f['path']}" if f.get("path") else ""
        lines.append(f"the {f['name']} question{where} is still open")
    para = render.wrap(f"Since v{pv}: " + "; ".join(lines) + ".")
    if not res.replies:
        if not gone:
            return
        ser = res.series
        res.replies.append(render.cover_reply(ser, [], reviewer))
        first = res.replies[0]
        # cover_reply quotes the top of the cover; say the news under it
        first.body = first.body.replace("\n-- \n", "\n" + para + "\n\n-- \n", 1)
        return
    first = res.replies[0]
    m = re.match(r"Hi [^\n]*,\n\n", first.body)
    at = m.end() if m else 0
    first.body = first.body[:at] + para + "\n\n" + first.body[at:]
