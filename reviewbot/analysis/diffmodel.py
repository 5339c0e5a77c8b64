"""The diff model: files, hunks and lines of one patch, via unidiff.

Mail mangles diffs: blank context lines lose their leading space, CRLF line
ends appear, a '-- ' signature follows the diff, and hunk headers may not
match the lines under them.  `normalise` repairs what can be repaired
before unidiff parses the text.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

import unidiff

_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
MAX_DIFF_LINES = 400_000
# No kernel file is anywhere near a million lines; a hunk header beyond
# that is corrupt (or hostile) and would make line-indexed work unbounded.
MAX_LINE_NO = 1_000_000


class DiffLine(NamedTuple):
    """One line of a hunk (a tuple: a new file is thousands of them, made,
    compared and handed to the rule process in bulk)."""
    kind: str            # ' ', '+', '-'
    text: str
    old_no: int | None
    new_no: int | None


@dataclass
class Hunk:
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    section: str
    lines: list[DiffLine] = field(default_factory=list)

    def added(self) -> list[DiffLine]:
        return list(self._split()[0])

    def removed(self) -> list[DiffLine]:
        return list(self._split()[1])

    def _split(self) -> tuple[tuple[DiffLine, ...], tuple[DiffLine, ...]]:
        """(added, removed) lines, remembered until the lines change."""
        key = (id(self.lines), len(self.lines))
        got = self.__dict__.get("_split_memo")
        if got is None or got[0] != key:
            got = (key, (tuple(ln for ln in self.lines if ln.kind == "+"),
                         tuple(ln for ln in self.lines if ln.kind == "-")))
            self.__dict__["_split_memo"] = got
        return got[1]

    @property
    def header(self) -> str:
        return f"@@ -{self.old_start},{self.old_len} +{self.new_start},{self.new_len} @@{self.section}"

    def __getstate__(self):
        # handed to the rule process: the lines as four columns (pickled at
        # C speed), no memo
        state = {k: v for k, v in self.__dict__.items() if k not in ("lines", "_split_memo")}
        ls = self.lines
        state["_columns"] = ("".join(ln.kind for ln in ls), [ln.text for ln in ls],
                             [ln.old_no for ln in ls], [ln.new_no for ln in ls])
        return state

    def __setstate__(self, state):
        kinds, texts, olds, news = state.pop("_columns")
        self.__dict__.update(state)
        # tuple.__new__ at C speed (what DiffLine(...) does, without its
        # Python-level __new__)
        self.lines = list(map(tuple.__new__, repeat(DiffLine), zip(kinds, texts, olds, news)))


@dataclass
class FileDiff:
    path: str               # post-image path ('' for a deleted file: see old_path)
    old_path: str
    is_new: bool = False
    is_deleted: bool = False
    is_binary: bool = False
    is_rename: bool = False
    safe: bool = True       # False for '../' or absolute paths
    header_lines: list[str] = field(default_factory=list)   # 'diff --git', '---', '+++'
    old_blob: str | None = None   # the pre-image blob its 'index' line names (abbreviated), if any
    hunks: list[Hunk] = field(default_factory=list)

    def added(self) -> list[DiffLine]:
        return list(self._split()[0])

    def removed(self) -> list[DiffLine]:
        return list(self._split()[1])

    def _split(self) -> tuple[tuple[DiffLine, ...], tuple[DiffLine, ...]]:
        """(added, removed) lines, remembered until the hunks change (rules
        ask again and again; a whole new file is thousands of lines)."""
        key = tuple((id(h), len(h.lines)) for h in self.hunks)
        got = self.__dict__.get("_split_memo")
        if got is None or got[0] != key:
            parts = [h._split() for h in self.hunks]
            got = (key, (tuple(ln for a, _ in parts for ln in a), tuple(ln for _, r in parts for ln in r)))
            self.__dict__["_split_memo"] = got
        return got[1]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_split_memo"}

    def hunk_for_new_line(self, line: int) -> Hunk | None:
        for h in self.hunks:
            for ln in h.lines:
                if ln.new_no == line and ln.kind != "-":
                    return h
        return None

    @property
    def is_c(self) -> bool:
        return self.path.endswith((".c", ".h"))


@dataclass
class PatchDiff:
    files: list[FileDiff] = field(default_factory=list)
    text: str = ""            # the normalised diff text
    notes: list[str] = field(default_factory=list)

    def file(self, path: str) -> FileDiff | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    @property
    def added_count(self) -> int:
        return sum(len(f.added()) for f in self.files)


def split_body(body: str) -> tuple[str, str]:
    """Split a patch mail body into (commit message part, diff text).
    The commit message part keeps the '---' notes and diffstat."""
    lines = body.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("diff --git ") or (
            line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
        ) or (line.startswith("Index: ") and i + 1 < len(lines) and lines[i + 1].startswith("====")):
            return "\n".join(lines[:i]), "\n".join(lines[i:])
    return body, ""


def commit_message(head: str) -> str:
    """The commit message proper: everything before the first '---' line."""
    out = []
    for line in head.split("\n"):
        if line.rstrip() == "---":
            break
        out.append(line)
    return "\n".join(out).strip("\n")


def normalise(diff: str) -> tuple[str, list[str]]:
    """Repair mail damage so that unidiff can parse the diff.  Returns the
    repaired text and notes on what was repaired."""
    notes: list[str] = []
    lines = diff.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if len(lines) > MAX_DIFF_LINES:
        notes.append(f"diff has {len(lines)} lines; read the first {MAX_DIFF_LINES}")
        lines = lines[:MAX_DIFF_LINES]
    out: list[str] = []
    i = 0
    blank_fixed = recounted = dropped = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        m = _HUNK_RE.match(line)
        if not m:
            if line == "-- " or line.startswith("-- \n"):
                break       # signature after the diff
            if line.strip():    # blank lines between hunks carry nothing
                out.append(line)
            i += 1
            continue
        old_len = int(m.group(2)) if m.group(2) is not None else 1
        new_len = int(m.group(4)) if m.group(4) is not None else 1
        want_old, want_new = old_len, new_len
        body: list[str] = []
        got_old = got_new = 0
        i += 1
        while i < n:
            ln = lines[i]
            if _HUNK_RE.match(ln) or ln.startswith("diff --git "):
                break
            if ln.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ "):
                break
            complete = got_old >= want_old and got_new >= want_new
            if ln == "":
                # A blank line is a mangled empty context line only while the
                # header still expects lines and more hunk lines follow.
                if complete or not _more_hunk_lines(lines, i + 1):
                    break
                body.append(" ")
                blank_fixed += 1
                got_old += 1
                got_new += 1
            elif ln == "-- " and complete:
                break
            elif ln[0] == " ":
                body.append(ln)
                got_old += 1
                got_new += 1
            elif ln[0] == "-":
                body.append(ln)
                got_old += 1
            elif ln[0] == "+":
                body.append(ln)
                got_new += 1
            elif ln[0] == "\\":
                body.append(ln)
            else:
                break
            i += 1
        old_start = int(m.group(1))
        new_start = int(m.group(3))
        if max(old_start, new_start, old_len, new_len) > MAX_LINE_NO:
            dropped += 1
            continue
        if (got_old, got_new) != (old_len, new_len):
            recounted += 1
        if got_old == 0 and old_start > 0 and old_len != 0:
            old_start -= 1
        if got_new == 0 and new_start > 0 and new_len != 0:
            new_start -= 1
        out.append(f"@@ -{old_start},{got_old} +{new_start},{got_new} @@{m.group(5)}")
        out.extend(body)
    if blank_fixed:
        notes.append(f"{blank_fixed} blank context line(s) had lost their leading space")
    if dropped:
        notes.append(f"ignored {dropped} hunk(s) whose header claims a line beyond {MAX_LINE_NO}")
    if recounted:
        notes.append(f"{recounted} hunk header(s) did not match their lines and were recounted")
    text = "\n".join(out)
    if not text.endswith("\n"):
        text += "\n"
    return text, notes


def _more_hunk_lines(lines: list[str], j: int) -> bool:
    while j < len(lines):
        ln = lines[j]
        if ln == "":
            j += 1
            continue
        if ln == "-- ":
            return False
        return ln[0] in " +-" and not ln.startswith(("--- ", "-- "))
    return False


def _safe_path(path: str) -> bool:
    if not path or path.startswith("/") or "\x00" in path:
        return False
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../"))


def _strip_prefix(path: str | None) -> str:
    if not path or path == "/dev/null":
        return ""
    if path.startswith(("a/", "b/")):
        return path[2:]
    return path


_INDEX_LINE = re.compile(r"^index ([0-9a-f]{7,40})\.\.[0-9a-f]{7,40}(?: [0-7]{6})?\s*$")


def parse(diff: str) -> PatchDiff:
    """Parse a diff into the model; never raises on bad input."""
    text, notes = normalise(diff)
    result = PatchDiff(text=text, notes=notes)
    if not text.strip():
        return result
    try:
        ps = unidiff.PatchSet(text)
    except Exception as exc:  # unidiff raises several kinds on bad input
        result.notes.append(f"the diff could not be parsed ({exc.__class__.__name__}: {str(exc)[:80]})")
        return result
    for pf in ps:
        new = _strip_prefix(pf.target_file)
        old = _strip_prefix(pf.source_file)
        fd = FileDiff(
            path=new if not pf.is_removed_file else "",
            old_path=old,
            is_new=pf.is_added_file,
            is_deleted=pf.is_removed_file,
            is_binary=bool(getattr(pf, "is_binary_file", False)),
            is_rename=bool(getattr(pf, "is_rename", False)),
        )
        for p in (fd.path, fd.old_path):
            if p and not _safe_path(p):
                fd.safe = False
        if not fd.safe:
            result.notes.append(f"ignored a diff of an unsafe path {(fd.path or fd.old_path)[:80]!r}")
            continue
        if pf.patch_info:
            fd.header_lines = [ln.rstrip("\n") for ln in pf.patch_info if ln.startswith(("diff --git",))]
            for ln in pf.patch_info:
                m = _INDEX_LINE.match(ln)
                if m and m.group(1).strip("0"):
                    fd.old_blob = m.group(1)
        fd.header_lines += [f"--- {pf.source_file}", f"+++ {pf.target_file}"]
        for h in pf:
            hunk = Hunk(h.source_start, h.source_length, h.target_start, h.target_length,
                        (" " + h.section_header) if h.section_header else "")
            for ln in h:
                if ln.line_type not in (" ", "+", "-"):
                    continue
                hunk.lines.append(DiffLine(ln.line_type, ln.value.rstrip("\n"),
                                           ln.source_line_no, ln.target_line_no))
            fd.hunks.append(hunk)
        result.files.append(fd)
    return result
