"""A real HTTP server on 127.0.0.1 that misbehaves on purpose.

    with BadHTTPServer() as srv:
        srv.script(Status(503), Status(503), Mbox(data))   # one action per request
        url = srv.url                                        # http://127.0.0.1:PORT/
        ...
        srv.requests                                         # [(monotonic time, path), ...]

Each request takes the next action of the script; the last action repeats.
Actions:

  Status(code, body=b'', headers={})   a plain answer (404, 410, 429 + Retry-After, 5xx)
  Mbox(data, gzip=True)                200 with a t.mbox.gz (data gzipped unless gzip=False)
  Raw(body, headers={}, code=200)      200 (or code) with exactly these bytes
  Hang()                               accept, read the request, never answer
  StallBody(prefix, length)            headers promise `length` bytes; send prefix; stall
  Truncated(body, length)              headers promise `length` bytes; send body; close
  Drip(data, interval)                 send the body one byte every `interval` s, forever
  Stream(chunk, total)                 send `total` bytes of `chunk` repeated (None: forever)
  Garbage(data)                        not HTTP at all: write data, close
  Redirect(location)                   302 to location

``refused_url()`` gives a URL on which nothing listens (connection refused).
Nothing is mocked: clients connect over real TCP.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Status:
    code: int
    body: bytes = b''
    headers: dict = field(default_factory=dict)


@dataclass
class Mbox:
    data: bytes
    gzip: bool = True


@dataclass
class Raw:
    body: bytes
    headers: dict = field(default_factory=dict)
    code: int = 200


@dataclass
class Hang:
    pass


@dataclass
class StallBody:
    prefix: bytes
    length: int


@dataclass
class Truncated:
    body: bytes
    length: int


@dataclass
class Drip:
    data: bytes
    interval: float = 0.2


@dataclass
class Stream:
    chunk: bytes
    total: int | None = None


@dataclass
class Garbage:
    data: bytes


@dataclass
class Redirect:
    location: str


def refused_url() -> str:
    """A loopback URL whose port has nothing listening."""
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return f'http://127.0.0.1:{port}/'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server: '_Server'

    def log_message(self, *args) -> None:     # quiet
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        action = owner._next(self.path)
        try:
            self._act(action, owner._stop)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass
        self.close_connection = True

    def _send(self, code: int, body: bytes, headers: dict, length: int | None = None) -> None:
        self.send_response(code)
        hdrs = {'Content-Type': 'application/octet-stream', **headers}
        for k, v in hdrs.items():
            self.send_header(k, str(v))
        self.send_header('Content-Length', str(len(body) if length is None else length))
        self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _act(self, a, stop: threading.Event) -> None:
        if isinstance(a, Status):
            self._send(a.code, a.body, {'Content-Type': 'text/plain', **a.headers})
        elif isinstance(a, Mbox):
            body = gzip.compress(a.data) if a.gzip else a.data
            self._send(200, body, {'Content-Type': 'application/gzip' if a.gzip else 'text/plain'})
        elif isinstance(a, Raw):
            self._send(a.code, a.body, a.headers)
        elif isinstance(a, Hang):
            stop.wait(300)
        elif isinstance(a, StallBody):
            self._send(200, a.prefix, {'Content-Type': 'application/gzip'}, length=a.length)
            stop.wait(300)
        elif isinstance(a, Truncated):
            self._send(200, a.body, {'Content-Type': 'application/gzip'}, length=a.length)
        elif isinstance(a, Drip):
            self.send_response(200)
            self.send_header('Content-Type', 'application/gzip')
            self.send_header('Content-Length', str(10 ** 9))
            self.end_headers()
            self.wfile.flush()
            i = 0
            while not stop.is_set():
                self.wfile.write(a.data[i % len(a.data):i % len(a.data) + 1])
                self.wfile.flush()
                i += 1
                stop.wait(a.interval)
        elif isinstance(a, Stream):
            self.send_response(200)
            self.send_header('Content-Type', 'application/gzip')
            if a.total is not None:
                self.send_header('Content-Length', str(a.total))
            self.send_header('Connection', 'close')
            self.end_headers()
            sent = 0
            while not stop.is_set() and (a.total is None or sent < a.total):
                chunk = a.chunk if a.total is None else a.chunk[:a.total - sent]
                self.wfile.write(chunk)
                sent += len(chunk)
        elif isinstance(a, Garbage):
            self.wfile.write(a.data)
            self.wfile.flush()
        elif isinstance(a, Redirect):
            self._send(302, b'', {'Location': a.location})
        else:  # pragma: no cover - a test bug
            raise TypeError(f'unknown action {a!r}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: 'BadHTTPServer'


class BadHTTPServer:
    def __init__(self) -> None:
        self._server = _Server(('127.0.0.1', 0), _Handler)
        self._server.owner = self
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._script: list = [Status(404)]
        self._pos = 0
        self.requests: list[tuple[float, str]] = []
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}/'

    def script(self, *actions) -> 'BadHTTPServer':
        with self._lock:
            self._script = list(actions)
            self._pos = 0
            self.requests = []
        return self

    def _next(self, path: str):
        with self._lock:
            self.requests.append((time.monotonic(), path))
            a = self._script[min(self._pos, len(self._script) - 1)]
            self._pos += 1
            return a

    def start(self) -> 'BadHTTPServer':
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={'poll_interval': 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> 'BadHTTPServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
