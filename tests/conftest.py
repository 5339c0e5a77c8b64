"""Shared pytest fixtures for reviewbot's tests.

Helpers live in ``tests/support/`` (import them as ``support.lore`` and
``support.ktree``; this file puts ``tests/`` on ``sys.path``).  Test data
(real kernel mail) is in ``tests/data/``: ``seeds/``, ``lists/``,
``messages/``.

Fixtures:
  data_dir           Path of tests/data.
  lore               session: a read-only public-inbox server with inboxes
                     netdev, dccp and kvm (LORE_INBOXES); ``lore.all_url``.
  lore_factory       function: ``lore_factory()`` -> a fresh, started, empty
                     LoreServer in tmp_path, for tests that feed mail in steps.
  full_kernel_tree   session: (Path, base sha) of the whole linux-source-6.1
                     tree as a cached git repo; read-only, clone it to change.

Expensive things are cached under ~/.cache/reviewbot-tests/ (override with
$REVIEWBOT_TEST_CACHE).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support import ktree  # noqa: E402
from support.lore import LoreServer, prebuilt_server  # noqa: E402

DATA_DIR = TESTS_DIR / 'data'

# inbox name -> mbox files under tests/data served by the session `lore`
LORE_INBOXES = {
    'netdev': ['seeds/seed000.mbox', 'seeds/seed002.mbox', 'seeds/seed004.mbox',
               'lists/sk_lookup-v1.mbox', 'lists/sk_lookup-v2.mbox'],
    'dccp': ['lists/dccp.mbox'],
    'kvm': ['seeds/seed001.mbox', 'seeds/seed003.mbox'],
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        'markers', 'slow: needs a long first-time setup (e.g. the full kernel tree)')


@pytest.fixture(scope='session')
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope='session')
def lore(tmp_path_factory: pytest.TempPathFactory):
    """One public-inbox httpd for the session, serving LORE_INBOXES.

    Read-only (``add_inbox`` raises: use ``lore_factory``).  URLs:
    ``lore.url`` (``http://127.0.0.1:PORT/``), ``lore.all_url`` (``.../all/``),
    ``lore.inbox_url('netdev')``, ``lore.message_url(msgid)``.  The indexed
    inboxes are cached between runs (rebuilt when the mbox files change).
    """
    spec = {name: [DATA_DIR / f for f in files] for name, files in LORE_INBOXES.items()}
    server = prebuilt_server(spec, ktree.cache_root(),
                             log_path=tmp_path_factory.mktemp('lore-log') / 'httpd.log')
    with server:
        server.start()
        yield server


@pytest.fixture
def lore_factory(tmp_path: Path):
    """Make fresh, started, empty LoreServers (stopped after the test).

        srv = lore_factory()
        srv.add_inbox('netdev', [data_dir / 'messages/x.mbox'])  # served at once
        srv.add_inbox('netdev', [reply_bytes])                   # later: visible too
    """
    servers: list[LoreServer] = []

    def make(name: str = 'lore') -> LoreServer:
        server = LoreServer(tmp_path / f'{name}-{len(servers)}')
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope='session')
def full_kernel_tree() -> tuple[Path, str]:
    """(path, base sha): the whole linux-source-6.1 tree as a git repo.

    Built once into ~/.cache/reviewbot-tests/linux-6.1-git (45 s on an idle
    2-CPU machine, minutes under load; 78,635 files, 1.5 GB + 0.5 GB .git);
    later sessions only check it is clean (~0.3 s idle).  Treat it as the
    user's read-only checkout: clone it (``ktree.clone_tree``) or use a
    temporary index to change anything.  Skipped if the tarball is missing.
    """
    if not ktree.TARBALL.is_file():
        pytest.skip(f'{ktree.TARBALL} not installed (apt-get install linux-source-6.1)')
    return ktree.build_full_tree()
