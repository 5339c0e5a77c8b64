"""Reply mboxes that `git send-email` sends unchanged."""
from __future__ import annotations

import email.charset
import email.policy
import os
import tempfile
from email.message import EmailMessage
from email.headerregistry import Address

from .render import ReplyDraft

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


def mbox_bytes(replies: list[ReplyDraft]) -> bytes:
    out = bytearray()
    for r in replies:
        raw = to_message(r).as_bytes(policy=_POLICY)
        out += b"From reviewbot Mon Sep 17 00:00:00 2001\n"
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
            atomic_write(path, mbox_bytes([r]))
            paths.append(path)
        return paths
    atomic_write(dest, mbox_bytes(replies))
    return [dest]
