"""lore misbehaving: a real HTTP server on loopback (tests/support/badhttp.py)
answers `reviewbot review` with errors, stalls, garbage and bombs.

What a user must see: retries with backoff where a retry can help (429,
5xx, timeouts, refused connections), Retry-After honoured, then either a
review or one clear `reviewbot: ...` line and a non-zero exit; never a
traceback, never a hang, never unbounded memory.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from support.badhttp import (BadHTTPServer, Drip, Garbage, Hang, Mbox, Raw, Redirect, StallBody, Status,
                             Stream, Truncated, refused_url)

HERE = Path(__file__).resolve().parent
SEED = (HERE / "data" / "seeds" / "seed004.mbox").read_bytes()
MSGID = "20191022172203.GA2130@example.org"
REVIEWBOT = shutil.which("reviewbot")


@pytest.fixture
def srv():
    with BadHTTPServer() as s:
        yield s


def run(lore_url: str, *settings: str, source: str = MSGID, timeout: float = 90, tmp: Path | None = None):
    """Run the real `reviewbot` executable; return (rc, stdout, stderr, seconds)."""
    args = [REVIEWBOT]
    for s in settings:
        args += ["-c", s]
    args += ["review", source, "--lore-url", lore_url, "--from", "R <r@example.org>"]
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"reviewbot hung for {timeout}s on {lore_url}")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0


def run_measured(lore_url: str, *settings: str, timeout: float = 90):
    """Like run(), also returning the child's peak RSS (KiB) via wait4."""
    args = [REVIEWBOT, *sum((["-c", s] for s in settings), []), "review", MSGID, "--lore-url", lore_url]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull})
    deadline = t0 + timeout
    out = err = b""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    open_streams = 2
    while open_streams and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
            elif key.fileobj is proc.stdout:
                out += data
            else:
                err += data
    if open_streams:
        proc.kill()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert not open_streams, f"reviewbot hung for {timeout}s"
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), ru.ru_maxrss


def one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc != 0, "a failed fetch must not exit 0"
    assert rc != 70, f"internal error: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("reviewbot: ") and "Traceback" not in err
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def test_success_control(srv):
    """The server itself works: a thread served as t.mbox.gz is reviewed."""
    srv.script(Mbox(SEED))
    rc, out, err, _ = run(srv.url)
    assert rc == 0, err
    assert "xfrm" in out
    assert len(srv.requests) == 1
    assert srv.requests[0][1] == f"/all/{MSGID}/t.mbox.gz"


@pytest.mark.parametrize("code", [404, 410])
def test_not_found_is_not_retried(srv, code):
    srv.script(Status(code, b"<html>gone</html>"))
    rc, out, err, _ = run(srv.url, "retries=3")
    one_line_error(rc, err, "not found", MSGID)
    assert len(srv.requests) == 1, "a 404/410 does not get better by asking again"


def test_429_retry_after_is_honoured(srv):
    srv.script(Status(429, headers={"Retry-After": "2"}), Mbox(SEED))
    rc, out, err, _ = run(srv.url, "retries=2", "timeout=5")
    assert rc == 0, err
    assert len(srv.requests) == 2
    gap = srv.requests[1][0] - srv.requests[0][0]
    assert gap >= 1.9, f"asked again after {gap:.2f}s despite Retry-After: 2"


@pytest.mark.parametrize("code", [500, 502, 503])
def test_5xx_then_success(srv, code):
    srv.script(Status(code), Status(code), Mbox(SEED))
    rc, out, err, _ = run(srv.url, "retries=3", "timeout=5")
    assert rc == 0, err
    assert "xfrm" in out
    assert len(srv.requests) == 3
    gaps = [b[0] - a[0] for a, b in zip(srv.requests, srv.requests[1:])]
    assert all(g >= 0.4 for g in gaps), f"no backoff between retries: {gaps}"


def test_5xx_persistent(srv):
    srv.script(Status(503, headers={"Retry-After": "0"}))
    rc, out, err, secs = run(srv.url, "retries=2", "timeout=5")
    one_line_error(rc, err, "HTTP 503", "3 tries")
    assert len(srv.requests) == 3
    assert out == ""


def test_429_persistent(srv):
    srv.script(Status(429, headers={"Retry-After": "1"}))
    rc, out, err, secs = run(srv.url, "retries=1", "timeout=5")
    one_line_error(rc, err, "HTTP 429")
    assert len(srv.requests) == 2


def test_connection_refused():
    url = refused_url()
    rc, out, err, secs = run(url, "retries=1", "timeout=2")
    one_line_error(rc, err, "connection refused", "2 tries")
    assert secs < 30


def test_server_accepts_and_never_answers(srv):
    srv.script(Hang())
    rc, out, err, secs = run(srv.url, "retries=1", "timeout=1")
    one_line_error(rc, err, "timed out")
    assert len(srv.requests) == 2
    assert secs < 20


