"""The outbox goes through the real `git send-email` to a real SMTP server
(aiosmtpd on loopback), and what arrives is what reviewbot wrote.

What a user runs, once per reply file (sendemail.from set, as for patches):

    git send-email --confirm=never --suppress-cc=self \
        --smtp-server=HOST --smtp-server-port=PORT OUTBOX/*.mbox

--suppress-cc=self only keeps git from mailing the sender a copy; nothing
else is suppressed (--suppress-cc=all would drop the Cc: header too): a
reply goes to exactly the To and Cc of its headers (reply-all), and git
send-email must find nobody else in the quoted text.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from support import ktree

REVIEWER = "Jörg Rödel <joro@example.org>"
SEEDS = Path(__file__).resolve().parent / "data" / "seeds"


class Sink:
    """Keeps every envelope: sender, recipients, raw bytes."""

    def __init__(self):
        self.got: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture
def smtp():
    """(port, sink) of an SMTP server on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = Sink()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, sink
    finally:
        ctl.stop()


def env_for(tmp_path: Path, sendemail_from: str | None = REVIEWER) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    cfg = home / ".gitconfig"
    text = "[user]\n\tname = Nobody Here\n\temail = nobody@example.org\n"
    if sendemail_from:
        text += f"[sendemail]\n\tfrom = {sendemail_from}\n"
    cfg.write_text(text, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "XDG_"))}
    env.update(HOME=str(home), GIT_CONFIG_GLOBAL=str(cfg), GIT_CONFIG_NOSYSTEM="1", LC_ALL="C.UTF-8")
    return env


