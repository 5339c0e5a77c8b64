"""The rule engine: discovery of rules, the context they see, running them.

A rule is a class in a module of the `reviewbot.rules` package (the
project's `rules/` folder), or one registered through the
`reviewbot.rules` entry-point group.  Its docstring is its documentation.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import inspect
import logging
import mmap
import os
import pickle
import pkgutil
import re
import select
import signal
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from . import cparse
from .diffmodel import FileDiff, PatchDiff, whole_new_files
from .findings import Finding, Location

log = logging.getLogger(__name__)
_CODE_RE = re.compile(r"^[A-Z]{2,4}\d{3}$")
_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
DOC_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead")


class FileView:
    """One touched file: its diff and, when known, pre- and post-image."""

    def __init__(self, diff: FileDiff, pre: str | None, post: str | None):
        self.diff = diff
        self.pre = pre
        self.post = post

    @property
    def path(self) -> str:
        return self.diff.path

    def __getstate__(self):
        # parse trees are caches that cannot be pickled (a child process
        # running rules parses again if it needs them)
        return {k: v for k, v in self.__dict__.items() if k not in ("post_tree", "pre_tree")}

    @cached_property
    def post_text(self) -> str:
        """The post-image, or what the hunks show of it when no tree is known
        (the lines in between are blank so that line numbers match)."""
        if self.post is not None:
            return self.post
        return reconstruct(self.diff, new=True)

    @cached_property
    def pre_text(self) -> str:
        if self.pre is not None:
            return self.pre
        return reconstruct(self.diff, new=False)

    @cached_property
    def post_tree(self):
        return cparse.parse(self.post_text)

    @cached_property
    def pre_tree(self):
        return cparse.parse(self.pre_text)

    @cached_property
    def added_lines(self) -> set[int]:
        return {ln.new_no for ln in self.diff.added() if ln.new_no is not None}

    @property
    def has_full_image(self) -> bool:
        return self.post is not None

    def shown_lines(self, new: bool) -> set[int]:
        """Line numbers of the post-image (new=True) or pre-image that the
        diff's hunks show."""
        out = set()
        for h in self.diff.hunks:
            for ln in h.lines:
                if new and ln.kind != "-" and ln.new_no:
                    out.add(ln.new_no)
                if not new and ln.kind != "+" and ln.old_no:
                    out.add(ln.old_no)
        return out


def reconstruct(diff: FileDiff, new: bool) -> str:
    lines: dict[int, str] = {}
    for h in diff.hunks:
        for ln in h.lines:
            if new and ln.kind != "-" and ln.new_no:
                lines[ln.new_no] = ln.text
            if not new and ln.kind != "+" and ln.old_no:
                lines[ln.old_no] = ln.text
    if not lines:
        return ""
    top = max(lines)
    return "\n".join(lines.get(i, "") for i in range(1, top + 1)) + "\n"


@dataclass
class PatchContext:
    series: object            # series.Series
    patch: object             # series.Patch
    diff: PatchDiff
    files: list[FileView]
    has_tree: bool
    tree_reader: object = None   # callable(path) -> post-image text of another file, or None
    all_patches: list = field(default_factory=list)   # every PatchContext of the series
    tree_path: str | None = None  # the git tree the series was applied to (read-only), if any
    base: str | None = None       # the commit it was applied onto

    def c_files(self) -> list[FileView]:
        return [f for f in self.files if f.diff.is_c and not f.diff.is_deleted]


