"""Watch state: an SQLite database (WAL) holding the messages seen per
watch, the series and which of their parts arrived (with the parts' mail,
until the series is reviewed), reviews (intent, then done) and the last
poll of every watch.

Exactly-once reviews across crashes rest on three facts: a review is
recorded as an intent (with its deterministic outbox name) before any file
is written; outbox files are written atomically, the JSON last; and the
review is marked done in one transaction after both are on disk.  A run
that finds an intent redoes it unless NAME.json is already there.

What a review looks at is the series' own parts as polled (kept in the
`mail` table), never whatever the thread holds at review time, so redoing
an intent gives the same review; and what is marked done is the series the
review reported (its Message-ID and version), checked against the reviews
already done so that one revision never gets a second review.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass

from reviewbot.errors import ReviewbotError

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    watch TEXT NOT NULL,
    msgid TEXT NOT NULL,
    kind TEXT NOT NULL,             -- patch | cover | reply | pull | other
    series_key TEXT,
    PRIMARY KEY (watch, msgid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    key TEXT PRIMARY KEY,           -- thread root | author | version
    inbox TEXT NOT NULL,            -- where to fetch the thread
    watch TEXT NOT NULL,
    anchor TEXT NOT NULL,           -- Message-ID to fetch the thread by
    lineage TEXT,                   -- author + subject: links revisions
    version INTEGER NOT NULL,
    total INTEGER NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    last_date REAL NOT NULL,        -- newest Date: of its parts (clamped to arrival)
    first_seen REAL NOT NULL,
    arrived REAL,                   -- when the watcher first saw its newest part
    state TEXT NOT NULL DEFAULT 'pending',  -- pending|reviewed|failed|skipped (superseded: schema 1)
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state);
CREATE INDEX IF NOT EXISTS series_lineage ON series(lineage);
CREATE TABLE IF NOT EXISTS parts (
    series_key TEXT NOT NULL,
    idx INTEGER NOT NULL,           -- 0: cover letter
    msgid TEXT NOT NULL,
    PRIMARY KEY (series_key, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mail (
    msgid TEXT PRIMARY KEY,         -- a part of a pending series, as polled
    raw BLOB NOT NULL               -- zlib-compressed message
);
CREATE TABLE IF NOT EXISTS reviews (
    series_key TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,      -- outbox file stem
    state TEXT NOT NULL,            -- intent | done
    lineage TEXT,
    version INTEGER,
    message_id TEXT,
    findings TEXT,                  -- JSON list of findings (for the next revision)
    replies INTEGER,
    started REAL NOT NULL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS reviews_reviewed ON reviews(message_id, version);
CREATE TABLE IF NOT EXISTS polls (
    watch TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    query TEXT NOT NULL,
    last_poll REAL,
    last_ok REAL,
    last_error TEXT,
    complete INTEGER NOT NULL DEFAULT 0,   -- last scan ran to its end
    messages INTEGER NOT NULL DEFAULT 0,
    since TEXT
);
"""


@dataclass
class SeriesRow:
    key: str
    inbox: str
    watch: str
    anchor: str
    lineage: str | None
    version: int
    total: int
    subject: str
    last_date: float
    first_seen: float
    arrived: float | None
    state: str
    attempts: int
    error: str | None
    parts: set[int]
    part1: str | None = None        # Message-ID of patch 1, when in

    @property
    def complete(self) -> bool:
        need = set(range(1, self.total + 1))
        # A cover is expected over several patches, and over a lone 1/1
        # that answers another message (the thread's root: its 0/1).
        if self.total > 1 or (self.part1 is not None and not self.key.startswith(self.part1 + "|")):
            need.add(0)
        return need <= self.parts

    @property
    def missing(self) -> list[int]:
        return sorted(set(range(1, self.total + 1)) - self.parts)


