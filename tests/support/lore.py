"""A real public-inbox HTTP server on loopback, for tests.

``LoreServer`` builds public-inbox V2 inboxes under a work directory, fills
them with real mail (mbox files or raw message bytes), indexes them (each
inbox, plus the ``/all/`` extindex that lore.kernel.org also serves) and runs
``public-inbox-httpd`` on ``127.0.0.1``.  Nothing is faked: b4, liblore,
requests or curl can talk to it exactly as they talk to lore.kernel.org.

    with LoreServer(tmp_path / 'lore') as lore:
        lore.add_inbox('netdev', [Path('series.mbox')])
        lore.start()
        lore.url            # 'http://127.0.0.1:PORT/'
        lore.all_url        # 'http://127.0.0.1:PORT/all/'
        lore.add_inbox('netdev', [raw_reply_bytes])   # visible at once

Messages are written straight into the inbox's v2 epoch (``git/0.git``)
with ``git fast-import``, one commit per message holding the blob ``m``:
the layout public-inbox itself writes, in seconds even for a whole list
archive (``public-inbox-mda`` would take minutes).

Every subprocess gets a private ``HOME`` (``WORKDIR/home``) and an
environment stripped of ``GIT_*``/``PI_*`` variables, so the caller's git or
public-inbox configuration can neither leak in nor be touched.
"""

from __future__ import annotations

import atexit
import ctypes
import email.message
import email.parser
import email.policy
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

__all__ = ['LoreServer', 'LoreServerError', 'prebuilt_server', 'split_mbox', 'message_id']

MessageSource = Union[str, os.PathLike, bytes, bytearray, email.message.Message]

_FROM_ESCAPED = re.compile(rb'^>(>*From )', re.M)
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


class LoreServerError(RuntimeError):
    """public-inbox failed: a command, or the HTTP server not coming up."""


# ---------------------------------------------------------------------------
# mbox handling
# ---------------------------------------------------------------------------

def split_mbox(data: bytes) -> list[bytes]:
    """Split an mbox (mboxrd or mboxo) into raw messages, byte for byte.

    A message starts at a ``From `` line at the top of the data or after an
    empty line.  ``>From `` quoting is undone one level (mboxrd; for mboxo
    this is the usual lossy reading).  The ``From `` line itself and the
    empty line the mbox format adds after each message are dropped.
    Data that does not start with ``From `` is one bare message.
    """
    data = bytes(data).replace(b'\r\n', b'\n')
    if not data.startswith(b'From '):
        return [data] if data.strip() else []
    lines = data.split(b'\n')
    if lines and lines[-1] == b'':
        lines.pop()  # the last line's own newline, not an empty line
    msgs: list[bytes] = []
    cur: list[bytes] | None = None
    prev_empty = True
    for line in lines:
        if line.startswith(b'From ') and prev_empty:
            if cur is not None:
                msgs.append(_finish(cur))
            cur = []
        elif cur is not None:
            cur.append(line)
        prev_empty = line == b''
    if cur is not None:
        msgs.append(_finish(cur))
    return [m for m in msgs if m.strip()]


def _finish(lines: list[bytes]) -> bytes:
    if lines and lines[-1] == b'':
        lines = lines[:-1]  # the separator line the mbox writer added
    raw = b'\n'.join(lines) + b'\n'
    return _FROM_ESCAPED.sub(rb'\1', raw)


def message_id(raw: bytes) -> str | None:
    """The Message-ID of a raw message, without angle brackets."""
    hdrs = _HEADER_PARSER.parsebytes(raw)
    mid = hdrs.get('Message-ID')
    if mid is None:
        return None
    mid = str(mid).strip()
    m = re.search(r'<([^>]+)>', mid)
    return m.group(1).strip() if m else (mid or None)


