"""Series assembly: from the messages of a thread to the latest revision of
a patch series (cover letter, patches in order, what is missing), using
b4's LoreMailbox for the threading and revision logic."""
from __future__ import annotations

import importlib
import logging
import re
import sys
import types
from dataclasses import dataclass, field
from email.message import EmailMessage

from reviewbot.analysis import diffmodel
from reviewbot.lore import mail
from reviewbot.lore.mail import Copies


def _b4():
    """b4, imported when a series is first assembled."""
    if "b4" not in sys.modules:
        for name in ("dkim", "patatt"):
            sys.modules.setdefault(name, _OnFirstUse(name))
    import b4
    # b4 must never reach for the network while we assemble.
    b4.can_network = False
    logging.getLogger("b4").setLevel(logging.ERROR)
    return b4


class _OnFirstUse(types.ModuleType):
    """Stands in for a module b4 imports at its top but needs only to check
    attestation, which reviewbot never asks of it: dkim (with dnspython)
    and patatt (with PyNaCl), ~70 ms of every review's start.  The real
    module is imported the first time one of its attributes is read or
    set.  (importlib's LazyLoader does not do here: b4's `import` statement
    itself reads the module's __spec__, which loads it.)"""

    def _real(self):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        return importlib.import_module(name)

    def __getattr__(self, attr):
        return getattr(self._real(), attr)

    def __setattr__(self, attr, value):
        setattr(self._real(), attr, value)


_BASE_RE = re.compile(r"^base-commit:\s*([0-9a-f]{7,40})\s*$", re.MULTILINE)
MAX_EXPECTED = 999


@dataclass
class Patch:
    index: int                  # 1-based position in the series
    total: int
    msgid: str
    subject: str                # subject without [PATCH ...] prefixes
    full_subject: str
    author: tuple[str, str]
    msg: EmailMessage
    body: str
    commit_message: str
    diff: diffmodel.PatchDiff
    copies: list[EmailMessage] = field(default_factory=list)   # other copies of this Message-ID
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.total}"

    @property
    def has_diff(self) -> bool:
        return bool(self.diff.files)


@dataclass
class Reply:
    """A reply already in the thread (a human reviewer's mail)."""

    msgid: str
    in_reply_to: str | None
    author: tuple[str, str]
    body: str
    references: list[str] = field(default_factory=list)


@dataclass
class Series:
    subject: str
    version: int
    total: int
    cover: EmailMessage | None
    cover_msgid: str | None
    patches: list[Patch]
    missing: list[int]
    base_commit: str | None
    replies: list[Reply]
    notes: list[str]
    thread_msgid: str | None = None

    @property
    def message_id(self) -> str | None:
        if self.cover_msgid:
            return self.cover_msgid
        return self.patches[0].msgid if self.patches else self.thread_msgid


def _copy_score(msg: EmailMessage) -> tuple:
    """Higher is better: the copy most likely from the primary list."""
    from liblore.utils import DEFAULT_LISTID_PREFERENCE, _listid_preference_index  # noqa
    listid = mail.message_id(msg, "List-Id")
    pref = -_listid_preference_index(listid, DEFAULT_LISTID_PREFERENCE)
    threaded = 1 if (mail.header(msg, "In-Reply-To") or mail.header(msg, "References")) else 0
    recipients = len(mail.addresses(msg, "To", "Cc"))
    return (pref, threaded, recipients)


def _describe_copy(msg: EmailMessage) -> str:
    to = mail.addresses(msg, "To")
    listid = mail.header(msg, "List-Id")
    if listid:
        return f"the copy from {listid}"
    if to:
        return f"the copy sent to {to[0][1]}"
    return "the first copy"


def choose_copies(groups: list[Copies]) -> tuple[list[EmailMessage], dict[str, list[EmailMessage]], list[str]]:
    """Keep one copy per Message-ID.  Returns the kept messages, the other
    copies by Message-ID (so that the applier can try them), and notes."""
    kept: list[EmailMessage] = []
    others: dict[str, list[EmailMessage]] = {}
    notes: list[str] = []
    for g in groups:
        if len(g.copies) == 1:
            kept.append(g.copies[0])
            continue
        # Identical copies are not worth a note.
        distinct = {mail.body_text(c) for c in g.copies}
        ranked = sorted(g.copies, key=_copy_score, reverse=True)
        kept.append(ranked[0])
        others[g.msgid] = ranked[1:]
        if len(distinct) > 1:
            notes.append(f"{len(g.copies)} different copies of <{g.msgid}>; kept {_describe_copy(ranked[0])}")
    return kept, others, notes


def assemble(groups: list[Copies], want_msgid: str | None = None) -> Series | None:
    """Assemble the latest revision of the series in the thread.  Returns
    None when the thread holds no patch at all."""
    msgs, others, notes = choose_copies(groups)
    lmbx = _b4().LoreMailbox()
    for m in msgs:
        try:
            lmbx.add_message(m)
        except Exception:
            notes.append(f"could not read message <{mail.message_id(m)}>")
    try:
        lser = lmbx.get_series(sloppytrailers=False, codereview_trailers=False)
    except Exception:
        lser = None
    if lser is None:
        return None
    expected = int(lser.expected or 1)
    if expected > MAX_EXPECTED:
        notes.append(f"the series claims {expected} patches; reviewed what arrived")
    patches: list[Patch] = []
    missing: list[int] = []
    cover = lser.patches[0] if lser.patches and lser.has_cover else None
    for idx, lmsg in enumerate(lser.patches[1:], start=1):
        if lmsg is None:
            if idx <= MAX_EXPECTED:
                missing.append(idx)
            continue
        body = mail.body_text(lmsg.msg)
        head, difftext = diffmodel.split_body(body)
        patches.append(Patch(
            index=idx,
            total=expected,
            msgid=lmsg.msgid,
            subject=lmsg.subject,
            full_subject=mail.header(lmsg.msg, "Subject"),
            author=(lmsg.fromname, lmsg.fromemail),
            msg=lmsg.msg,
            body=body,
            commit_message=diffmodel.commit_message(head),
            diff=diffmodel.parse(difftext),
            copies=others.get(lmsg.msgid, []),
        ))
    if missing:
        shown = ", ".join(f"{i}/{expected}" for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        notes.append(f"patch{'es' if len(missing) > 1 else ''} {shown}{more} missing from the thread; reviewed what is there")
    if len(lmbx.series) > 1:
        revs = sorted(lmbx.series)
        notes.append(f"thread holds revisions {', '.join('v%d' % r for r in revs)}; reviewed v{lser.revision}")
    base = None
    texts = ([mail.body_text(cover.msg)] if cover else []) + [p.body for p in patches]
    for t in texts:
        mm = _BASE_RE.search(t)
        if mm:
            base = mm.group(1)
            break
    series_ids = {p.msgid for p in patches} | ({cover.msgid} if cover else set())
    replies = []
    for f in lmbx.followups:
        replies.append(Reply(f.msgid, f.in_reply_to, (f.fromname, f.fromemail), mail.body_text(f.msg),
                             mail.references(f.msg)))
    subject = cover.subject if cover else (patches[0].subject if patches else "")
    return Series(
        subject=subject,
        version=int(lser.revision or 1),
        total=expected,
        cover=cover.msg if cover else None,
        cover_msgid=cover.msgid if cover else None,
        patches=patches,
        missing=missing,
        base_commit=base,
        replies=[r for r in replies if r.msgid not in series_ids],
        notes=notes,
        thread_msgid=want_msgid,
    )
