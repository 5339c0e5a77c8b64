"""Applying a series to a kernel tree without touching the user's checkout.

The series is applied into a temporary index (GIT_INDEX_FILE) with
`git apply --cached`, and every object git writes goes to a temporary
object directory that borrows the user's objects as an alternate.  The
user's working tree, index, refs, stash, worktree list and object store
are never written to; everything we create lives in one temporary
directory that is removed on exit, Ctrl-C included.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

from reviewbot.errors import TreeError

_FAILED_RE = re.compile(r"^error: patch failed: (.+):(\d+)$", re.MULTILINE)
MAX_BLOB = 8 * 1024 * 1024


@dataclass
class ApplyResult:
    applies: bool
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    pre_tree: str | None = None     # tree object before this patch
    post_tree: str | None = None    # tree object after it (None if it did not apply)


STALE_AFTER = 24 * 3600


def _common_dir(tree: str) -> str:
    """The git directory holding TREE's objects and refs (the common one of
    a linked worktree).  TREE must be the top of a working tree or a bare
    repository, not a directory inside one.  (One `git rev-parse`: opening
    the repository with GitPython costs 70 ms of imports per review.)"""
    bad = TreeError(f"--tree {tree}: not a git tree")
    if not os.path.isdir(tree):
        raise bad
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["LC_ALL"] = "C"
    try:
        p = subprocess.run(["git", "-C", tree, "rev-parse", "--path-format=absolute",
                            "--git-common-dir", "--show-cdup"], capture_output=True, env=env)
    except OSError as exc:
        raise TreeError(f"cannot run git: {exc.strerror}") from None
    lines = p.stdout.decode(errors="surrogateescape").split("\n")
    if p.returncode != 0 or not lines[0] or (len(lines) > 1 and lines[1]):
        raise bad           # not a repository, or a subdirectory of one
    return lines[0]


def _remove_stale_scratch() -> None:
    """Scratch directories left by a reviewbot that was killed (kill -9, a
    power cut) are removed once they are a day old; a live review never
    runs that long."""
    import glob
    import time
    now = time.time()
    for d in glob.glob(os.path.join(tempfile.gettempdir(), "reviewbot-apply-*")):
        try:
            st = os.lstat(d)
        except OSError:
            continue
        if (os.path.isdir(d) and not os.path.islink(d) and st.st_uid == os.getuid()
                and now - st.st_mtime > STALE_AFTER):
            shutil.rmtree(d, ignore_errors=True)


class TreeSession:
    """A scratch area on top of the user's repository."""

    def __init__(self, tree: str, base: str | None = None):
        self.path = tree
        self.common_dir = _common_dir(tree)
        self.objects = os.path.join(self.common_dir, "objects")
        self._catfile: subprocess.Popen | None = None
        self._texts: dict[str, str] = {}
        _remove_stale_scratch()
        # Ctrl-C/SIGTERM between mkdtemp's mkdir and the assignment would
        # leave the directory behind unrecorded: hold signals across it.
        held = _hold_signals()
        try:
            self.tmp = tempfile.mkdtemp(prefix="reviewbot-apply-")
        except OSError as exc:
            _release_signals(held)
            raise TreeError(f"cannot create a temporary directory: {exc.strerror}") from None
        except BaseException:
            _release_signals(held)
            raise
        _LIVE.add(self)
        try:
            _release_signals(held)
            self._setup(tree, base)
        except BaseException:
            # A tree without commits, or Ctrl-C/SIGTERM right here: the
            # caller never gets the session, so clean up now.
            self.close()
            raise

    def _setup(self, tree: str, base: str | None) -> None:
        self.index = os.path.join(self.tmp, "index")
        self.tmp_objects = os.path.join(self.tmp, "objects")
        os.makedirs(os.path.join(self.tmp_objects, "info"))
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("GIT_"):
                del self.env[k]
        self.env.update({
            "GIT_DIR": self.common_dir,
            "GIT_INDEX_FILE": self.index,
            "GIT_OBJECT_DIRECTORY": self.tmp_objects,
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": self.objects,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
            # The user's hooks (post-index-change fires on our scratch
            # index), fsmonitor and auto-gc are not ours to run.
            "GIT_CONFIG_COUNT": "3",
            "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": os.devnull,
            "GIT_CONFIG_KEY_1": "core.fsmonitor", "GIT_CONFIG_VALUE_1": "false",
            "GIT_CONFIG_KEY_2": "gc.auto", "GIT_CONFIG_VALUE_2": "0",
        })
        if base is None:
            head = self.commit_of("HEAD")
            if head is None:
                raise TreeError(f"--tree {tree}: no commits to apply onto (HEAD does not resolve)")
            self.base = head
        else:
            self.base = self.resolve(base)
        self._current: str | None = None

    # -- plumbing --------------------------------------------------------
    def git(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # Signals wait until git has finished: interrupted while Popen is
        # still starting it, a git child would be left writing into the
        # scratch directory after close() removed it.
        held = _hold_signals()
        try:
            proc = subprocess.run(["git", *args], input=input, env=self.env, cwd=self.tmp,
                                  capture_output=True)
        finally:
            _release_signals(held)
        if check and proc.returncode != 0:
            raise TreeError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
        return proc

    def commit_of(self, rev: str) -> str | None:
        """The commit id REV names, or None when it names none here."""
        if rev.startswith("-"):
            return None
        proc = self.git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def resolve(self, rev: str) -> str:
        if rev.startswith("-"):
            raise TreeError(f"--base {rev!r}: not a revision")
        got = self.commit_of(rev)
        if got is None:
            raise TreeError(f"--base {rev}: unknown revision in {self.path}")
        return got

    def tree_of(self, commit: str) -> str:
        return self.git("rev-parse", f"{commit}^{{tree}}").stdout.decode().strip()

    def read_blob(self, tree: str, path: str) -> str | None:
        """The text of PATH in TREE, or None when absent (or binary/huge)."""
        if self._catfile is None:
            held = _hold_signals()
            try:
                self._catfile = subprocess.Popen(["git", "cat-file", "--batch"], env=self.env, cwd=self.tmp,
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            finally:
                _release_signals(held)
        assert self._catfile.stdin and self._catfile.stdout
        if "\n" in path:
            return None
        self._catfile.stdin.write(f"{tree}:{path}\n".encode())
        self._catfile.stdin.flush()
        header = self._catfile.stdout.readline().decode().split()
        if len(header) != 3:
            return None
        size = int(header[2])
        data = self._catfile.stdout.read(size + 1)[:-1]
        if header[1] != "blob" or size > MAX_BLOB or b"\x00" in data[:8192]:
            return None
        # One string per blob: a series shows a file's post-image of one
        # patch again as the pre-image of the next (memory, and the
        # contexts handed to the rule process share them).
        got = self._texts.get(header[0])
        if got is None:
            got = self._texts[header[0]] = data.decode("utf-8", errors="replace")
        return got

    # -- applying ----------------------------------------------------------
    def start(self, commit: str | None = None, paths: list[str] | None = None) -> str:
        """Load the index for applying.  With *paths* (every path the series
        touches), only those entries are loaded: applying and writing trees
        then costs next to nothing even on a 78k-file tree, and the trees
        written hold just the touched files, which is all read_blob needs."""
        commit = commit or self.base
        if paths is None:
            self.git("read-tree", self.tree_of(commit))
        else:
            if os.path.exists(self.index):
                os.unlink(self.index)       # an empty index: none at all
            if paths:
                listing = self.git("ls-tree", "-r", "-z", "--full-tree", commit, "--",
                                   *sorted(set(paths))).stdout
                self.git("update-index", "-z", "--index-info", input=listing)
        self._current = self.git("write-tree").stdout.decode().strip()
        return self._current

    def apply(self, diff_text: str, fallback_text: str | None = None) -> ApplyResult:
        """Apply one patch on top of the index.  Strict first; then tolerate
        whitespace damage; on failure the index is left as it was."""
        pre = self._current
        attempts = [(["apply", "--cached"], diff_text, None)]
        if fallback_text is not None:
            attempts += [
                (["apply", "--cached", "--ignore-whitespace", "--recount"], fallback_text, "whitespace-damaged"),
                (["apply", "--cached", "--ignore-whitespace", "--recount", "-C1"], fallback_text,
                 "whitespace-damaged, applied with reduced context"),
            ]
        first_err = None
        for args, text, note in attempts:
            proc = self.git(*args, input=text.encode(), check=False)
            if proc.returncode == 0:
                post = self.git("write-tree").stdout.decode().strip()
                self._current = post
                return ApplyResult(True, None, [note] if note else [], pre, post)
            self.git("read-tree", pre)
            if first_err is None:
                first_err = proc.stderr.decode(errors="replace")
        return ApplyResult(False, _explain(first_err or ""), [], pre, None)

    def blob_id(self, abbrev: str) -> str | None:
        """The full id of the blob ABBREV names, when the tree's object store
        has exactly one object of that prefix and it is a blob."""
        if not abbrev or not all(c in "0123456789abcdef" for c in abbrev):
            return None
        proc = self.git("rev-parse", "--verify", "-q", f"{abbrev}^{{blob}}", check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def apply_on_blobs(self, diff_text: str, blobs: dict[str, str], fallback_text: str | None = None
                       ) -> ApplyResult:
        """Apply one patch onto the pre-images its index lines name (as
        `git am -3` does): each file of BLOBS (path -> abbreviated blob id)
        is first set to that blob.  Fails, leaving the index as it was, when
        a blob is unknown or ambiguous or the patch still does not apply."""
        pre = self._current
        entries = []
        for path, abbrev in sorted(blobs.items()):
            full = self.blob_id(abbrev)
            if full is None:
                return ApplyResult(False, f"does not apply, and {path}'s pre-image blob {abbrev} "
                                          "is not in the tree", [], pre, None)
            entries.append(b"100644 %s\t%s\0" % (full.encode(), path.encode()))
        self.git("update-index", "-z", "--index-info", input=b"".join(entries))
        self._current = self.git("write-tree").stdout.decode().strip()
        res = self.apply(diff_text, fallback_text)
        if not res.applies:
            self.git("read-tree", pre)
            self._current = pre
            return ApplyResult(False, res.error, [], pre, None)
        res.notes.append("applied to the blobs named in the patch (the tree's HEAD differs)")
        return res

    def close(self) -> None:
        if self._catfile is not None:
            try:
                self._catfile.stdin.close()  # type: ignore[union-attr]
                self._catfile.kill()
                self._catfile.wait(5)
            except Exception:
                pass
            self._catfile = None
        # A second Ctrl-C/SIGTERM must not cut the removal short: hold
        # signals until the temporary directory is gone.
        held = _hold_signals()
        try:
            shutil.rmtree(self.tmp, ignore_errors=True)
            _LIVE.discard(self)
        finally:
            _release_signals(held)

    def __enter__(self) -> "TreeSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Sessions not yet closed.  A signal landing between TreeSession() returning
# and the caller storing it would skip the caller's `finally`: close what is
# left at exit.
_LIVE: set = set()


@atexit.register
def _close_all() -> None:
    for session in list(_LIVE):
        session.close()


def _hold_signals():
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):
        return None


def _release_signals(held) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _explain(stderr: str) -> str:
    """One line saying which file and hunk failed."""
    m = _FAILED_RE.search(stderr)
    if m:
        return f"does not apply: hunk at {m.group(1)}:{m.group(2)} failed"
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("error:"):
            return "does not apply: " + line[len("error:"):].strip()[:160]
    return "does not apply"
