"""Reply drafts: interleaved quoting (code) inside a jinja2 frame (template).

The quoting is done here and tested as exact strings; the template only
holds the frame.  Mail text is passed to the template as data, never
compiled as a template.
"""
from __future__ import annotations

import email.utils
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING

from reviewbot.lore import mail

if TYPE_CHECKING:
    import jinja2
from reviewbot.analysis.diffmodel import FileDiff, Hunk
from reviewbot.findings import Finding

CONTEXT = 3          # lines of context quoted above a comment
WIDTH = 72


@dataclass
class ReplyDraft:
    in_reply_to: str
    references: list[str]
    from_addr: str
    to: list[str]
    cc: list[str]
    subject: str
    body: str
    msgid: str
    date: str
    patch_index: int | None = None      # None: the cover letter
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"in_reply_to": self.in_reply_to, "to": self.to, "cc": self.cc,
                "subject": self.subject, "body": self.body}


def _env() -> "jinja2.Environment":
    import jinja2           # only when a reply is drafted (most reviews of clean code draft none)
    loader = jinja2.FunctionLoader(_load_template)
    return jinja2.Environment(loader=loader, autoescape=False, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def _load_template(name: str) -> str:
    return resources.files("reviewbot.templates").joinpath(name).read_text(encoding="utf-8")


def wrap(text: str, width: int = WIDTH) -> str:
    paras = text.strip().split("\n\n")
    out = []
    for p in paras:
        if p.startswith(("    ", "\t")):
            out.append(p)       # code: keep as is
        else:
            out.append(textwrap.fill(" ".join(p.split()), width=width, break_long_words=False,
                                     break_on_hyphens=False))
    return "\n\n".join(out)


def attribution(msg, who: tuple[str, str]) -> str:
    name = who[0] or who[1]
    dt = mail.date_of(msg)
    if dt is None:
        return f"{name} wrote:"
    hour = dt.strftime("%I:%M:%S%p")
    return f"On {dt.strftime('%a, %b %d, %Y')} at {hour} {dt.strftime('%z')}, {name} wrote:"


def _quote(line: str) -> str:
    return ("> " + line).rstrip() if not line.strip() else "> " + line


def quote_hunk_comments(hunk: Hunk, comments: list[tuple[int, int, list[Finding]]]) -> list[str]:
    """Quote the hunk header, then for each comment up to CONTEXT lines
    above it through its last line, with [...] for what is skipped."""
    out = [_quote(hunk.header)]
    pos = 0      # next hunk line index not yet quoted
    for start_idx, end_idx, fs in comments:
        begin = max(pos, start_idx - CONTEXT)
        if begin > pos:
            out.append("> [...]")
        for ln in hunk.lines[begin:end_idx + 1]:
            out.append(_quote(ln.kind + ln.text))
        pos = max(pos, end_idx + 1)
        out.append("")
        for f in fs:
            out.append(wrap(f.message))
            out.append("")
    return out


def _index_of(hunk: Hunk, line: int) -> int | None:
    for i, ln in enumerate(hunk.lines):
        if ln.kind != "-" and ln.new_no == line:
            return i
    return None


def quote_patch(patch, findings: list[Finding]) -> tuple[list[str], list[Finding]]:
    """The quoted diff with comments; returns the lines and the findings
    that could not be anchored in the diff (commented on at the top)."""
    general: list[Finding] = []
    anchored: dict[tuple[int, int], list[tuple[int, int, Finding]]] = {}
    files = patch.diff.files
    for f in findings:
        placed = False
        if f.path and f.line:
            for fi, fd in enumerate(files):
                if fd.path != f.path:
                    continue
                for hi, h in enumerate(fd.hunks):
                    idx = _index_of(h, f.line)
                    if idx is None:
                        continue
                    end = _index_of(h, f.end_line) if f.end_line else None
                    anchored.setdefault((fi, hi), []).append((idx, max(idx, end or idx), f))
                    placed = True
                    break
                if placed:
                    break
        if not placed:
            general.append(f)
    out: list[str] = []
    last_file = None
    for (fi, hi) in sorted(anchored):
        fd: FileDiff = files[fi]
        if fi != last_file:
            out.extend(_quote(h) for h in fd.header_lines)
            last_file = fi
        items = sorted(anchored[(fi, hi)], key=lambda t: (t[1], t[0]))
        merged: list[tuple[int, int, list[Finding]]] = []
        for s, e, f in items:
            if merged and merged[-1][1] == e:
                merged[-1][2].append(f)
                merged[-1] = (min(merged[-1][0], s), e, merged[-1][2])
            else:
                merged.append((s, e, [f]))
        out.extend(quote_hunk_comments(fd.hunks[hi], merged))
    return out, general


def _first_name(who: tuple[str, str]) -> str:
    name = (who[0] or "").strip()
    if not name:
        return ""
    if "," in name:          # "Last, First"
        name = name.split(",", 1)[1].strip()
    return name.split()[0]


def reply_headers(msg, reviewer: tuple[str, str]) -> dict:
    """Reply-all recipients and threading headers for a reply to msg."""
    author = mail.author(msg)
    to = [author] if author[1] else []
    seen = {author[1].lower(), reviewer[1].lower()}
    cc = []
    for pair in mail.addresses(msg, "To", "Cc"):
        if pair[1].lower() in seen:
            continue
        seen.add(pair[1].lower())
        cc.append(pair)
    subject = mail.header(msg, "Subject")
    while subject.lower().startswith("re:"):
        subject = subject[3:].strip()
    msgid = mail.message_id(msg) or ""
    refs = mail.references(msg)
    if msgid and msgid not in refs:
        refs.append(msgid)
    return {"to": [mail.format_addr(p) for p in to], "cc": [mail.format_addr(p) for p in cc],
            "subject": "Re: " + subject, "in_reply_to": msgid, "references": refs}


def make_reply(msg, reviewer: tuple[str, str], quoted: list[str], top: list[str],
               patch_index: int | None, findings: list[Finding], now: datetime | None = None,
               msgid: str | None = None) -> ReplyDraft:
    hdr = reply_headers(msg, reviewer)
    author = mail.author(msg)
    body = _env().get_template("reply.txt.j2").render(
        greeting_name=_first_name(author),
        attribution=attribution(msg, author),
        top="\n".join(top).rstrip("\n"),
        quoted="\n".join(quoted).rstrip("\n"),
        signature=_first_name(reviewer) or reviewer[0] or reviewer[1],
    )
    now = now or datetime.now(timezone.utc)
    domain = reviewer[1].rsplit("@", 1)[-1] if "@" in reviewer[1] else "reviewbot.invalid"
    return ReplyDraft(
        in_reply_to=hdr["in_reply_to"], references=hdr["references"],
        from_addr=mail.format_addr(reviewer), to=hdr["to"], cc=hdr["cc"], subject=hdr["subject"],
        body=body, msgid=msgid or email.utils.make_msgid("reviewbot", domain=domain)[1:-1],
        date=email.utils.format_datetime(now), patch_index=patch_index, findings=findings)


def patch_reply(patch, findings: list[Finding], reviewer, notes: list[str] = (), now=None) -> ReplyDraft:
    quoted, general = quote_patch(patch, findings)
    top: list[str] = []
    if general:
        # Comments about the commit message or the patch as a whole sit
        # under the quoted subject line.
        top.append(_quote(patch.subject))
        top.append("")
        for f in general:
            top.append(wrap(f.message))
            top.append("")
    return make_reply(patch.msg, reviewer, quoted, top, patch.index, findings, now)


def cover_reply(series, findings: list[Finding], reviewer, now=None) -> ReplyDraft:
    msg = series.cover if series.cover is not None else series.patches[0].msg
    top: list[str] = []
    text = mail.body_text(msg).strip().split("\n\n")[0].split("\n")[:5] if msg is not None else []
    for line in text:
        top.append(_quote(line))
    top.append("")
    for f in findings:
        top.append(wrap(f.message))
        top.append("")
    return make_reply(msg, reviewer, [], top, None, findings, now)
