"""`reviewbot check` as b4 runs it: through the real b4 against a real
public-inbox server on loopback, in a real (small) kernel tree.

- `b4 -c b4.am-perpatch-check-cmd="reviewbot check" am -k MSGID` shows
  reviewbot's findings beside checkpatch's, or "passed all checks";
- b4's review checks (`b4.review-perpatch-check-cmd`, run through
  `b4.review.checks`, the code behind the review TUI's check matrix) read
  `reviewbot check --format b4-review`'s JSON;
- the kernel tree b4 runs the check in is used, and left untouched.
"""
from __future__ import annotations

import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from support import ktree
from support.treestate import tree_state

SEED004_PATCH = "seed004.0.f0c0e0fcc876@fixtures.invalid"
XFRM = "net/xfrm/xfrm_input.c"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def reviewbot_cmd() -> str:
    exe = shutil.which("reviewbot")
    return exe if exe else f"{sys.executable} -m reviewbot.cli"


def private_env(tmp_path: Path, gitconfig: str = "") -> dict[str, str]:
    """HOME, XDG dirs and global git config of our own: nothing leaks in
    or out (b4 caches check results per command and Message-ID)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    cfg = home / ".gitconfig"
    cfg.write_text("[user]\n\tname = Test Maintainer\n\temail = maint@example.org\n" + gitconfig)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "XDG_", "B4_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_CONFIG_HOME=str(home / ".config"), GIT_CONFIG_GLOBAL=str(cfg), GIT_CONFIG_NOSYSTEM="1",
               LC_ALL="C.UTF-8")
    return env


CLEAN = "clean-1-test@reviewbot.invalid"


@pytest.fixture(scope="module")
def xfrm_tree(tmp_path_factory) -> Path:
    """A git tree holding the real linux-6.1 net/xfrm/xfrm_input.c (the
    tests check that nothing in it changes)."""
    tree = tmp_path_factory.mktemp("ktree") / "linux"
    ktree.make_tree(tree, ktree.kernel_files([XFRM]))
    return tree


@pytest.fixture(scope="module")
def clean_lore(tmp_path_factory, xfrm_tree):
    """A public-inbox server with one clean patch (Message-ID CLEAN)."""
    from support.lore import LoreServer
    with LoreServer(tmp_path_factory.mktemp("clean-lore")) as srv:
        srv.add_inbox("netdev", [clean_patch(xfrm_tree, CLEAN)])
        srv.start()
        yield srv


def clean_patch(tree: Path, msgid: str) -> bytes:
    """A real patch against the tree that no rule should object to."""
    def fix(text: str) -> str:
        return text.replace("struct xfrm_trans_tasklet {", "/* deferred reinjection of transport-mode packets */\n"
                            "struct xfrm_trans_tasklet {", 1)
    return ktree.make_patch(tree, {XFRM: fix}, "xfrm: document xfrm_trans_tasklet",
                            "Test Author <author@example.org>", message_id=msgid)


def b4_am_check(env, tree: Path, lore, msgid: str, out: Path) -> str:
    proc = subprocess.run(["b4", *lore.b4_args(), "-c", f"b4.am-perpatch-check-cmd={reviewbot_cmd()} check",
                           "am", "-k", "-o", str(out), msgid],
                          cwd=tree, env=env, capture_output=True, timeout=120)
    text = ANSI.sub("", (proc.stdout + proc.stderr).decode("utf-8", "replace"))
    assert proc.returncode == 0, text
    return text


def test_b4_am_shows_reviewbot_findings_beside_checkpatch(tmp_path, lore, xfrm_tree):
    env = private_env(tmp_path)
    before = tree_state(xfrm_tree)
    text = b4_am_check(env, xfrm_tree, lore, SEED004_PATCH, tmp_path / "out")
    lines = [l.strip() for l in text.splitlines() if "reviewbot:" in l]
    assert len(lines) == 1, text
    assert re.fullmatch(r"● reviewbot: net/xfrm/xfrm_input\.c:766: WARNING: Why does the locking here depend on "
                        r"CONFIG_PREEMPT_RT_FULL\?.* \[RT001\]", lines[0]), lines[0]
    assert "ERROR" not in text and "Traceback" not in text
    assert tree_state(xfrm_tree) == before


def test_b4_am_clean_patch_passes(tmp_path, clean_lore, xfrm_tree):
    env = private_env(tmp_path)
    before = tree_state(xfrm_tree)
    text = b4_am_check(env, xfrm_tree, clean_lore, CLEAN, tmp_path / "out")
    assert [l.strip() for l in text.splitlines() if "reviewbot:" in l] == ["● reviewbot: passed all checks"], text
    assert tree_state(xfrm_tree) == before


# b4's review checks, exactly as the review TUI's check matrix runs them:
# fetch the thread, pick the patches, run b4.review-perpatch-check-cmd.
B4_REVIEW = r"""
import argparse, json, sys
import b4, b4.review.checks as checks
b4.setup_config(argparse.Namespace(config={}))      # what `b4 ...` does first
msgs = b4.get_pi_thread_by_msgid(sys.argv[1], quiet=True)
patches = []
for msg in msgs:
    ls = b4.LoreSubject(msg.get('subject', ''))
    mid = msg.get('message-id', '').strip('<> ')
    if ls.patch and not ls.reply and not (ls.counter == 0 and ls.expected > 0):
        patches.append((mid, msg))
