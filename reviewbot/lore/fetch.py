"""Getting the thread: a Message-ID or lore URL from a public-inbox server,
an mbox file, or stdin.

We talk to public-inbox with requests rather than liblore's LoreNode because
the thread must keep every copy of a Message-ID (lists mangle copies and we
choose between them), and the gzip answer must be decompressed with a bound.
liblore's parsers are used for the mail itself.
"""
from __future__ import annotations

import os
import random
import re
import sys
import time
import urllib.parse
import zlib
from dataclasses import dataclass

import requests
import urllib3

from reviewbot.errors import LoreError, SourceError

MAX_INPUT_BYTES = 256 * 1024 * 1024       # mbox files and stdin
MAX_THREAD_BYTES = 64 * 1024 * 1024       # one decompressed thread
MAX_COMPRESSED_BYTES = 16 * 1024 * 1024
DEFAULT_LORE = "https://lore.kernel.org/"
USER_AGENT = "reviewbot/0.1 (+kernel patch review drafts)"

_MSGID_RE = re.compile(r"^<?[^<>\s@/]+@[^<>\s/]+>?$")
_URL_SUFFIXES = ("t.mbox.gz", "raw", "T", "t", "t.atom", "")


@dataclass
class Fetched:
    data: bytes            # mbox bytes
    msgid: str | None      # the Message-ID asked for, if any
    origin: str            # human description: file path, URL


@dataclass
class HttpPolicy:
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 1.0
    max_wait: float = 60.0