class Rule:
    """Base class.  Subclasses set the class attributes and override
    check_patch and/or check_series."""

    code: str = ""
    name: str = ""
    family: str = ""
    severity: str = "warning"
    confidence: str = "medium"
    # True for a rule whose caches no other rule shares and that costs
    # about as much as the others together (the duplicated-code search):
    # run() may run such rules in a forked process next to the rest.
    own_process: bool = False
    # True for a rule that may also run in that process when the series
    # only adds whole files: their parse trees are made there ahead of time
    # (from the raw mail); the rules of a family go to whichever process
    # has their caches ready (see Run).
    offload: bool = False

    def prepare(self, tree: str | None) -> None:
        """Load what the rule needs (modules, the index of TREE) ahead of
        the review: called in the process an own-process rule will run in,
        while the main process is still applying the series."""

    def preview(self, mbox: bytes) -> None:
        """Work ahead on the raw mail of the series (untrusted, unparsed),
        in the same process and time as prepare(): whatever it computes
        may only serve as a cache for check_patch(), never change its
        findings."""

    def check_patch(self, ctx: PatchContext) -> Iterable[Finding]:
        return ()

    def check_series(self, patches: list[PatchContext]) -> Iterable[Finding]:
        return ()

    def finding(self, path: str | None, line: int | None, message: str, *,
                related: Iterable[Location] = (), confidence: str | None = None,
                severity: str | None = None, end_line: int | None = None) -> Finding:
        return Finding(self.code, self.name, self.family, severity or self.severity,
                       confidence or self.confidence, path, line, message, tuple(related),
                       end_line=end_line)

    @classmethod
    def doc(cls) -> str:
        return inspect.cleandoc(cls.__doc__ or "")


def discover() -> list[Rule]:
    """Every rule: the modules of reviewbot.rules, then entry points
    (found once per process; rules are stateless)."""
    return list(_discover())


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[Rule, ...]:
    import reviewbot.rules as pkg

    found: dict[str, Rule] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for obj in vars(mod).values():
            if inspect.isclass(obj) and issubclass(obj, Rule) and obj is not Rule and obj.__module__ == mod.__name__:
                _register(found, obj())
    try:
        eps = _plugin_entry_points()
    except Exception:  # pragma: no cover
        eps = []
    for ep in eps:
        try:
            obj = ep.load()
            _register(found, obj())
        except Exception as exc:
            log.warning("rule plugin %s failed to load: %s", ep.name, exc)
    return tuple(sorted(found.values(), key=lambda r: r.code))


def _plugin_entry_points() -> list:
    """entry_points(group="reviewbot.rules"), reading the entry points of
    only the distributions whose entry_points.txt names the group (a
    third of the time with a hundred packages installed); the first
    distribution of a name wins, as there."""
    fast = _scan_entry_points()
    if fast is not None:
        return fast
    from importlib.metadata import distributions     # (a tenth of a second to import)
    out, seen = [], set()
    for dist in distributions():
        name = getattr(dist, "_normalized_name", None) or dist.metadata["Name"]
        if name in seen:
            continue
        seen.add(name)
        text = dist.read_text("entry_points.txt")
        if text and "reviewbot.rules" in text:
            out.extend(dist.entry_points.select(group="reviewbot.rules"))
    return out


_DIST_SUFFIXES = (".dist-info", ".egg-info")


