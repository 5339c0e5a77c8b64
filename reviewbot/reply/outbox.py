"""Reply mboxes that `git send-email` sends unchanged."""
from __future__ import annotations

import email.charset
import email.policy
import email.utils
import os
import tempfile
from email.message import EmailMessage

from reviewbot.reply.render import ReplyDraft

_POLICY = email.policy.default.clone(linesep="\n", max_line_length=998)


def to_message(r: ReplyDraft) -> EmailMessage:
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = r.from_addr
    if r.to:
        msg["To"] = ", ".join(r.to)
    if r.cc:
        msg["Cc"] = ", ".join(r.cc)
    msg["Subject"] = r.subject
    msg["Date"] = r.date
    msg["Message-ID"] = f"<{r.msgid}>"
    if r.in_reply_to:
        msg["In-Reply-To"] = f"<{r.in_reply_to}>"
    if r.references:
        msg["References"] = " ".join(f"<{m}>" for m in r.references)
    body = r.body if r.body.endswith("\n") else r.body + "\n"
    try:
        body.encode("ascii")
        cte = "7bit"
        charset = "us-ascii"
    except UnicodeEncodeError:
        cte = "8bit"
        charset = "utf-8"
    msg.set_content(body, charset=charset, cte=cte)
    return msg


FROM_LINE = b"From reviewbot Mon Sep 17 00:00:00 2001\n"
_GIT_Q_SAFE = frozenset(b"-!*+/" + bytes(range(0x30, 0x3a)) + bytes(range(0x41, 0x5b)) + bytes(range(0x61, 0x7b)))


def _git_display_name(name: str) -> str:
    """A display name the way git send-email writes (and compares) it:
    UTF-8 names as one Q-encoded word (git decodes only Q, not B: a
    B-encoded From: that differs from the sender makes it put a second
    From: line into the body), specials quoted."""
    if not name:
        return ""
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        enc = "".join(chr(b) if b in _GIT_Q_SAFE else f"={b:02X}" for b in name.encode("utf-8"))
        return f"=?UTF-8?q?{enc}?="
    return email.utils.formataddr((name, "x@x")).rsplit(" <", 1)[0]


def _git_address_list(header) -> str:
    parts = []
    for a in header.addresses:
        addr = a.addr_spec
        name = _git_display_name(a.display_name)
        parts.append(f"{name} <{addr}>" if name else addr)
    return ",\n ".join(parts) if len(", ".join(parts)) > 900 else ", ".join(parts)


def message_bytes(r: ReplyDraft) -> bytes:
    """The reply as RFC 5322 bytes, address headers written as git
    send-email reads them."""
    msg = to_message(r)
    raw = msg.as_bytes(policy=_POLICY)
    head, sep, body = raw.partition(b"\n\n")
    lines: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                lines.append(line)
            continue
        name = line.split(b":", 1)[0].decode("ascii", "replace")
        skipping = name in ("From", "To", "Cc")
        if skipping:
            lines.append(f"{name}: {_git_address_list(msg[name])}".encode("utf-8"))
        else:
            lines.append(line)
    return b"\n".join(lines) + sep + body


def single_message_file(r: ReplyDraft) -> bytes:
    """One reply per file, as `git format-patch` writes one patch per file:
    a From_ line, then the message as is.  git send-email sends the body
    verbatim, so no mboxrd `>From ` escaping here (it would be mailed)."""
    return FROM_LINE + message_bytes(r)


def mbox_bytes(replies: list[ReplyDraft]) -> bytes:
    out = bytearray()
    for r in replies:
        raw = message_bytes(r)
        out += FROM_LINE
        # mboxrd: escape From lines in the body
        for line in raw.split(b"\n"):
            stripped = line.lstrip(b">")
            if stripped.startswith(b"From "):
                line = b">" + line
            out += line + b"\n"
        if not out.endswith(b"\n\n"):
            out += b"\n"
    return bytes(out)


def atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write(replies: list[ReplyDraft], dest: str) -> list[str]:
    """Write replies: one mbox file, or one file per reply when dest is a
    directory (existing, or ending in '/')."""
    if dest.endswith("/") or os.path.isdir(dest):
        os.makedirs(dest, exist_ok=True)
        paths = []
        for n, r in enumerate(replies, start=1):
            label = "cover" if r.patch_index is None else f"{r.patch_index:04d}"
            path = os.path.join(dest, f"{n:04d}-reply-{label}.mbox")
            atomic_write(path, single_message_file(r))
            paths.append(path)
        return paths
    atomic_write(dest, mbox_bytes(replies))
    return [dest]