def parse_lore_url(url: str) -> tuple[str, str]:
    """Split a lore message URL into (inbox URL, Message-ID).

    https://lore.kernel.org/netdev/MSGID/T/ -> ("https://lore.kernel.org/netdev/", "MSGID")
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceError(f"not a lore URL: {url!r}")
    segs = [s for s in parts.path.split("/") if s]
    for i, seg in enumerate(segs):
        mid = urllib.parse.unquote(seg)
        if "@" in mid and i >= 1:
            rest = segs[i + 1:]
            if len(rest) > 1 or (rest and rest[0] not in _URL_SUFFIXES):
                raise SourceError(f"unrecognised lore URL form: {url!r}")
            inbox = f"{parts.scheme}://{parts.netloc}/" + "/".join(segs[:i]) + "/"
            return inbox, mid.strip("<>")
    raise SourceError(f"no Message-ID in lore URL: {url!r}")


def inbox_url(lore_url: str) -> str:
    """The inbox to look Message-IDs up in: a server URL means /all/."""
    lore_url = lore_url.strip()
    parts = urllib.parse.urlsplit(lore_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceError(f"--lore-url must be an http(s) URL, not {lore_url!r}")
    path = parts.path.strip("/")
    if not path:
        path = "all"
    return f"{parts.scheme}://{parts.netloc}/{path}/"


def looks_like_msgid(text: str) -> bool:
    return bool(_MSGID_RE.match(text.strip()))


def load_source(source: str, lore_url: str = DEFAULT_LORE, policy: HttpPolicy | None = None,
                stdin=None) -> Fetched:
    policy = policy or HttpPolicy()
    if source == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = _read_bounded(stream, MAX_INPUT_BYTES, "standard input")
        return Fetched(data, None, "standard input")
    if source.startswith(("http://", "https://")):
        inbox, msgid = parse_lore_url(source)
        return Fetched(fetch_thread(inbox, msgid, policy), msgid, source)
    if os.path.exists(source):
        if os.path.isdir(source):
            raise SourceError(f"{source}: is a directory, not an mbox file")
        try:
            with open(source, "rb") as fh:
                data = _read_bounded(fh, MAX_INPUT_BYTES, source)
        except OSError as exc:
            raise SourceError(f"{source}: {exc.strerror}") from None
        return Fetched(data, None, source)
    if looks_like_msgid(source):
        msgid = source.strip().strip("<>")
        inbox = inbox_url(lore_url)
        return Fetched(fetch_thread(inbox, msgid, policy), msgid, inbox + msgid)
    raise SourceError(f"{source!r} is not a file, a lore URL or a Message-ID")


def _read_bounded(stream, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise SourceError(f"{what}: larger than {limit // (1024 * 1024)} MiB")
    return data


def fetch_thread(inbox: str, msgid: str, policy: HttpPolicy) -> bytes:
    url = inbox + urllib.parse.quote(msgid, safe="@+=!$&*,;:~") + "/t.mbox.gz"
    resp = http_get(url, policy)
    if resp.status_code in (404, 410):
        raise SourceError(f"Message-ID <{msgid}> not found on {inbox}")
    if resp.status_code != 200:
        raise LoreError(f"{inbox}: HTTP {resp.status_code} for <{msgid}>")
    # A server dripping a byte at a time never trips the per-read timeout:
    # the whole answer must arrive within a bounded time too.
    body = _bounded_body(resp, MAX_COMPRESSED_BYTES, url, deadline=time.monotonic() + policy.timeout * 10)
    data = gunzip_bounded(body, MAX_THREAD_BYTES, url)
    if not data.lstrip().startswith(b"From "):
        raise LoreError(f"{inbox}: answer for <{msgid}> is not an mbox")
    return data


def http_get(url: str, policy: HttpPolicy, session: requests.Session | None = None,
             params: dict | None = None, method: str = "GET") -> requests.Response:
    """GET with retries: backoff with jitter on 429/5xx, timeouts and refused
    connections; Retry-After honoured up to policy.max_wait.  *method* "POST"
    is for public-inbox's search mbox download (`?q=...&x=m`), which the
    server only answers to POST."""
    sess = session or requests.Session()
    last = ""
    for attempt in range(policy.retries + 1):
        try:
            resp = sess.request(method, url, params=params, timeout=policy.timeout, stream=True,
                                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        except requests.Timeout:
            last = f"timed out after {policy.timeout:g}s"
        except requests.ConnectionError as exc:
            last = "connection failed" + (": connection refused" if "refused" in str(exc).lower() else "")
        except requests.RequestException as exc:
            raise LoreError(f"{_host(url)}: {exc.__class__.__name__}") from None
        else:
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                wait = _retry_after(resp.headers.get("Retry-After"), policy)
                resp.close()
                if attempt < policy.retries:
                    time.sleep(wait if wait is not None else _backoff(policy, attempt))
                    continue
                break
            return resp
        if attempt < policy.retries:
            time.sleep(_backoff(policy, attempt))
    raise LoreError(f"{_host(url)}: {last} (after {policy.retries + 1} tries)")


def _host(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def _backoff(policy: HttpPolicy, attempt: int) -> float:
    base = policy.backoff * (2 ** attempt)
    return min(policy.max_wait, base * (0.5 + random.random()))


def _retry_after(value: str | None, policy: HttpPolicy) -> float | None:
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        return None
    if secs < 0:
        return None
    return min(secs, policy.max_wait)


def _bounded_body(resp: requests.Response, limit: int, url: str, deadline: float | None = None) -> bytes:
    chunks = []
    total = 0
    started = time.monotonic()
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise LoreError(f"{_host(url)}: answer still incomplete after "
                                f"{time.monotonic() - started:.0f}s (server too slow)")
            # read1: one socket read at a time, so that the deadline is checked
            # between reads; raw bytes (never urllib3's unbounded decoding).
            chunk = resp.raw.read1(65536, decode_content=False)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise LoreError(f"{_host(url)}: answer larger than {limit // (1024 * 1024)} MiB")
            chunks.append(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        raise LoreError(f"{_host(url)}: connection broke while reading the answer") from None
    finally:
        resp.close()
    return b"".join(chunks)


def gunzip_bounded(data: bytes, limit: int, what: str = "answer") -> bytes:
    """Decompress gzip data, refusing to produce more than *limit* bytes.
    Data that is not gzip is returned as is (servers may send it plain)."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    buf = data
    try:
        while buf:
            out += dec.decompress(buf, limit + 1 - len(out))
            if len(out) > limit:
                raise LoreError(f"{what}: decompresses to more than {limit // (1024 * 1024)} MiB")
            buf = dec.unconsumed_tail
            if dec.eof:
                # Concatenated gzip members: start again on what is left.
                rest = dec.unused_data
                if rest.startswith(b"\x1f\x8b"):
                    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    buf = rest
                else:
                    break
    except zlib.error:
        raise LoreError(f"{what}: truncated or corrupt gzip data") from None
    if not dec.eof:
        raise LoreError(f"{what}: truncated gzip data")
    return bytes(out)