class State:
    def __init__(self, path: str):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise ReviewbotError(f"--state {path}: directory {d} does not exist")
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            with self.tx():
                row = self.db.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone() and \
                    self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row and int(row[0]) > SCHEMA_VERSION:
                    raise ReviewbotError(f"--state {path}: written by a newer reviewbot (schema {row[0]})")
                if row and int(row[0]) < 2:
                    # schema 1: no arrival time (counted from the last update)
                    self.db.execute("ALTER TABLE series ADD COLUMN arrived REAL")
                    self.db.execute("UPDATE series SET arrived=updated")
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self.db.execute(stmt)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            raise ReviewbotError(f"--state {path}: not a usable SQLite database ({exc})") from None

    def close(self) -> None:
        self.db.close()

    # -- transactions ------------------------------------------------------

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *a):
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")

    def tx(self):
        return State._Tx(self.db)

    # -- polls -------------------------------------------------------------

    def poll_row(self, watch: str) -> dict | None:
        cur = self.db.execute("SELECT watch, url, query, last_poll, last_ok, last_error, complete, messages, since "
                              "FROM polls WHERE watch=?", (watch,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cur.description], row))

    def poll_started(self, watch: str, url: str, query: str, since: str) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT INTO polls (watch, url, query, last_poll, since) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(watch) DO UPDATE SET url=excluded.url, query=excluded.query, "
                       "last_poll=excluded.last_poll, since=excluded.since",
                       (watch, url, query, now, since))

    def poll_finished(self, watch: str, error: str | None) -> None:
        now = time.time()
        with self.tx() as db:
            if error is None:
                db.execute("UPDATE polls SET last_ok=?, last_error=NULL, complete=1 WHERE watch=?", (now, watch))
            else:
                db.execute("UPDATE polls SET last_error=? WHERE watch=?", (error, watch))

    def poll_incomplete(self, watch: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE polls SET complete=0 WHERE watch=?", (watch,))

    # -- messages and series -----------------------------------------------

    def seen_many(self, watch: str, msgids: list[str]) -> set[str]:
        out: set[str] = set()
        for i in range(0, len(msgids), 500):
            chunk = msgids[i:i + 500]
            q = "SELECT msgid FROM seen WHERE watch=? AND msgid IN (%s)" % ",".join("?" * len(chunk))
            out.update(r[0] for r in self.db.execute(q, [watch, *chunk]))
        return out

    def ingest(self, watch: str, inbox: str, items: list) -> int:
        """Record a batch of classified messages (watch.Classified) in one
        transaction.  Returns how many were new to this watch."""
        now = time.time()
        new = 0
        with self.tx() as db:
            for it in items:
                cur = db.execute("INSERT OR IGNORE INTO seen (watch, msgid, kind, series_key) VALUES (?, ?, ?, ?)",
                                 (watch, it.msgid, it.kind, it.series_key))
                if cur.rowcount:
                    new += 1
                    db.execute("UPDATE polls SET messages=messages+1 WHERE watch=?", (watch,))
                if it.series_key is None:
                    continue
                db.execute(
                    "INSERT INTO series (key, inbox, watch, anchor, lineage, version, total, subject, last_date, "
                    "first_seen, arrived, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO NOTHING",
                    (it.series_key, inbox, watch, it.anchor, it.lineage, it.version, it.total,
                     it.subject if it.defines_subject else "", it.date, now, now, now))
                got = db.execute("INSERT OR IGNORE INTO parts (series_key, idx, msgid) VALUES (?, ?, ?)",
                                 (it.series_key, it.index, it.msgid))
                if not got.rowcount:
                    continue
                if it.raw is not None and db.execute("SELECT state FROM series WHERE key=?",
                                                     (it.series_key,)).fetchone()[0] == "pending":
                    # (a part arriving after its series' review changes nothing)
                    db.execute("INSERT OR REPLACE INTO mail (msgid, raw) VALUES (?, ?)",
                               (it.msgid, zlib.compress(it.raw, 6)))
                # a cover saying 0/5 over patches saying 1/4: the series
                # expects the most any of its parts says (whatever the order)
                db.execute("UPDATE series SET last_date=MAX(last_date, ?), total=MAX(total, ?), arrived=?, "
                           "updated=? WHERE key=?", (it.date, it.total, now, now, it.series_key))
                if it.defines_subject and (it.index == 0 or not db.execute(
                        "SELECT 1 FROM parts WHERE series_key=? AND idx=0", (it.series_key,)).fetchone()):
                    # The cover (or patch 1 while there is none) names the
                    # series and is the Message-ID to fetch the thread by.
                    db.execute("UPDATE series SET subject=?, lineage=?, anchor=? WHERE key=?",
                               (it.subject, it.lineage, it.msgid, it.series_key))
        return new

    def series(self, states: tuple[str, ...] = ("pending",)) -> list[SeriesRow]:
        q = ("SELECT key, inbox, watch, anchor, lineage, version, total, subject, last_date, first_seen, arrived, "
             "state, attempts, error FROM series WHERE state IN (%s) ORDER BY last_date, key" % ",".join("?" * len(states)))
        rows = self.db.execute(q, states).fetchall()
        out = []
        for r in rows:
            parts = dict(self.db.execute("SELECT idx, msgid FROM parts WHERE series_key=?", (r[0],)).fetchall())
            out.append(SeriesRow(*r, parts=set(parts), part1=parts.get(1)))
        return out

    def parts_mail(self, key: str) -> list[tuple[int, str, bytes | None]]:
        """The parts of a series in order: (index, Message-ID, raw mail or
        None when not kept, e.g. polled by a schema-1 reviewbot)."""
        rows = self.db.execute("SELECT p.idx, p.msgid, m.raw FROM parts p LEFT JOIN mail m ON m.msgid=p.msgid "
                               "WHERE p.series_key=? ORDER BY p.idx", (key,)).fetchall()
        return [(i, mid, zlib.decompress(raw) if raw is not None else None) for i, mid, raw in rows]

    def done_review_of(self, message_id: str | None, version: int, key: str) -> dict | None:
        """A review already done of this series revision under another key."""
        if not message_id:
            return None
        cur = self.db.execute("SELECT series_key, name FROM reviews WHERE state='done' AND message_id=? "
                              "AND version=? AND series_key!=? LIMIT 1", (message_id, version, key))
        row = cur.fetchone()
        return None if row is None else {"series_key": row[0], "name": row[1]}

    def _drop_mail(self, db, key: str) -> None:
        db.execute("DELETE FROM mail WHERE msgid IN (SELECT msgid FROM parts WHERE series_key=?)", (key,))

    def set_series_state(self, key: str, state: str, error: str | None = None, attempt: bool = False) -> None:
        with self.tx() as db:
            db.execute("UPDATE series SET state=?, error=?, attempts=attempts+?, updated=? WHERE key=?",
                       (state, error, 1 if attempt else 0, time.time(), key))
            if state != "pending":
                self._drop_mail(db, key)

    # -- reviews -----------------------------------------------------------

    def review_row(self, key: str) -> dict | None:
        cur = self.db.execute("SELECT series_key, name, state, lineage, version, message_id, findings, replies, "
                              "started, finished FROM reviews WHERE series_key=?", (key,))
        row = cur.fetchone()
        return None if row is None else dict(zip([c[0] for c in cur.description], row))

    def record_intent(self, key: str, name: str) -> str:
        """Record that *key* is about to be reviewed into outbox NAME;
        returns the name on record (an earlier intent keeps its name)."""
        with self.tx() as db:
            row = db.execute("SELECT name FROM reviews WHERE series_key=?", (key,)).fetchone()
            if row:
                return row[0]
            db.execute("INSERT INTO reviews (series_key, name, state, started) VALUES (?, ?, 'intent', ?)",
                       (key, name, time.time()))
            return name

    def drop_intent(self, key: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM reviews WHERE series_key=? AND state='intent'", (key,))

    def mark_done(self, key: str, lineage: str | None, version: int, message_id: str | None,
                  findings: list[dict], replies: int) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute("UPDATE reviews SET state='done', lineage=?, version=?, message_id=?, findings=?, replies=?, "
                       "finished=? WHERE series_key=?",
                       (lineage, version, message_id, json.dumps(findings), replies, now, key))
            db.execute("UPDATE series SET state='reviewed', error=NULL, updated=? WHERE key=?", (now, key))
            self._drop_mail(db, key)

    def intents(self) -> list[dict]:
        cur = self.db.execute("SELECT series_key, name FROM reviews WHERE state='intent' ORDER BY started")
        return [{"series_key": r[0], "name": r[1]} for r in cur]

    def previous_review(self, lineage: str | None, version: int, key: str) -> dict | None:
        if not lineage:
            return None
        cur = self.db.execute("SELECT series_key, name, version, message_id, findings FROM reviews "
                              "WHERE state='done' AND lineage=? AND version<? AND series_key!=? "
                              "ORDER BY version DESC, finished DESC LIMIT 1", (lineage, version, key))
        row = cur.fetchone()
        if row is None:
            return None
        d = dict(zip([c[0] for c in cur.description], row))
        d["findings"] = json.loads(d["findings"] or "[]")
        return d

    # -- status ------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall())

    def polls(self) -> list[dict]:
        cur = self.db.execute("SELECT watch, url, query, last_poll, last_ok, last_error, complete, messages "
                              "FROM polls ORDER BY watch")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur]

    def reviewed(self, limit: int = 20) -> list[dict]:
        cur = self.db.execute("SELECT r.name, r.version, r.replies, r.finished, s.subject FROM reviews r "
                              "JOIN series s ON s.key=r.series_key WHERE r.state='done' "
                              "ORDER BY r.finished DESC LIMIT ?", (limit,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur]