def _messages(sources: Iterable[MessageSource]) -> list[bytes]:
    if isinstance(sources, (str, bytes, bytearray, os.PathLike, email.message.Message)):
        sources = [sources]  # a lone source, not a list of them
    out: list[bytes] = []
    for src in sources:
        if isinstance(src, email.message.Message):
            out.append(src.as_bytes(unixfrom=False))
        elif isinstance(src, (bytes, bytearray)):
            out.extend(split_mbox(bytes(src)))
        elif isinstance(src, (str, os.PathLike)):
            out.extend(split_mbox(Path(src).read_bytes()))
        else:
            raise TypeError(f'cannot import {type(src).__name__} as mail')
    return out


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------

def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('GIT_', 'PI_', 'LISTEN_'))}
    env['HOME'] = str(home)
    env['GIT_CONFIG_NOSYSTEM'] = '1'
    env['LC_ALL'] = 'C.UTF-8'
    env.pop('XDG_CONFIG_HOME', None)
    env.pop('XDG_DATA_HOME', None)
    env.pop('XDG_CACHE_HOME', None)
    return env


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Message-IDs safe to look up by URL and m:"..." search when checking that
# the server sees new mail (hostile test mail may carry any other kind)
_PLAIN_MID = re.compile(r'[A-Za-z0-9][A-Za-z0-9.!#$%&\'*+/=?^_`{|}~-]*@[A-Za-z0-9.\[\]:_-]+')


_RUNNING: 'set[LoreServer]' = set()  # started and not yet stopped