def test_body_stalls_midway(srv):
    data = gzip.compress(SEED)
    srv.script(StallBody(data[: len(data) // 2], len(data)))
    rc, out, err, secs = run(srv.url, "retries=1", "timeout=1")
    one_line_error(rc, err)
    assert secs < 20


def test_body_drips_forever(srv):
    """One byte every 0.2 s never trips a per-read timeout; the answer must
    still be given up on in bounded time."""
    srv.script(Drip(gzip.compress(SEED), 0.2))
    rc, out, err, secs = run(srv.url, "retries=1", "timeout=1", timeout=60)
    one_line_error(rc, err, "too slow")
    assert secs < 30


def test_truncated_gzip(srv):
    data = gzip.compress(SEED)
    srv.script(Raw(data[: len(data) // 2], {"Content-Type": "application/gzip"}))
    rc, out, err, _ = run(srv.url)
    one_line_error(rc, err, "truncated")


def test_corrupt_gzip(srv):
    data = bytearray(gzip.compress(SEED))
    data[30:60] = b"\xff" * 30
    srv.script(Raw(bytes(data)))
    rc, out, err, _ = run(srv.url)
    one_line_error(rc, err, "gzip")


def test_connection_closed_before_content_length(srv):
    data = gzip.compress(SEED)
    srv.script(Truncated(data[:500], len(data)))
    rc, out, err, _ = run(srv.url, "retries=1", "timeout=2")
    one_line_error(rc, err)


def _gzip_bomb(size: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"From bomb@z Thu Jan  1 00:00:00 1970\n" + b"\0" * (1 << 20)
    parts = [comp.compress(block)]
    zero = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        parts.append(comp.compress(zero))
    parts.append(comp.flush())
    return b"".join(parts)


def test_gzip_bomb(srv):
    bomb = _gzip_bomb(1 << 30)     # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 2 << 20
    srv.script(Raw(bomb, {"Content-Type": "application/gzip"}))
    rc, out, err, maxrss = run_measured(srv.url)
    one_line_error(rc, err, "decompresses to more than")
    assert maxrss < 600 * 1024, f"peak RSS {maxrss // 1024} MiB on a gzip bomb"


def test_gzip_bomb_as_content_encoding(srv):
    """The same bomb declared as Content-Encoding: the HTTP layer must not
    inflate it without a bound either."""
    bomb = _gzip_bomb(1 << 30)
    srv.script(Raw(bomb, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}))
    rc, out, err, maxrss = run_measured(srv.url)
    one_line_error(rc, err, "decompresses to more than")
    assert maxrss < 600 * 1024, f"peak RSS {maxrss // 1024} MiB"


def test_enormous_answer(srv):
    srv.script(Stream(b"\x1f\x8b" + b"x" * 65534, None))
    rc, out, err, maxrss = run_measured(srv.url, "timeout=10")
    one_line_error(rc, err, "larger than")
    assert maxrss < 600 * 1024


def test_html_instead_of_mbox(srv):
    srv.script(Raw(b"<!DOCTYPE html><html><body><h1>Bot check</h1>{{ 7*7 }}</body></html>",
                   {"Content-Type": "text/html"}))
    rc, out, err, _ = run(srv.url)
    one_line_error(rc, err, "not an mbox")


def test_gzipped_html_instead_of_mbox(srv):
    srv.script(Mbox(b"<html><body>Anubis says no</body></html>\n"))
    rc, out, err, _ = run(srv.url)
    one_line_error(rc, err, "not an mbox")


def test_not_http_at_all(srv):
    srv.script(Garbage(b"SSH-2.0-OpenSSH_9.0\r\n"))
    rc, out, err, secs = run(srv.url, "retries=1", "timeout=2")
    one_line_error(rc, err)
    assert len(srv.requests) == 2


def test_redirect_loop(srv):
    srv.script(Redirect("/all/loop/t.mbox.gz"))
    rc, out, err, _ = run(srv.url, "retries=1", "timeout=2")
    one_line_error(rc, err)
    assert len(srv.requests) < 100


def test_lore_url_source_also_retries(srv):
    """A lore URL on the command line goes through the same retries."""
    srv.script(Status(503), Mbox(SEED))
    rc, out, err, _ = run(srv.url, "retries=2", "timeout=5", source=f"{srv.url}netdev/{MSGID}/T/")
    assert rc == 0, err
    assert srv.requests[-1][1] == f"/netdev/{MSGID}/t.mbox.gz"


@pytest.mark.parametrize("msgid", ["../../etc/passwd@x", "a/b@c", "..@..", "x@y/../../z"])
def test_hostile_msgid_stays_one_path_segment(srv, msgid):
    """A Message-ID with '/' or '..' is quoted into one URL path segment (or
    refused): it never climbs out of the inbox."""
    srv.script(Status(404))
    rc, out, err, _ = run(srv.url, source=msgid)
    one_line_error(rc, err)
    for _, path in srv.requests:
        assert path.startswith("/all/") and path.endswith("/t.mbox.gz"), path
        seg = path[len("/all/"):-len("/t.mbox.gz")]
        assert "/" not in seg and seg not in ("..", "."), path


def test_bad_settings_are_one_line():
    for setting in ("timeout=abc", "retries=-x"):
        rc, out, err, _ = run("http://127.0.0.1:9/", setting)
        one_line_error(rc, err)