def reviewbot(args, env, cwd, input=None):
    proc = subprocess.run([sys.executable, "-m", "reviewbot.cli", *args], env=env, cwd=cwd,
                          input=input, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def send_email(files, port, env, cwd, extra=()):
    proc = subprocess.run(["git", "send-email", "--confirm=never", "--suppress-cc=self",
                           "--smtp-server=127.0.0.1", f"--smtp-server-port={port}", *extra, *map(str, files)],
                          env=env, cwd=cwd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    return proc


def parse(raw: bytes):
    return email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)


def body_bytes(raw: bytes) -> bytes:
    raw = raw.replace(b"\r\n", b"\n")
    return raw.split(b"\n\n", 1)[1]


def outbox_message(path: Path) -> bytes:
    """The message in a reply file, as git send-email reads it."""
    data = path.read_bytes()
    assert data.startswith(b"From ")
    return data.split(b"\n", 1)[1]


def addrs(values) -> list[str]:
    return sorted(a.lower() for _, a in email.utils.getaddresses([str(v) for v in values if v]))


def test_seed004_reply_arrives_as_written(tmp_path, smtp):
    port, sink = smtp
    env = env_for(tmp_path)
    out = tmp_path / "outbox"
    reviewbot(["review", str(SEEDS / "seed004.mbox"), "--mbox-out", f"{out}/"], env, tmp_path)
    files = sorted(out.iterdir())
    assert len(files) == 1
    written = parse(outbox_message(files[0]))
    send_email(files, port, env, tmp_path)

    assert len(sink.got) == 1
    mail_from, rcpts, raw = sink.got[0]
    got = parse(raw)
    # identity: sendemail.from, UTF-8 name intact
    assert mail_from == "joro@example.org"
    assert str(got["From"]) == REVIEWER
    # threading: a reply to the patch, Message-ID kept
    assert str(got["Subject"]) == "Re: [PATCH v2 1/1] xfrm : lock input tasklet skb queue"
    assert str(got["In-Reply-To"]) == "<seed004.0.f0c0e0fcc876@fixtures.invalid>"
    assert str(got["References"]).split()[-1] == "<seed004.0.f0c0e0fcc876@fixtures.invalid>"
    assert str(got["Message-ID"]) == str(written["Message-ID"])
    # recipients: the patch author in To, everyone else in Cc; the envelope
    # holds exactly those, nobody from the quoted sign-offs twice or extra
    assert addrs(got.get_all("To")) == ["trix@redhat.com"]
    cc = addrs(got.get_all("Cc"))
    assert "netdev@vger.kernel.org" in cc and "steffen.klassert@secunet.com" in cc
    assert cc == addrs(written.get_all("Cc"))                  # nobody added
    assert sorted(rcpts) == sorted(addrs(got.get_all("To")) + cc)
    # the body, byte for byte: no re-wrapping, quoting intact, signature kept
    assert body_bytes(raw) == body_bytes(outbox_message(files[0]))
    text = got.get_content()
    assert "\n> +#ifdef CONFIG_PREEMPT_RT_FULL\n" in text
    assert "\n-- \nJörg\n" in text


def utf8_patch(tree: Path) -> bytes:
    """A real patch by a UTF-8-named author whose quoted context holds a
    line starting with 'From ' (a comment) and lines only '>' would spoil."""
    def edit(text: str) -> str:
        anchor = "\tskb_queue_splice_init(&trans->queue, &queue);\n"
        assert anchor in text
        return text.replace(anchor, "#ifdef CONFIG_PREEMPT_RT\n\tspin_lock_irqsave(&trans->queue.lock, flags);\n"
                            "#endif\n" + anchor, 1)

    def ctx(text: str) -> str:
        anchor = "\t__skb_queue_head_init(&queue);\n"
        return text.replace(anchor, anchor.rstrip("\n") + "\n/*\nFrom the RT tree: >From and > quoted\n*/\n", 1)

    xfrm = "net/xfrm/xfrm_input.c"
    ktree.make_tree(tree, {xfrm: ctx(ktree.kernel_files([xfrm])[xfrm].decode())})
    return ktree.make_patch(tree, {xfrm: edit}, "xfrm: lock the trans queue on RT",
                            "Łukasz Ñandú 山田 <lukasz@example.org>",
                            body="Seen on RT.\nFrom the trace: the queue is corrupted.")


def test_utf8_names_and_from_lines(tmp_path, smtp):
    port, sink = smtp
    env = env_for(tmp_path)
    patch = utf8_patch(tmp_path / "tree")
    out = tmp_path / "outbox"
    reviewbot(["review", "-", "--tree", str(tmp_path / "tree"), "--from", REVIEWER, "--mbox-out", f"{out}/"],
              env, tmp_path, input=patch)
    files = sorted(out.iterdir())
    assert len(files) == 1, files
    send_email(files, port, env, tmp_path)
    [(mail_from, rcpts, raw)] = sink.got
    got = parse(raw)
    assert str(got["From"]) == REVIEWER
    assert str(got["To"]) == "Łukasz Ñandú 山田 <lukasz@example.org>"
    assert rcpts == ["lukasz@example.org"]
    body = body_bytes(raw)
    assert body == body_bytes(outbox_message(files[0]))
    assert not body.startswith(b"From:")         # git send-email adds one when it misreads the author
    text = got.get_content()
    assert "\n>  From the RT tree: >From and > quoted\n" in text
    assert "\n>From" not in text and "\n>>" not in text


def test_reply_body_lines_survive(tmp_path, smtp):
    """Lines an mbox writer or a mailer likes to touch: 'From ' at the
    start, '>From', a lone '.', trailing spaces, a long line."""
    from reviewbot.reply import outbox
    from reviewbot.reply.render import ReplyDraft
    port, sink = smtp
    body = ("Hi,\n\nFrom the look of it this is racy.\n>From a mangled archive\n.\n"
            "trailing spaces   \n" + "x" * 300 + "\n\n-- \nJörg\n")
    reviewer = "山田 太郎 <yamada@example.org>"     # a name Python would B-encode
    r = ReplyDraft("p@x", ["p@x"], reviewer, ["Jörg Rödel <joro@example.org>"], ["list@example.org"],
                   "Re: [PATCH] süß", body, "reply-1@example.org", "Mon, 01 Jan 2024 00:00:00 +0000", 1)
    [path] = outbox.write([r], f"{tmp_path}/out/")
    send_email([path], port, env_for(tmp_path, reviewer), tmp_path)
    [(mail_from, rcpts, raw)] = sink.got
    got = parse(raw)
    assert got.get_content() == body
    assert str(got["From"]) == reviewer
    assert str(got["To"]) == "Jörg Rödel <joro@example.org>"
    assert str(got["Subject"]) == "Re: [PATCH] süß"
    assert sorted(rcpts) == ["joro@example.org", "list@example.org"]


@pytest.mark.parametrize("seed", sorted(p.name for p in SEEDS.glob("seed*.mbox")))
def test_dry_run_accepts_every_outbox(tmp_path, seed):
    env = env_for(tmp_path)
    out = tmp_path / "outbox"
    reviewbot(["-c", "min-confidence=low", "review", str(SEEDS / seed), "--mbox-out", f"{out}/"], env, tmp_path)
    files = sorted(out.iterdir()) if out.exists() else []
    if not files:
        pytest.skip(f"{seed}: no replies drafted")
    proc = subprocess.run(["git", "send-email", "--dry-run", "--confirm=never", "--smtp-server=127.0.0.1",
                           *map(str, files)], env=env, cwd=tmp_path, capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    text = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, text
    assert text.count("Dry-OK. Log says:") == len(files), text
    for f in files:
        msg = parse(outbox_message(f))
        assert f"Subject: {msg['Subject']}" in text or "Subject: Re: " in text