perpatch, _ = checks.load_check_cmds()
print(json.dumps(checks.run_perpatch_checks(patches, perpatch, b4.git_get_toplevel())))
"""


def b4_review_checks(tmp_path, tree: Path, lore, msgid: str) -> dict:
    cfg = (f"[b4]\n\tmidmask = {lore.all_url}%s\n\tattestation-policy = off\n"
           f"\treview-perpatch-check-cmd = {reviewbot_cmd()} check --format b4-review\n")
    env = private_env(tmp_path, cfg)
    proc = subprocess.run([sys.executable, "-c", B4_REVIEW, msgid], cwd=tree, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_b4_review_checks_read_the_json(tmp_path, lore, xfrm_tree):
    before = tree_state(xfrm_tree)
    got = b4_review_checks(tmp_path, xfrm_tree, lore, SEED004_PATCH)
    assert list(got) == [SEED004_PATCH]
    [res] = got[SEED004_PATCH]
    assert res["tool"] == "reviewbot"
    assert res["status"] == "warn"
    assert res["summary"].startswith("1 warning")
    details = json.loads(res["details"])
    [finding] = [d for d in details if d["status"] != "pass"]
    assert finding["context"] == "RT001 preempt-rt-ifdef"
    assert finding["description"].startswith("net/xfrm/xfrm_input.c:766: Why does the locking")
    assert finding["srcline"] == "#ifdef CONFIG_PREEMPT_RT_FULL"
    assert tree_state(xfrm_tree) == before


def test_b4_review_checks_clean_patch_pass(tmp_path, clean_lore, xfrm_tree):
    got = b4_review_checks(tmp_path, xfrm_tree, clean_lore, CLEAN)
    assert got == {CLEAN: [{"tool": "reviewbot", "status": "pass", "summary": "no findings",
                            "url": "", "details": ""}]}


# -- the command alone -----------------------------------------------------

def run_check(args, data: bytes | None, cwd, env=None):
    return subprocess.run([*reviewbot_cmd().split(), "check", *args], input=data, cwd=cwd,
                          env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def seed004_patch(data_dir) -> bytes:
    from support.lore import split_mbox
    return split_mbox((data_dir / "seeds/seed004.mbox").read_bytes())[0]


def test_working_directory_is_the_tree(tmp_path, xfrm_tree, seed004_patch):
    env = private_env(tmp_path)
    patch = clean_patch(xfrm_tree, "clean-3-test@reviewbot.invalid")
    # in the tree it was made for, it applies: no note
    proc = run_check(["--format", "b4-review"], patch, xfrm_tree / "net", env)
    assert json.loads(proc.stdout)[0]["summary"] == "no findings", proc.stderr
    # in another kernel tree (a different xfrm_input.c) it does not apply
    other = tmp_path / "other"
    ktree.make_tree(other, {XFRM: "/* nothing here */\n"})
    proc = run_check(["--format", "b4-review"], patch, other, env)
    res = json.loads(proc.stdout)[0]
    assert res["summary"] == "no findings (diff only: does not apply)"
    assert "does not apply" in json.loads(res["details"])[0]["description"]
    # --no-tree: the diff alone
    proc = run_check(["--format", "b4-review", "--no-tree"], patch, other, env)
    assert json.loads(proc.stdout)[0]["summary"] == "no findings"


def test_checkpatch_format_and_exit_status(tmp_path, seed004_patch):
    env = private_env(tmp_path)
    proc = run_check([], seed004_patch, tmp_path, env)
    assert proc.returncode == 1 and proc.stderr == b""
    out = proc.stdout.decode().splitlines()
    assert len(out) == 1 and out[0].startswith("net/xfrm/xfrm_input.c:766: WARNING: Why does")
    # a file argument works like stdin; -c overrides apply (high is kept)
    f = tmp_path / "p.eml"
    f.write_bytes(seed004_patch)
    assert run_check([str(f)], None, tmp_path, env).stdout.decode().splitlines() == out
    proc = subprocess.run([*reviewbot_cmd().split(), "-c", "min-confidence=high", "check", "--rule", "NOPE999"],
                          input=seed004_patch, cwd=tmp_path, env=env, capture_output=True)
    assert proc.returncode == 0 and proc.stdout == b""


@pytest.mark.parametrize("args,data,message", [
    ([], b"", "reviewbot: no patch message on standard input"),
    (["/nonexistent/x.patch"], None, "reviewbot: /nonexistent/x.patch: No such file or directory"),
    (["--tree", "/nonexistent"], b"From: a@b\nSubject: [PATCH] x\n\nno diff\n", None),
    ([], b"From: a@b\nSubject: [PATCH] x\n\njust words, no diff\n", "reviewbot: no diff in this message: nothing to check"),
])
def test_bad_input_is_one_line(tmp_path, args, data, message):
    proc = run_check(args, data, tmp_path, private_env(tmp_path))
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert proc.stdout == b""
    assert len(err.splitlines()) == 1 and err.startswith("reviewbot: ") and "Traceback" not in err, err
    if message:
        assert err.strip() == message


def qp_patch() -> EmailMessage:
    """A quoted-printable patch whose code has `==` and a line ending in
    `=`: decoding it twice would mangle both (and shift line numbers)."""
    body = ("Lock the queue on RT.\n\nSigned-off-by: Jörg Rödel <joro@example.org>\n---\n"
            "diff --git a/net/foo.c b/net/foo.c\n--- a/net/foo.c\n+++ b/net/foo.c\n"
            "@@ -1,3 +1,9 @@\n int foo(int a)\n {\n+\tint ok =\n+\t\ta == 1;\n"
            "+#ifdef CONFIG_PREEMPT_RT\n+\tspin_lock_irqsave(&q->lock, flags);\n+#endif\n+\tcafé();\n"
            " \treturn a;\n")
    msg = EmailMessage(policy=email.policy.default)
    msg["From"] = "Jörg Rödel <joro@example.org>"
    msg["Subject"] = "[PATCH] net: foo: lock"
    msg["Message-ID"] = "<qp-1@reviewbot.invalid>"
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    return msg


def test_b4_predecoded_quoted_printable(tmp_path):
    """b4 hands check commands a decoded body under the original
    `Content-Transfer-Encoding: quoted-printable`: same findings as the raw mail."""
    import b4
    msg = qp_patch()
    raw = msg.as_bytes()
    assert b"=3D=3D" in raw and b"quoted-printable" in raw
    from_b4 = b4.LoreMessage.get_msg_as_bytes(msg)
    assert b"a == 1" in from_b4 and b"quoted-printable" in from_b4
    env = private_env(tmp_path)
    a = run_check([], raw, tmp_path, env)
    b = run_check([], from_b4, tmp_path, env)
    assert a.stdout.decode().startswith("net/foo.c:5: WARNING: ")
    assert b.stdout == a.stdout and b.returncode == a.returncode == 1
