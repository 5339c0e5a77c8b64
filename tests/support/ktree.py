"""Small git trees of REAL kernel files, and real patches against them.

The files come from Debian's ``linux-source-6.1`` tarball
(``/usr/src/linux-source-6.1.tar.xz``, top folder ``linux-source-6.1/``).
Extracted members are cached under ``~/.cache/reviewbot-tests/linux-6.1/``
(override the cache root with ``$REVIEWBOT_TEST_CACHE``), so only the first
test run pays for decompressing the tarball (about 5 s per pass).

    files = kernel_files(['net/core/filter.c', 'include/linux/filter.h'])
    tree = tmp_path / 'tree'
    base = make_tree(tree, files)
    patch = make_patch(tree, {'net/core/filter.c': lambda s: s.replace(...)},
                       'net: filter: do something', 'A U Thor <author@example.org>')
    # patch: bytes of `git format-patch --stdout`; applies to `tree` at base

Commits use fixed author/committer identities and dates, so the same input
always gives the same SHAs.  Every git command runs with an environment
stripped of ``GIT_*`` variables and with system/global config ignored.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

__all__ = ['TARBALL', 'TOPDIR', 'cache_root', 'kernel_files', 'make_tree', 'make_patch', 'git_env',
           'make_series', 'clone_tree', 'git', 'build_full_tree', 'KernelSourceMissing']

TARBALL = Path('/usr/src/linux-source-6.1.tar.xz')
TOPDIR = 'linux-source-6.1'

# author/committer of every commit made here, and the default patch author
DEFAULT_AUTHOR = 'Test Author <author@example.org>'
COMMITTER = 'reviewbot tests <tests@reviewbot.invalid>'
BASE_DATE = '2023-01-01T00:00:00+00:00'
PATCH_DATE = '2023-01-02T00:00:00+00:00'

Edit = Callable[[str], 'str | None']


class KernelSourceMissing(FileNotFoundError):
    """The linux-source-6.1 tarball (or a member asked for) is not there."""


def cache_root() -> Path:
    root = os.environ.get('REVIEWBOT_TEST_CACHE')
    return Path(root) if root else Path.home() / '.cache' / 'reviewbot-tests'


def _split_ident(ident: str) -> tuple[str, str]:
    name, _, rest = ident.partition('<')
    if not rest.endswith('>'):
        raise ValueError(f'expected "Name <email>", got {ident!r}')
    return name.strip(), rest[:-1].strip()


def git_env(author: str = DEFAULT_AUTHOR, date: str = BASE_DATE) -> dict[str, str]:
    """A clean environment for git with fixed identities and dates."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('GIT_')}
    an, ae = _split_ident(author)
    cn, ce = _split_ident(COMMITTER)
    env.update(GIT_AUTHOR_NAME=an, GIT_AUTHOR_EMAIL=ae, GIT_AUTHOR_DATE=date,
               GIT_COMMITTER_NAME=cn, GIT_COMMITTER_EMAIL=ce, GIT_COMMITTER_DATE=date,
               GIT_CONFIG_NOSYSTEM='1', GIT_CONFIG_GLOBAL=os.devnull,
               GIT_TERMINAL_PROMPT='0', LC_ALL='C')
    return env


def git(cwd: Path | str, *args: str, env: dict[str, str] | None = None,
        input: bytes | None = None) -> bytes:
    """Run git in ``cwd``; return stdout; raise with stderr on failure."""
    p = subprocess.run(['git', '-c', 'commit.gpgsign=false', '-c', 'init.defaultBranch=master',
                        *args], cwd=str(cwd), env=env or git_env(), input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, ['git', *args], p.stdout, p.stderr)
    return p.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (serialises pytest-xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a') as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _safe_rel(path: str) -> str:
    rel = os.path.normpath(path).lstrip('/')
    if rel.startswith('..') or rel in ('', '.'):
        raise ValueError(f'bad kernel path {path!r}')
    return rel


def kernel_files(paths: list[str], *, tarball: Path = TARBALL) -> dict[str, bytes]:
    """The contents of kernel files (paths relative to the tree's top).

    Misses are extracted from the tarball in one pass and cached under
    ``cache_root()/linux-6.1/``.  Raises ``KernelSourceMissing`` if the
    tarball is absent (and something is not cached) or a path is not in it.
    """
    cache = cache_root() / 'linux-6.1'
    rels = [_safe_rel(p) for p in paths]
    missing = [r for r in rels if not (cache / r).is_file()]
    if missing:
        with _locked(cache_root() / 'linux-6.1.lock'):
            missing = [r for r in missing if not (cache / r).is_file()]
            if missing:
                _extract(missing, cache, tarball)
    return {p: (cache / r).read_bytes() for p, r in zip(paths, rels)}


def _extract(rels: list[str], cache: Path, tarball: Path) -> None:
    if not tarball.is_file():
        raise KernelSourceMissing(f'{tarball} not found (apt-get install linux-source-6.1)')
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix='.extract-') as tmp:
        members = [f'{TOPDIR}/{r}' for r in sorted(set(rels))]
        lst = Path(tmp) / 'members'
        lst.write_text('\n'.join(members) + '\n')
        # xz -T0 decompresses the tarball's blocks in parallel
        xz = subprocess.Popen(['xz', '-T0', '-dc', str(tarball)], stdout=subprocess.PIPE)
        tar = subprocess.run(['tar', '-x', '-C', tmp, '--strip-components=1',
                              '--no-same-owner', '-T', str(lst)],
                             stdin=xz.stdout, stderr=subprocess.PIPE)
        xz.stdout.close()
        xz.wait()
        absent = [r for r in rels if not (Path(tmp) / r).is_file()]
        if absent:
            raise KernelSourceMissing(f'not in {tarball}: {", ".join(absent)}'
                                      f' ({tar.stderr.decode(errors="replace")[-500:]})')
        for r in set(rels):
            dst = cache / r
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / r, dst)