@atexit.register
def _stop_all() -> None:
    """Safety net: no httpd outlives the Python process that started it."""
    for server in list(_RUNNING):
        server.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (test run) dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LoreServer:
    """public-inbox V2 inboxes plus ``public-inbox-httpd`` on loopback.

    ``workdir`` holds everything (created if missing): ``home/`` (the
    private HOME with ``.public-inbox/config``), ``inboxes/NAME/``,
    ``all/`` (the extindex behind ``/all/``) and ``httpd.log``.
    """

    host = '127.0.0.1'

    def __init__(self, workdir: Path, *, start_timeout: float = 30.0,
                 read_only: bool = False, log_path: Path | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.home = self.workdir / 'home'
        self.inboxes_dir = self.workdir / 'inboxes'
        self.extindex_dir = self.workdir / 'all'
        self.log_path = Path(log_path) if log_path else self.workdir / 'httpd.log'
        self.config_path = self.home / '.public-inbox' / 'config'
        self.start_timeout = start_timeout
        self.read_only = read_only
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._inboxes: list[str] = []
        self.home.mkdir(parents=True, exist_ok=True)
        self.inboxes_dir.mkdir(parents=True, exist_ok=True)
        self.env = _clean_env(self.home)
        self._git_config('publicinboxmda.spamcheck', 'none')
        self._git_config('extindex.all.topdir', str(self.extindex_dir))
        # pick up inboxes a previous LoreServer left in this workdir
        for d in sorted(self.inboxes_dir.iterdir()):
            if (d / 'git' / '0.git').is_dir():
                self._inboxes.append(d.name)

    # -- helpers -----------------------------------------------------------

    def _run(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        p = subprocess.run(list(args), env=self.env, input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            raise LoreServerError(
                f'{" ".join(args)} failed ({p.returncode}):\n'
                f'{p.stderr.decode(errors="replace")[-4000:]}')
        return p

    def _git_config(self, key: str, value: str) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        cur = subprocess.run(['git', 'config', '-f', str(self.config_path), key],
                             env=self.env, capture_output=True)
        if cur.returncode == 0 and cur.stdout.decode().strip() == value:
            return  # already set: no write (workdirs may be shared read-only)
        self._run('git', 'config', '-f', str(self.config_path), key, value)

    def _epoch(self, name: str) -> Path:
        gitdir = self.inboxes_dir / name / 'git'
        epochs = [p for p in gitdir.iterdir() if re.fullmatch(r'\d+\.git', p.name)]
        if not epochs:
            raise LoreServerError(f'inbox {name}: no epoch under {gitdir}')
        return max(epochs, key=lambda p: int(p.name.split('.')[0]))

    def _head_time(self, epoch: Path) -> int | None:
        p = subprocess.run(['git', '--git-dir', str(epoch), 'log', '-1', '--format=%ct',
                            'refs/heads/master'], env=self.env, capture_output=True)
        out = p.stdout.strip()
        return int(out) if p.returncode == 0 and out else None

    def _last_time(self) -> int:
        """The newest committer time over all inboxes (times only grow)."""
        last = 0
        for name in self._inboxes:
            t = self._head_time(self._epoch(name))
            if t is not None:
                last = max(last, t)
        return last

    # -- public API --------------------------------------------------------

    @property
    def inboxes(self) -> list[str]:
        return list(self._inboxes)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/`` (trailing slash); only once started."""
        if self.port is None:
            raise LoreServerError('LoreServer not started')
        return f'http://{self.host}:{self.port}/'

    @property
    def all_url(self) -> str:
        """``http://127.0.0.1:PORT/all/``: every inbox, like lore's /all/."""
        return self.url + 'all/'

    def inbox_url(self, name: str) -> str:
        return self.url + name + '/'

    def message_url(self, msgid: str, inbox: str = 'all') -> str:
        """URL of a message's page; append ``raw``, ``t.mbox.gz``, ``t/``..."""
        return f'{self.url}{inbox}/{urllib.parse.quote(msgid.strip("<>"), safe="@")}/'

    def b4_args(self) -> list[str]:
        """``b4`` options that point it at this server and keep it offline.

        Use as ``['b4', *lore.b4_args(), 'am', '-o', out, msgid]``.  b4
        also caches thread fetches for 10 minutes under
        ``$XDG_CACHE_HOME/b4`` (default ``~/.cache/b4``) keyed by URL: run
        it with ``XDG_CACHE_HOME`` set to a per-test directory when a test
        fetches the same thread again after adding mail.
        """
        return ['-c', f'b4.midmask={self.all_url}%s',
                '-c', 'b4.attestation-policy=off',
                '-c', 'b4.attestation-check-dkim=no']

    def add_inbox(self, name: str, mbox_paths_or_bytes: Iterable[MessageSource] = ()) -> list[str]:
        """Create inbox ``name`` if needed, append messages, reindex.

        ``mbox_paths_or_bytes``: mbox file paths (str/Path), bytes (an mbox
        starting with ``From ``, e.g. ``git format-patch --stdout`` output,
        or one bare RFC 5322 message) or ``email.message.Message`` objects;
        a single one of these is accepted too.  Each message becomes one
        commit with a newer committer time than any before it.  Returns
        the Message-IDs added, in order (None for a message without one).

        If the server is running, the new messages (and a new inbox) are
        served, searchable too, when this returns: the httpd gets SIGHUP
        (same port, same URL) and is polled until it answers.
        """
        if self.read_only:
            raise LoreServerError(
                f'{self!r} is read-only (shared by the test session); '
                'use the lore_factory fixture to feed mail in steps')
        if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]*', name) or name == 'all':
            raise ValueError(f'bad inbox name {name!r}')
        msgs = _messages(mbox_paths_or_bytes)
        created = name not in self._inboxes
        if created:
            self._run('public-inbox-init', '-V2', '-L', 'basic', name,
                      str(self.inboxes_dir / name),
                      f'http://{self.host}/{name}', f'{name}@lists.invalid')
            self._inboxes.append(name)
        if msgs:
            self._import(name, msgs)
        self._reindex(name)
        mids = [message_id(m) for m in msgs]
        if self.running:
            self._refresh(name, [m for m in mids if m])
        return mids

    def _import(self, name: str, msgs: list[bytes]) -> None:
        epoch = self._epoch(name)
        has_head = self._head_time(epoch) is not None
        now = int(time.time())
        t = max(self._last_time() + 1, now - len(msgs) + 1)
        stream = bytearray()
        for i, raw in enumerate(msgs):
            stream += b'commit refs/heads/master\n'
            stream += b'author reviewbot-tests <lore@local.invalid> %d +0000\n' % t
            stream += b'committer reviewbot-tests <lore@local.invalid> %d +0000\n' % t
            stream += b'data 1\nm\n'
            if i == 0 and has_head:
                stream += b'from refs/heads/master^0\n'
            stream += b'M 100644 inline m\ndata %d\n' % len(raw) + raw + b'\n'
            t += 1
        self._run('git', '--git-dir', str(epoch), 'fast-import', '--quiet',
                  input=bytes(stream))

    def _reindex(self, name: str) -> None:
        inbox = str(self.inboxes_dir / name)
        if self.extindex_dir.is_dir():
            # also updates /all/: -E all is the default with extindex.all set
            self._run('public-inbox-index', '--no-fsync', inbox)
        else:
            self._run('public-inbox-index', '--no-fsync', '--no-update-extindex', inbox)
            self._ensure_extindex()

    def _ensure_extindex(self) -> None:
        """Create the /all/ extindex over every configured inbox."""
        self._run('public-inbox-extindex', '--no-fsync', '--all', str(self.extindex_dir))

    def _refresh(self, name: str, mids: list[str], timeout: float = 10.0) -> None:
        """Make a running httpd serve what was just indexed.

        Thread and raw fetches see new messages at once (SQLite), but a
        worker keeps its Xapian handles (search, ``x=m`` queries) and its
        inbox list (a new inbox 404s) until told to refresh: SIGHUP to the
        master, which passes it on (same processes, same socket).  Then
        wait until the newest plain Message-ID is found by raw fetch at
        /all/ and /NAME/ and by search; restart the server as a last resort.
        """
        if not self.running:
            return
        os.kill(self._proc.pid, signal.SIGHUP)
        plain = [m for m in mids if _PLAIN_MID.fullmatch(m)]
        if not plain:
            time.sleep(0.2)  # nothing to look up: give the refresh a moment
        if self._await_visible(name, plain[-1:], timeout):
            return
        self.restart()
        if not self._await_visible(name, plain[-1:], timeout):
            raise LoreServerError(
                f'{plain[-1] if plain else name} not served after reindex and restart:\n'
                + self.log_tail())

    def _await_visible(self, name: str, mids: list[str], timeout: float) -> bool:
        if mids:
            mid = mids[-1]
            urls = [self.message_url(mid) + 'raw', self.message_url(mid, name) + 'raw',
                    self.all_url + '?q=' + urllib.parse.quote(f'm:"{mid}"')]
        else:
            urls = [self.inbox_url(name)]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._status(u) == 200 for u in urls):
                return True
            if not self.running:
                return False
            time.sleep(0.05)
        return False

    @staticmethod
    def _status(url: str) -> int | None:
        """HTTP status of GET url (None: no answer); never via a proxy."""
        try:
            with _OPENER.open(url, timeout=5) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def start(self) -> 'LoreServer':
        """Start public-inbox-httpd on a free loopback port; wait for /all/."""
        if self.running:
            return self
        if not self.extindex_dir.is_dir() and not self.read_only:
            self._ensure_extindex()  # /all/ needs it, even an empty one
        last: Exception | None = None
        for _ in range(3):  # a port taken between bind() and httpd: retry
            port = self.port or _free_port(self.host)
            try:
                self._spawn(port)
                return self
            except LoreServerError as e:
                last = e
                self.stop()
                self.port = None
                if 'in use' not in str(e):
                    raise
        raise last  # type: ignore[misc]

    def _spawn(self, port: int) -> None:
        # (publicinbox.NAME.url does not matter: over HTTP, links are made
        # from the request's Host)
        self.port = port
        log = open(self.log_path, 'ab')
        try:
            self._proc = subprocess.Popen(
                ['public-inbox-httpd', '-l', f'http://{self.host}:{port}'],
                env=self.env, cwd=str(self.workdir), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent)
        finally:
            log.close()
        _RUNNING.add(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise LoreServerError(
                    f'public-inbox-httpd exited ({self._proc.returncode}) on port {port}:\n'
                    + self.log_tail())
            if self._status(self.all_url) is not None:
                return
            if time.monotonic() > deadline:
                raise LoreServerError(
                    f'public-inbox-httpd on port {port} did not answer {self.all_url} '
                    f'within {self.start_timeout}s:\n' + self.log_tail())
            time.sleep(0.05)

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors='replace').splitlines()
        except OSError:
            return '(no httpd log)'
        return '\n'.join(lines[-n:])

    def stop(self) -> None:
        """Terminate the httpd process group (master and workers)."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        # workers outlive the master briefly; reap the rest of the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def restart(self) -> None:
        """Stop and start again on the same port (URLs stay valid)."""
        port = self.port
        self.stop()
        self.port = port
        self.start()

    def __enter__(self) -> 'LoreServer':
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.port else 'not started'
        return f'<LoreServer {self.workdir} {where} inboxes={self._inboxes}>'


# ---------------------------------------------------------------------------
# a cached, read-only server for a whole test session
# ---------------------------------------------------------------------------

# bump when a change here changes what an inbox build contains
_BUILD_FORMAT = 1


def _fingerprint(spec: Mapping[str, Sequence[MessageSource]]) -> str:
    """Hash of the inputs, _BUILD_FORMAT and the installed public-inbox."""
    h = hashlib.sha256(f'format {_BUILD_FORMAT}'.encode())
    exe = shutil.which('public-inbox-index')
    if exe:
        st = os.stat(exe)
        h.update(f'{exe} {st.st_size} {st.st_mtime_ns}'.encode())
    for name, sources in spec.items():
        h.update(b'\0inbox\0' + name.encode())
        for raw in _messages(sources):
            h.update(b'\0msg\0' + raw)
    return h.hexdigest()[:16]


def _prune(cache_dir: Path, name: str, max_age: float = 6 * 3600) -> None:
    """Remove other builds of ``name`` (and of the unnamed early format)
    made more than ``max_age`` seconds ago: a running test session may
    still serve a recent one, and public-inbox cannot lose its files."""
    now = time.time()
    for old in cache_dir.iterdir():
        if not (old.is_dir() and (old.name.startswith(f'lore-{name}-')
                                  or re.fullmatch(r'lore-[0-9a-f]{16}', old.name))):
            continue
        stamp = old / 'complete'
        try:
            age = now - (stamp if stamp.exists() else old).stat().st_mtime
        except OSError:
            continue
        if age > max_age:
            shutil.rmtree(old, ignore_errors=True)


def prebuilt_server(spec: Mapping[str, Sequence[MessageSource]], cache_dir: Path,
                    *, name: str = 'session', log_path: Path | None = None) -> LoreServer:
    """A read-only, not yet started LoreServer over inboxes ``spec`` builds.

    The inboxes are built once (``add_inbox(inbox, sources)`` for each
    item, in order) under ``cache_dir/lore-NAME-<hash of inputs>/`` and
    reused while the inputs, ``_BUILD_FORMAT`` and public-inbox stay the
    same: indexing a whole list archive takes seconds, starting a server
    on it ~0.3 s.  Other builds of the same ``name`` are removed once 6
    hours old.  public-inbox keys inboxes by absolute path, which is why
    the build is served in place rather than copied.  The server is
    read-only (``add_inbox`` raises) since other sessions may serve the
    same directory at the same time.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _fingerprint(spec)
    if not re.fullmatch(r'[A-Za-z0-9_]+', name):
        raise ValueError(f'bad build name {name!r}')
    workdir = cache_dir / f'lore-{name}-{key}'
    stamp = workdir / 'complete'
    with open(cache_dir / f'lore-{name}.lock', 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():
            _prune(cache_dir, name)
            if workdir.exists():
                shutil.rmtree(workdir)  # a build that did not finish
            builder = LoreServer(workdir)
            for inbox, sources in spec.items():
                builder.add_inbox(inbox, sources)
            stamp.write_text(key + '\n')
    return LoreServer(workdir, read_only=True, log_path=log_path)
