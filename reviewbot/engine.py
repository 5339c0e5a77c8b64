"""The rule engine: discovery of rules, the context they see, running them.

A rule is a class in a module of the `reviewbot.rules` package (the
project's `rules/` folder), or one registered through the
`reviewbot.rules` entry-point group.  Its docstring is its documentation.
A rule implements check_patch(ctx) and/or check_series(patches); what is
known about the tree (the duplicate index, the tree knowledge base) it
reads through the context.  Everything runs in one process.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from reviewbot.analysis import cparse
from reviewbot.analysis.diffmodel import FileDiff, PatchDiff
from reviewbot.findings import Finding, Location

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

    @cached_property
    def post_text(self) -> str:
        """The post-image, or what the hunks show of it when no tree is known
        (the lines in between are blank so that line numbers match, and a
        function shown only from its middle gets its head and closing braces
        rebuilt in the gaps: see synth_lines)."""
        if self.post is not None:
            return self.post
        return self._rebuilt(True)[0]

    @cached_property
    def pre_text(self) -> str:
        if self.pre is not None:
            return self.pre
        return self._rebuilt(False)[0]

    def synth_lines(self, new: bool) -> set[int]:
        """Lines of a reconstructed image that were written to rebuild a
        function around its hunks (not code anyone wrote)."""
        if (self.post if new else self.pre) is not None:
            return set()
        return self._rebuilt(new)[1]

    def _rebuilt(self, new: bool) -> tuple[str, set[int]]:
        memo = self.__dict__.setdefault("_rebuilt_memo", {})
        if new not in memo:
            from reviewbot.analysis.lockflow import rebuilt_text
            text, synth = rebuilt_text(self, new)
            memo[new] = (text, synth) if synth else (reconstruct(self.diff, new=new), set())
        return memo[new]

    @cached_property
    def post_tree(self):
        return cparse.parse(self.post_text)

    @cached_property
    def pre_tree(self):
        return cparse.parse(self.pre_text)

    @cached_property
    def added_lines(self) -> set[int]:
        return {ln.new_no for ln in self.diff.added() if ln.new_no is not None}

    @cached_property
    def changed_lines(self) -> set[int]:
        """The added lines, and for each run of removed lines the post-image
        line it sat before (a patch that only deletes an unlock or a put
        changes the function around it)."""
        out = set(self.added_lines)
        for h in self.diff.hunks:
            pending = False
            last_new = None
            for ln in h.lines:
                if ln.kind == "-":
                    pending = True
                    continue
                if ln.new_no:
                    if pending:
                        out.add(ln.new_no)
                        pending = False
                    last_new = ln.new_no
            if pending and last_new:
                out.add(last_new)
        return out

    def old_line(self, new_no: int) -> int | None:
        """The pre-image line that post-image line NEW_NO was (None for an
        added line): outside the hunks, lines only shift."""
        shift = 0
        for h in self.diff.hunks:
            first_new = h.new_start if h.lines else 0
            if new_no < first_new:
                break
            for ln in h.lines:
                if ln.new_no == new_no:
                    return ln.old_no if ln.kind == " " else None
            shift = (h.old_start + h.old_len) - (h.new_start + h.new_len)
        return new_no + shift

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

    @cached_property
    def knowledge(self):
        """The tree knowledge base (reviewbot.tree.knowledge: may_sleep,
        contexts, locks_taken, order_edge, release_for, ...) of the base,
        with the post-images of the files the series touched up to this
        patch laid over it; None without an index (`reviewbot index`)."""
        from reviewbot.tree import knowledge
        try:
            return knowledge.for_context(self)
        except Exception:           # a broken cache must not stop a review
            log.debug("knowledge base unreadable", exc_info=True)
            return None


class Rule:
    """Base class.  Subclasses set the class attributes and override
    check_patch and/or check_series."""

    code: str = ""
    name: str = ""
    family: str = ""
    severity: str = "warning"
    confidence: str = "medium"

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
    """The entry points of the `reviewbot.rules` group (out-of-tree rules)."""
    from importlib.metadata import entry_points
    return list(entry_points(group="reviewbot.rules"))


def _register(found: dict[str, Rule], rule: Rule) -> None:
    if not _CODE_RE.match(rule.code) or not _NAME_RE.match(rule.name):
        raise ValueError(f"rule {type(rule).__name__}: bad code {rule.code!r} or name {rule.name!r}")
    if rule.code in found:
        raise ValueError(f"duplicate rule code {rule.code}")
    found[rule.code] = rule


def run(rules: list[Rule], contexts: list[PatchContext], only: set[str] | None = None
        ) -> tuple[dict[int, list[Finding]], list[Finding], list[str]]:
    """Run the rules (all, or those named in ONLY, by code or name) over a
    series; returns findings per patch index, series findings, and notes
    about rules that failed (a failing rule never stops a review)."""
    selected = [r for r in rules if not only or r.code in only or r.name in only]
    per_patch: dict[int, list[Finding]] = {}
    series_findings: list[Finding] = []
    notes: list[str] = []
    for rule in selected:
        for ctx in contexts:
            try:
                got = list(rule.check_patch(ctx))
            except Exception as exc:
                log.debug("rule %s crashed", rule.code, exc_info=True)
                notes.append(f"rule {rule.code} ({rule.name}) failed on patch "
                             f"{ctx.patch.label}: {exc.__class__.__name__}")
                continue
            per_patch.setdefault(ctx.patch.index, []).extend(got)
        try:
            series_findings.extend(rule.check_series(contexts))
        except Exception as exc:
            log.debug("rule %s crashed", rule.code, exc_info=True)
            notes.append(f"rule {rule.code} ({rule.name}) failed on the series: {exc.__class__.__name__}")
    return ({idx: _dedupe(fs) for idx, fs in per_patch.items()}, _dedupe(series_findings), notes)


def _dedupe(fs: list[Finding]) -> list[Finding]:
    seen = set()
    out = []
    # the message last: two findings of one rule on one line come out in the
    # same order whatever order the rule found them in (set order varies
    # from one process to the next)
    for f in sorted(fs, key=lambda f: (f.path or "", f.line or 0, f.rule, f.message)):
        k = (f.rule, f.path, f.line, f.message)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out
