"""Reading mail: split mboxes, parse messages, get at text safely.

Mail is untrusted input.  Everything here is bounded and never raises on
malformed content: a message that cannot be read becomes a note.
"""
from __future__ import annotations

import email.policy
import email.utils
from dataclasses import dataclass, field
from email.message import EmailMessage

from reviewbot.analysis.lazy import LazyModule

# liblore (and the requests stack under it) loads when mail is first read:
# the rule process unpickles our objects without it
lu = LazyModule("liblore.utils")

# A single message larger than this is not a patch anyone reviews by mail.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_MESSAGES = 50_000


@dataclass
class Copies:
    """All copies of one Message-ID seen in the input, in input order."""

    msgid: str
    copies: list[EmailMessage] = field(default_factory=list)


def split_mbox(data: bytes) -> tuple[list[Copies], list[str]]:
    """Split an mbox (or one bare RFC 822 message) into messages grouped by
    Message-ID.  Returns the groups in first-seen order and notes about what
    was dropped."""
    notes: list[str] = []
    if not data.strip():
        return [], notes
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):
        raws = lu.split_mbox_as_bytes(data)
    else:
        raws = [data]
    if len(raws) > MAX_MESSAGES:
        notes.append(f"input holds {len(raws)} messages; read the first {MAX_MESSAGES}")
        raws = raws[:MAX_MESSAGES]
    groups: dict[str, Copies] = {}
    nomsgid = 0
    for raw in raws:
        if len(raw) > MAX_MESSAGE_BYTES:
            notes.append(f"skipped a message of {len(raw) // (1024 * 1024)} MiB (too large to review)")
            continue
        msg = parse_message(raw)
        if msg is None:
            notes.append("skipped a message that could not be parsed")
            continue
        msgid = message_id(msg)
        if not msgid:
            nomsgid += 1
            msgid = f"no-message-id-{nomsgid}@reviewbot.invalid"
            try:
                del msg["Message-ID"]
                msg["Message-ID"] = f"<{msgid}>"
            except Exception:  # pragma: no cover - header API oddities
                pass
        groups.setdefault(msgid, Copies(msgid)).copies.append(msg)
    if nomsgid:
        notes.append(f"{nomsgid} message(s) had no Message-ID")
    return list(groups.values()), notes


def parse_message(raw: bytes) -> EmailMessage | None:
    try:
        msg = lu.parse_message(raw)
        # Touch the headers now so that a broken one fails here, not later.
        for k in ("Subject", "From", "Message-ID"):
            msg.get(k)
        return msg
    except Exception:
        try:
            import email
            return email.message_from_bytes(raw, policy=email.policy.compat32)  # type: ignore[return-value]
        except Exception:
            return None


def header(msg: EmailMessage, name: str) -> str:
    """A header as clean one-line text ("" when absent or unreadable)."""
    try:
        val = msg.get(name)
    except Exception:
        return ""
    if val is None:
        return ""
    try:
        return lu.clean_header(str(val))
    except Exception:
        return " ".join(str(val).split())


def message_id(msg: EmailMessage, name: str = "Message-ID") -> str | None:
    try:
        return lu.get_clean_msgid(msg, name)
    except Exception:
        return None


def references(msg: EmailMessage) -> list[str]:
    """The References chain of a message (oldest first), In-Reply-To last if
    it is not already there."""
    refs: list[str] = []
    raw = header(msg, "References")
    for part in raw.replace(">", "> ").split():
        part = part.strip()
        if part.startswith("<") and part.endswith(">") and len(part) > 2:
            refs.append(part[1:-1])
    irt = message_id(msg, "In-Reply-To")
    if irt and irt not in refs:
        refs.append(irt)
    return refs


def body_text(msg: EmailMessage) -> str:
    """The plain-text body (signature kept: diffs may end in '-- ')."""
    try:
        text = lu.msg_get_payload(msg, strip_signature=False)
    except Exception:
        text = ""
    if not text:
        # Non-multipart with an unusual type, or HTML-only: fall back to the
        # raw payload of the first text part.
        try:
            for part in msg.walk():
                if part.get_content_maintype() == "text":
                    payload = part.get_payload(decode=True) or b""
                    text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
                    break
        except Exception:
            text = ""
    return text.replace("\r\n", "\n")


def addresses(msg: EmailMessage, *names: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in names:
        try:
            vals = msg.get_all(name) or []
        except Exception:
            continue
        try:
            pairs = email.utils.getaddresses([lu.clean_header(str(v)) for v in vals])
        except Exception:
            continue
        for real, addr in pairs:
            if addr and "@" in addr:
                out.append((real, addr))
    return out


def format_addr(pair: tuple[str, str]) -> str:
    return lu.format_addrs([pair])


def author(msg: EmailMessage) -> tuple[str, str]:
    got = addresses(msg, "From")
    if got:
        return got[0]
    return ("", "")


def date_of(msg: EmailMessage):
    try:
        return lu.msg_get_date(msg)
    except Exception:
        return None