def make_tree(dest: Path | str, files: Mapping[str, bytes | str], *,
              message: str = 'Linux 6.1 (test subset)') -> str:
    """``git init`` ``dest``, write ``files``, commit them; return HEAD's sha.

    Identities and dates are fixed, so equal files give an equal sha.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    git(dest, 'init', '-q')
    for rel, data in files.items():
        p = dest / _safe_rel(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    git(dest, 'add', '-A')
    git(dest, 'commit', '-q', '--allow-empty', '-m', message)
    return git(dest, 'rev-parse', 'HEAD').decode().strip()


def clone_tree(tree: Path | str, dest: Path | str, *, shared: bool = True) -> Path:
    """Clone ``tree`` to ``dest`` (``--shared``: no object copying; fast
    even for the full kernel tree's objects, though the checkout still
    writes every file)."""
    dest = Path(dest)
    args = ['clone', '-q'] + (['--shared'] if shared else []) + [str(Path(tree).resolve()), str(dest)]
    git(Path(tree), *args)
    return dest


def _apply_edits(work: Path, edits: Mapping[str, Edit]) -> None:
    for rel, fn in edits.items():
        p = work / _safe_rel(rel)
        old = p.read_text(encoding='utf-8', errors='surrogateescape') if p.exists() else ''
        new = fn(old)
        if new is None:
            git(work, 'rm', '-q', '--', _safe_rel(rel))
            continue
        if new == old:
            raise ValueError(f'edit of {rel} changed nothing')
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(new, encoding='utf-8', errors='surrogateescape')
        git(work, 'add', '--', _safe_rel(rel))


def _commit_msg(subject: str, body: str, author: str, signoff: bool) -> str:
    msg = subject.strip() + '\n'
    if body.strip():
        msg += '\n' + body.strip() + '\n'
    if signoff:
        msg += '\nSigned-off-by: ' + author + '\n'
    return msg


def make_patch(tree: Path | str, edits: Mapping[str, Edit], subject: str,
               author: str = DEFAULT_AUTHOR, *, body: str = '', signoff: bool = True,
               message_id: str | None = None, date: str = PATCH_DATE) -> bytes:
    """A real, applying patch against ``tree``'s HEAD, as format-patch mbox bytes.

    ``edits`` maps a path to a function from the file's text to its new
    text ('' comes in for a file that does not exist yet: it is created;
    returning None deletes the file).  The commit is made in a scratch
    ``--shared`` clone, so ``tree`` is left untouched.  ``author`` is
    ``"Name <email>"``; a ``Signed-off-by`` of the author is added unless
    ``signoff=False``.  The patch gets a ``Message-ID`` header (the given
    one, or one derived from the patch content) so it can go straight into
    ``LoreServer.add_inbox``.
    """
    return make_series(tree, [(subject, edits)], author, body=[body], signoff=signoff,
                       message_ids=[message_id] if message_id else None, date=date)[0]


def make_series(tree: Path | str, patches: list[tuple[str, Mapping[str, Edit]]],
                author: str = DEFAULT_AUTHOR, *, cover: tuple[str, str] | None = None,
                body: list[str] | None = None, signoff: bool = True,
                message_ids: list[str] | None = None, date: str = PATCH_DATE,
                to: str | None = None) -> list[bytes]:
    """A threaded patch series against ``tree``'s HEAD, one message per item.

    ``patches`` is ``[(subject, edits), ...]`` applied in order (each edit
    sees the previous patches' result).  With ``cover=(subject, body)`` a
    ``[PATCH 0/N]`` cover letter comes first.  Subjects get ``[PATCH i/N]``
    prefixes when there is more than one message.  Message-IDs are
    ``message_ids`` (one per returned message) or derived from the content;
    every message after the first has In-Reply-To/References to the first,
    as ``git send-email`` threads a series.  Returns the raw messages, each
    an mbox (``From <sha> ...`` line first) that ``git am`` accepts.
    """
    tree = Path(tree)
    body = body or [''] * len(patches)
    with tempfile.TemporaryDirectory(prefix='ktree-patch-') as tmp:
        work = clone_tree(tree, Path(tmp) / 'work')
        for i, (subject, edits) in enumerate(patches):
            _apply_edits(work, edits)
            env = git_env(author, date)
            git(work, 'commit', '-q', '-F', '-', env=env,
                input=_commit_msg(subject, body[i] if i < len(body) else '', author,
                                  signoff).encode())
        n = len(patches)
        args = ['format-patch', '--stdout', '--no-signature', '--no-thread', *(['--to', to] if to else []),
                f'-{n}', 'HEAD']
        if cover:
            args.insert(1, '--cover-letter')
        if n > 1 or cover:
            args.insert(1, '--numbered')
        env = git_env(author, date)  # the cover letter's From: is the committer
        env.update(GIT_COMMITTER_NAME=env['GIT_AUTHOR_NAME'],
                   GIT_COMMITTER_EMAIL=env['GIT_AUTHOR_EMAIL'])
        out = git(work, *args, env=env)
    msgs = _split_format_patch(out)
    if cover:
        subj, text = cover
        msgs[0] = (msgs[0].replace(b'*** SUBJECT HERE ***', subj.encode())
                   .replace(b'*** BLURB HERE ***', text.encode()))
    if message_ids is not None and len(message_ids) != len(msgs):
        raise ValueError(f'{len(message_ids)} message_ids for {len(msgs)} messages')
    if message_ids is None:
        digest = hashlib.sha1(b''.join(msgs)).hexdigest()[:12]
        message_ids = [f'{digest}-{i}-test@reviewbot.invalid' for i in range(len(msgs))]
    first = message_ids[0].strip('<>')
    result = []
    for i, (raw, mid) in enumerate(zip(msgs, message_ids)):
        hdrs = [b'Message-ID: <%s>' % mid.strip('<>').encode()]
        if i:
            hdrs += [b'In-Reply-To: <%s>' % first.encode(), b'References: <%s>' % first.encode()]
        result.append(_add_headers(raw, hdrs))
    return result


def _split_format_patch(out: bytes) -> list[bytes]:
    msgs: list[bytes] = []
    cur: list[bytes] = []
    for line in out.splitlines(keepends=True):
        if line.startswith(b'From ') and line.rstrip().endswith(b'Mon Sep 17 00:00:00 2001') and cur:
            msgs.append(b''.join(cur))
            cur = []
        cur.append(line)
    if cur:
        msgs.append(b''.join(cur))
    return msgs


def _add_headers(raw: bytes, hdrs: list[bytes]) -> bytes:
    """Insert header lines after the format-patch ``From `` line and ``From:``."""
    head, sep, rest = raw.partition(b'\n\n')
    lines = head.split(b'\n')
    # keep the mbox From_ line first; put new headers right after the Subject
    at = next((i + 1 for i, l in enumerate(lines) if l.lower().startswith(b'subject:')), len(lines))
    while at < len(lines) and lines[at][:1] in (b' ', b'\t'):
        at += 1  # after a folded Subject's continuation lines
    lines[at:at] = hdrs
    return b'\n'.join(lines) + sep + rest


# ---------------------------------------------------------------------------
# the whole tree
# ---------------------------------------------------------------------------

def _strip_debian_gitignore(text: str) -> str:
    """Drop the Debian block that ends the top-level .gitignore.

    Debian appends ``/*`` and ``!/debian/`` ("ignore everything at the top
    level") under a ``# Debian packaging`` comment; keep what comes before.
    """
    lines = text.split('\n')
    for i, line in enumerate(lines):
        if line.startswith('# Debian packaging'):
            start = i
            while start > 0 and lines[start - 1].strip() == '#':
                start -= 1
            return '\n'.join(lines[:start]).rstrip('\n') + '\n'
    return text


def build_full_tree(dest: Path | str | None = None, *, tarball: Path = TARBALL) -> tuple[Path, str]:
    """The whole linux-source-6.1 tree as a git repo (cached); (path, HEAD sha).

    Built once under ``cache_root()/linux-6.1-git`` (in a temporary
    directory renamed into place, under a lock); later calls only check
    it: if HEAD moved or files changed (a test wrote into it), branch
    ``master`` is forced back to the recorded base and untracked files are
    cleaned.  Callers should treat it as read-only and clone it
    (``clone_tree``) or use a temporary index to change things.
    """
    dest = Path(dest) if dest else cache_root() / 'linux-6.1-git'
    stamp = dest / '.git' / 'reviewbot-base'
    with _locked(dest.parent / (dest.name + '.lock')):
        if stamp.is_file():
            base = stamp.read_text().strip()
            head = git(dest, 'rev-parse', 'HEAD').decode().strip()
            # ~0.3 s: a test that wrote into the shared tree must not leak
            if head != base or git(dest, 'status', '--porcelain'):
                git(dest, 'checkout', '-q', '-f', '-B', 'master', base)
                git(dest, 'clean', '-q', '-f', '-d')
            return dest, base
        if not tarball.is_file():
            raise KernelSourceMissing(f'{tarball} not found')
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f'.{dest.name}-build-'))
        try:
            xz = subprocess.Popen(['xz', '-T0', '-dc', str(tarball)], stdout=subprocess.PIPE)
            tar = subprocess.run(['tar', '-x', '-C', str(tmp), '--strip-components=1',
                                  '--no-same-owner'], stdin=xz.stdout, stderr=subprocess.PIPE)
            xz.stdout.close()
            if xz.wait() or tar.returncode:
                raise KernelSourceMissing(f'extracting {tarball} failed: '
                                          + tar.stderr.decode(errors='replace')[-500:])
            gi = tmp / '.gitignore'
            gi.write_text(_strip_debian_gitignore(gi.read_text()))
            git(tmp, 'init', '-q')
            git(tmp, 'config', 'core.preloadIndex', 'true')
            git(tmp, 'config', 'gc.auto', '0')
            # --force: upstream tracks ~320 files its own .gitignore rules
            # match (.mailmap, .clang-format, every .gitignore, selftests'
            # tags/ and gen/ dirs); the tarball is pristine source, so all
            # of it goes in, and the rules still hide later build output
            git(tmp, 'add', '-A', '--force')
            git(tmp, 'commit', '-q', '-m', 'Linux 6.1 (Debian linux-source-6.1)')
            base = git(tmp, 'rev-parse', 'HEAD').decode().strip()
            (tmp / '.git' / 'reviewbot-base').write_text(base + '\n')
            tmp.chmod(0o755)  # mkdtemp made it 0700
            if dest.exists():
                shutil.rmtree(dest)  # a half-built leftover without stamp
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest, base


def new_file_diff(path: str, text: str) -> str:
    """A git diff adding TEXT as the new file PATH."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n"
            f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{ln}\n" for ln in lines))


def whole_file_mbox(dest: Path, path: str) -> Path:
    """An mbox at DEST of one patch adding the real kernel file PATH whole
    (KernelSourceMissing without the tarball)."""
    text = kernel_files([path])[path].decode()
    dest.write_text("From: A <a@example.org>\nSubject: [PATCH] add a file\nMessage-ID: <w@example.org>\n"
                    f"Date: Mon, 2 Jan 2023 00:00:00 +0000\n\nadd\n---\n{new_file_diff(path, text)}-- \n2.39.0\n")
    return dest


def review_json(args: list[str], **env: str) -> dict:
    """`reviewbot review ARGS --format json` in a fresh process, with ENV
    set; the JSON without timings."""
    import json
    import sys
    full = dict(os.environ)
    full.update(env)
    proc = subprocess.run([sys.executable, "-c", "from reviewbot.cli import main; main()", "review",
                           *args, "--format", "json"], capture_output=True, text=True, env=full)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    got.pop("timings", None)
    return got


def kb_tree(root: Path | str, paths: list[str]) -> tuple[Path, Path]:
    """(tree, cache): a git tree of these real kernel files under ROOT and
    its knowledge base built into ROOT/cache (pytest skips the test when
    the kernel source is missing)."""
    import pytest
    from reviewbot.tree import knowledge as kn
    try:
        real = kernel_files(paths)
    except KernelSourceMissing as exc:   # pragma: no cover
        pytest.skip(str(exc))
    root = Path(root)
    tree = root / "tree"
    base = make_tree(tree, real)
    kn.build(str(tree), base, root / "cache", procs=1)
    return tree, root / "cache"


def review_edit(tree: Path, subject: str, path: str, edit, rule: str) -> list:
    """The findings of RULE (any confidence) on a one-patch series that
    applies EDIT (text -> text) to PATH of TREE."""
    from reviewbot.review import Options, review_mbox
    msgs = make_series(tree, [(subject, {path: edit})])
    res = review_mbox(b"".join(msgs), Options(tree=str(tree), only_rules={rule}, min_confidence="low"))
    return [f for r in res.patches for f in r.findings]