def _scan_entry_points() -> list | None:
    """What _plugin_entry_points() gives, found by listing the sys.path
    folders (os.scandir) instead of making a Distribution of each package:
    a fifth of the time.  None when sys.path holds something other than
    folders (a zip file): the caller then asks importlib.metadata."""
    out, seen = [], set()
    for entry in sys.path:
        where = entry or "."
        try:
            found = sorted(os.scandir(where), key=lambda e: (e.name.lower().endswith(".egg-info"), e.name))
        except NotADirectoryError:
            return None
        except OSError:
            continue                # gone, or unreadable: importlib skips it too
        for e in found:
            stem, dot, ext = e.name.lower().rpartition(".")
            if "." + ext not in _DIST_SUFFIXES or not dot:
                continue
            # importlib.metadata's own normalisation of the folder's name
            name = re.sub(r"[-_.]+", "-", stem.partition("-")[0]).lower().replace("-", "_")
            if name in seen:
                continue
            seen.add(name)
            try:
                with open(os.path.join(e.path, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            if "reviewbot.rules" in text:
                from importlib.metadata import PathDistribution
                from pathlib import Path
                out.extend(PathDistribution(Path(e.path)).entry_points.select(group="reviewbot.rules"))
    return out


def _register(found: dict[str, Rule], rule: Rule) -> None:
    if not _CODE_RE.match(rule.code) or not _NAME_RE.match(rule.name):
        raise ValueError(f"rule {type(rule).__name__}: bad code {rule.code!r} or name {rule.name!r}")
    if rule.code in found:
        raise ValueError(f"duplicate rule code {rule.code}")
    found[rule.code] = rule


def run(rules: list[Rule], contexts: list[PatchContext], only: set[str] | None = None
        ) -> tuple[dict[int, list[Finding]], list[Finding], list[str]]:
    """Run the rules; returns findings per patch index, series findings,
    and notes about rules that failed (a failing rule never stops a review).

    Rules marked own_process run in a forked child on Linux while this
    process runs the others (the machine's second core); if the child
    cannot be had or fails, they run here.  The result is the same either
    way.  REVIEWBOT_JOBS=1 turns this off."""
    return start(rules, contexts, only, prefork=Prefork(rules, _added_c_lines(contexts), only)).finish()


def _only_new_files(contexts: list[PatchContext]) -> bool:
    """The series' C files are all added whole (what the rule process
    parses ahead of time)."""
    files = [fv for c in contexts for fv in c.c_files()]
    return bool(files) and all(fv.diff.is_new for fv in files)


def _selected(rules: list[Rule], only: set[str] | None) -> list[Rule]:
    return [r for r in rules if not only or r.code in only or r.name in only]


class Run:
    """Rules started on a series: start() hands the own-process rules to the
    child process of a Prefork made earlier, if there is one; they need no
    parse trees, so the review parses while they run.  When the series
    only adds whole files, the offload rules are shared too, a family at a
    time: that process is left the families it will have worked ahead for
    (from the raw mail: the parse trees, the lock flows; see _to_give()),
    this one runs the others (it has the files parsed), then takes those
    the child has not started on while the child is still busy with its
    own.  finish() runs the rest here and gathers everything: the findings
    are the same whoever ran which rule."""

    def __init__(self, rules: list[Rule], contexts: list[PatchContext], only: set[str] | None,
                 prefork: "Prefork | None" = None):
        self.contexts = contexts
        self.selected = _selected(rules, only)
        self.side = [r for r in self.selected if r.own_process]
        self.main = [r for r in self.selected if not r.own_process]
        self.shared: list[list[Rule]] = []     # offload rules, a group per family
        self.child = None
        if prefork is not None:
            if self.side and self.main:
                shared: list[list[Rule]] = []
                if _only_new_files(contexts):
                    moved = [r for r in self.main if r.offload]
                    if moved and len(moved) < len(self.main):
                        shared = _by_family(moved)[:MAX_SHARED]
                self.child = prefork.hand(self.side, contexts, shared)
                if self.child is not None:  # else no child after all: everything here
                    self.shared = shared
                    gone = {r.code for g in shared for r in g}
                    self.main = [r for r in self.main if r.code not in gone]
            prefork.cancel()        # not used (or already handed over): let it go

    def cancel(self) -> None:
        if self.child is not None:
            self.child.kill()

    def finish(self) -> tuple[dict[int, list[Finding]], list[Finding], list[str]]:
        try:
            return self._finish()
        finally:
            self.cancel()       # interrupted: do not leave it running

    def _finish(self):
        contexts, child = self.contexts, self.child
        results, done = [], set()

        def here(rules):
            results.append(_run_serial(rules, contexts))
            done.update(r.code for r in rules)
        here(self.main)
        # the shared groups the child was not given (it will not have
        # worked ahead on what they need), then, while the child is still
        # on its own rules, those it was given and has not taken yet
        for i, g in enumerate(self.shared):
            if i not in child.given:
                here(g)
        while self.shared and child.busy() and (i := child.take()) is not None:
            if i < len(self.shared):
                here(self.shared[i])
        shared = [r for g in self.shared for r in g]
        if self.side or shared:
            got = child.result() if child is not None else None
            if got is not None:
                ran, found = got
                results.extend(found)
                done.update(ran)
            # whatever nobody ran (no child, or it failed): here
            rest = [r for r in self.side + shared if r.code not in done]
            if rest:
                results.append(_run_serial(rest, contexts))
        return _merge(results, self.selected)


def _by_family(rules: list[Rule]) -> list[list[Rule]]:
    """RULES grouped by family (the rules of a family share their caches:
    the lock flows, the release tables), so that one process runs a whole
    family."""
    groups: dict[str, list[Rule]] = {}
    for r in rules:
        groups.setdefault(r.family, []).append(r)
    return list(groups.values())


def _previews(rule: Rule) -> bool:
    return type(rule).preview is not Rule.preview


# groups of offload rules one review may share with the rule process (a byte each)
MAX_SHARED = 255


def start(rules: list[Rule], contexts: list[PatchContext], only: set[str] | None = None,
          prefork: "Prefork | None" = None) -> Run:
    return Run(rules, contexts, only, prefork)


class Prefork:
    """A child process forked before the series is applied: it runs the
    own-process rules' prepare() (numpy and the tree index for the
    duplicated-code search) and, once the raw mail is in, their preview()
    (and that of the offload rules), while this process assembles, applies
    and builds the contexts; then it gets them (pickled, through a memfd)
    and runs the rules it is given.  Made only where a fork would be
    (Linux, REVIEWBOT_JOBS unset, enough added lines); any failure leaves
    the rules to this process."""

    def __init__(self, rules: list[Rule] | None, added_c_lines: int = 0, only: set[str] | None = None,
                 tree: str | None = None):
        self.tree = tree
        self.only = only
        self.child: _Child | None = None
        self.to_child: int | None = None
        self.tickets: int | None = None     # write end of the shared rules' pipe
        self.mem: int | None = None
        self.mem_end = 0
        self.side: list[Rule] | None = None
        self.rules: list[Rule] | None = None
        if rules is None:           # early(): the child finds the rules itself
            if _may_fork():
                self._fork()
        elif self._worth_it(rules, added_c_lines) and _may_fork():
            self._fork()

    @classmethod
    def early(cls, only: set[str] | None = None, tree: str | None = None) -> "Prefork":
        """A child forked at the start of `reviewbot review`, before the
        mail stack is imported and the thread fetched: it finds the rules
        and loads numpy and the index meanwhile.  adopt() keeps it for a
        series worth it, or lets it go."""
        return cls(None, only=only, tree=tree)

    def adopt(self, rules: list[Rule], added_c_lines: int) -> "Prefork":
        if not self._worth_it(rules, added_c_lines):
            self.cancel()
        return self

    def _worth_it(self, rules: list[Rule], added_c_lines: int) -> bool:
        self.rules = _selected(rules, self.only)
        self.side = [r for r in self.rules if r.own_process]
        return bool(self.side) and len(self.side) < len(self.rules) and added_c_lines >= FORK_MIN_ADDED

    def _fork(self) -> None:
        # The raw mail and then the contexts go through an anonymous memory
        # file (the child may still be importing when they are ready: a
        # pipe would make us wait for it); the pipe only says where they
        # are ("P|C offset length" lines), or closes.
        fds = []
        try:
            mem = os.memfd_create("reviewbot-contexts", os.MFD_CLOEXEC)
            fds.append(mem)
            r1, w1 = os.pipe()              # length of the contexts: here -> child
            fds += [r1, w1]
            r2, w2 = os.pipe()              # results: child -> here
            fds += [r2, w2]
            r3, w3 = os.pipe()              # shared rules not taken yet: a byte each, read by both
            fds += [r3, w3]
            os.set_blocking(r3, False)
            flag = mmap.mmap(-1, 2)         # shared: the child's progress (see _Child)
        except (OSError, AttributeError):
            for fd in fds:
                os.close(fd)
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            for fd in fds:
                os.close(fd)
            return
        if pid == 0:
            _in_child(lambda: self._child(r1, w2, mem, r3, flag), close=(w1, r2, w3))
        os.close(r1)
        os.close(w2)
        self.mem = mem
        self.mem_end = 0
        self.to_child = w1
        self.tickets = w3
        self.child = _Child(pid, r2, r3, flag)

    def _child(self, r1: int, w2: int, mem: int, tickets: int, flag) -> None:
        if self.rules is None:
            self.rules = _selected(discover(), self.only)
            self.side = [r for r in self.rules if r.own_process]
        for r in self.side:
            try:
                r.prepare(self.tree)
            except Exception:
                pass
        # the classes the contexts are made of, loaded while we wait for them
        importlib.import_module(f"{__package__}.series")
        while True:
            head = _read_line(r1).split()
            if len(head) != 3:
                return              # cancelled
            data = _read_at(mem, int(head[1]), int(head[2]))
            if head[0] == b"P":
                self._preview_here(data, lambda: _readable(r1), flag)
                continue
            break
        os.close(mem)
        gc.disable()                    # a big unpickle: no collections in between
        contexts, codes, groups = pickle.loads(data)
        by_code = {r.code: r for r in self.rules}
        _child_run(w2, [by_code[c] for c in codes],
                   [[by_code[c] for c in g if c in by_code] for g in groups], tickets, flag, contexts)

    def _preview_here(self, mbox: bytes, handed=lambda: False, flag=None) -> None:
        """In the child: the own-process rules work ahead (Rule.preview);
        then, unless the contexts are in already (HANDED()), the files the
        mail adds whole are parsed and the offload rules work ahead (for
        the shared rules, see Run); once they are in, the rules come first
        and compute what they need as they go.  A step begun is finished,
        and FLAG[1] says which one it is in (_PARSING, _OFFLOAD, _AHEAD):
        hand() then knows what it will have done."""
        def step(n):
            if flag is not None:
                flag[1] = n

        def previews(rules):
            for r in rules:
                try:
                    r.preview(mbox)
                except Exception:
                    pass
        previews([r for r in self.rules if r.own_process])
        if not any(r.offload for r in self.rules):
            step(_AHEAD)
            return
        if handed():
            return
        step(_PARSING)
        try:
            for path, text in whole_new_files(mbox):
                if path.endswith((".c", ".h")):
                    cparse.warm(cparse.parse(text))
        except Exception:
            pass
        if handed():
            return
        step(_OFFLOAD)
        previews([r for r in self.rules if r.offload and not r.own_process])
        step(_AHEAD)

    def preview(self, mbox: bytes) -> None:
        """Let the child's rules work ahead on the raw mail (Rule.preview)."""
        if self.child is not None and self.to_child is not None and self.mem is not None:
            try:
                sent = self._send(b"P", mbox)
            except OSError as exc:
                log.debug("cannot hand the mail over: %s", exc)
                sent = False
            if not sent:
                self.cancel()

    def _send(self, kind: bytes, data: bytes) -> bool:
        """DATA into the memory file, then a line saying where it is."""
        off = self.mem_end
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.pwrite(self.mem, view[done:], off + done)
        self.mem_end = off + len(data)
        # a child that died before reading must not take this process with
        # it: the CLI lets SIGPIPE kill (for `| head`)
        old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            os.write(self.to_child, b"%s %d %d\n" % (kind, off, len(data)))
            return True
        except OSError as exc:
            log.debug("the rule process is gone: %s", exc)
            return False
        finally:
            signal.signal(signal.SIGPIPE, old_pipe)

    def hand(self, rules: list[Rule], contexts: list[PatchContext], shared: list[list[Rule]] = ()
             ) -> "_Child | None":
        """Give the child the contexts: it runs RULES, then takes, one at a
        time while any are left (see _Child.take()), the groups of SHARED
        rules it will have worked ahead for (its .given; the rest are this
        process's)."""
        child = self.child
        if child is None or self.to_child is None or self.mem is None or self.tickets is None:
            return None
        try:
            with collector_paused():    # pickling makes no garbage worth a full collection
                data = pickle.dumps((contexts, [r.code for r in rules], [[r.code for r in g] for g in shared]),
                                    protocol=pickle.HIGHEST_PROTOCOL)
            child.given = _to_give(shared, child.flag[1])
            os.write(self.tickets, bytes(child.given))
            os.close(self.tickets)      # no more: an empty pipe reads as the end
            self.tickets = None
            sent = self._send(b"C", data)
        except Exception as exc:
            log.debug("cannot hand the contexts over: %s", exc)
            sent = False
        self.child = None           # the Run has it now (or nobody)
        self._close_fds()
        if not sent:
            child.kill()
            return None
        return child

    def cancel(self) -> None:
        self._close_fds()
        if self.child is not None:
            self.child.kill()
            self.child = None

    def _close_fds(self) -> None:
        for name in ("to_child", "mem", "tickets"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)


@contextlib.contextmanager
def collector_paused():
    """The cyclic garbage collector off for a while: a review (or the
    hand-over of its contexts) leaves almost no cyclic garbage, but
    allocates enough to set off full collections of everything the process
    holds (parse trees, caches), about 30 ms each."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _merge(results, selected: list[Rule]):
    per_patch: dict[int, list[Finding]] = {}
    series_findings: list[Finding] = []
    notes: list[tuple[str, str]] = []
    for pp, sf, nn in results:
        for idx, fs in pp.items():
            per_patch.setdefault(idx, []).extend(fs)
        series_findings.extend(sf)
        notes.extend(nn)
    order = {r.code: i for i, r in enumerate(selected)}
    notes.sort(key=lambda n: order.get(n[0], 0))     # stable: in rule order, as run serially
    for idx, fs in per_patch.items():
        per_patch[idx] = _dedupe(fs)
    return per_patch, _dedupe(series_findings), [n for _, n in notes]


def _run_serial(rules: list[Rule], contexts: list[PatchContext]
                ) -> tuple[dict[int, list[Finding]], list[Finding], list[tuple[str, str]]]:
    per_patch: dict[int, list[Finding]] = {}
    series_findings: list[Finding] = []
    notes: list[tuple[str, str]] = []
    for rule in rules:
        for ctx in contexts:
            try:
                got = list(rule.check_patch(ctx))
            except Exception as exc:
                log.debug("rule %s crashed", rule.code, exc_info=True)
                notes.append((rule.code, f"rule {rule.code} ({rule.name}) failed on patch "
                                         f"{ctx.patch.label}: {exc.__class__.__name__}"))
                continue
            per_patch.setdefault(ctx.patch.index, []).extend(got)
        try:
            series_findings.extend(rule.check_series(contexts))
        except Exception as exc:
            log.debug("rule %s crashed", rule.code, exc_info=True)
            notes.append((rule.code, f"rule {rule.code} ({rule.name}) failed on the series: "
                                     f"{exc.__class__.__name__}"))
    return per_patch, series_findings, notes


# A child costs about 0.15 s of its own (fork, and numpy and the tree index
# loaded there): worth it from a few hundred added lines on (a 17-patch
# series adding 400 lines gains 0.2-0.3 s), not for the small patches that
# make up most of a list (the noise bench, 614 reviews in one process,
# took 127 s instead of 49 s when every review forked).
FORK_MIN_ADDED = 300


def _added_c_lines(contexts: list[PatchContext]) -> int:
    return sum(len(fv.added_lines) for c in contexts for fv in c.c_files())


def _may_fork() -> bool:
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and os.environ.get("REVIEWBOT_JOBS", "") != "1" and (os.cpu_count() or 1) > 1
            and threading.active_count() == 1)


class _Child:
    """A forked process running some rules.  result() is (codes of the
    rules it ran, what _run_serial gave for them), or None when the child
    failed (the caller then runs them itself).  take() hands out the
    shared rules, by index, to whichever process asks first."""

    def __init__(self, pid: int, fd: int, tickets: int, flag: mmap.mmap):
        self.pid, self.fd, self.tickets, self.flag = pid, fd, tickets, flag
        self.given: list[int] = []      # shared groups handed to it (tickets in the pipe)

    def take(self) -> int | None:
        return _take(self.tickets) if self.tickets is not None else None

    def busy(self) -> bool:
        """The child is still on its own rules."""
        return self.flag[0] == 0

    def result(self):
        try:
            with os.fdopen(self.fd, "rb") as f:
                data = f.read()
            _, status = os.waitpid(self.pid, 0)
            self.pid = None
            if status != 0 or not data:
                return None
            return pickle.loads(data)
        except Exception:
            log.debug("rule process failed", exc_info=True)
            return None
        finally:
            self.kill()

    def kill(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self.pid = None
        if self.tickets is not None:
            try:
                os.close(self.tickets)
            except OSError:
                pass
            self.tickets = None


def _take(fd: int) -> int | None:
    """The next shared rule's index from the pipe both processes read (a
    one-byte read: each byte goes to one of them), or None when none is
    left."""
    try:
        b = os.read(fd, 1)
    except (BlockingIOError, OSError):
        return None
    return b[0] if b else None


def _in_child(body, close: tuple[int, ...] = ()) -> None:
    """The life of a forked rule process: the parent's ends of the pipes
    closed, default signal handling (the parent's handlers raise), BODY,
    and exit without the parent's cleanups."""
    code = 1
    try:
        for fd in close:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        body()
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


def _read_at(fd: int, off: int, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        b = os.pread(fd, size - got, off + got)
        if not b:
            raise EOFError
        parts.append(b)
        got += len(b)
    return b"".join(parts)


# How far the child got working ahead (FLAG[1]): parsing the files the mail
# adds whole, then the offload rules' previews, then all done (0: its own
# rules' previews, or no mail yet).
_PARSING, _OFFLOAD, _AHEAD = 1, 2, 3


def _to_give(groups: list[list[Rule]], step: int) -> list[int]:
    """The shared groups (indexes) to leave to the child, which is at STEP
    of working ahead (it finishes that step, and goes no further once it
    has the contexts): all of them once it is on the offload rules'
    previews, those that need no more than the parse when it is parsing,
    none before (it would have to parse the files first, and this process
    has them parsed)."""
    if step in (_OFFLOAD, _AHEAD):
        return list(range(len(groups)))
    if step == _PARSING:
        return [i for i, g in enumerate(groups) if not any(_previews(r) for r in g)]
    return []


def _child_run(w: int, rules: list[Rule], groups: list[list[Rule]], tickets: int, flag,
               contexts: list[PatchContext]) -> None:
    """In the child: its own RULES, then shared groups as long as the other
    process has not taken them; the result names what ran."""
    results = [_run_serial(rules, contexts)]
    ran = [r.code for r in rules]
    flag[0] = 1
    while (i := _take(tickets)) is not None:
        if i < len(groups):
            results.append(_run_serial(groups[i], contexts))
            ran.extend(r.code for r in groups[i])
    out = pickle.dumps((ran, results), protocol=pickle.HIGHEST_PROTOCOL)
    with os.fdopen(w, "wb") as f:
        f.write(out)


def _read_line(fd: int) -> bytes:
    """One short line from a pipe, read unbuffered (so that _readable()
    tells whether the next one is there)."""
    out = bytearray()
    while len(out) < 128:
        b = os.read(fd, 1)
        if not b:
            break
        out += b
        if b == b"\n":
            break
    return bytes(out)


def _readable(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _dedupe(fs: list[Finding]) -> list[Finding]:
    seen = set()
    out = []
    for f in sorted(fs, key=lambda f: (f.path or "", f.line or 0, f.rule)):
        k = (f.rule, f.path, f.line, f.message)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out
