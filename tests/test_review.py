"""`reviewbot review` end to end: seeds in, replies out; trees untouched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ktree
from support.treestate import tree_state

DATA = Path(__file__).resolve().parent / "data"
REVIEWER = "Rita Reviewer <rita@example.org>"


def run(*args, input=None, cwd=None, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "reviewbot.cli", *args], input=input, cwd=cwd,
                          capture_output=True, env=e, timeout=300)


def review_json(*args, **kw):
    p = run("review", *args, "--format", "json", "--from", REVIEWER, **kw)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


SEED004_REPLY = """\
Hi Tom,

On Wed, Oct 23, 2019 at 12:22:00AM +0000, Tom Rix wrote:
> diff --git a/net/xfrm/xfrm_input.c b/net/xfrm/xfrm_input.c
> --- a/net/xfrm/xfrm_input.c
> +++ b/net/xfrm/xfrm_input.c
> @@ -755,13 +755,21 @@ EXPORT_SYMBOL(xfrm_input_resume);
> [...]
>      struct sk_buff *skb;
>
>      __skb_queue_head_init(&queue);
> +#ifdef CONFIG_PREEMPT_RT_FULL
> +    spin_lock_irqsave(&trans->queue.lock, flags);
> +#endif

Why does the locking here depend on CONFIG_PREEMPT_RT_FULL? If the data
can be touched concurrently on PREEMPT_RT, the same race exists without
RT, only less likely. Would taking the lock unconditionally (or using
the locked helpers) fix it for both configurations? Also,
CONFIG_PREEMPT_RT_FULL no longer exists upstream; it is
CONFIG_PREEMPT_RT now.

-- 
Rita
"""


def test_seed004_reply_exact():
    out = review_json(str(DATA / "seeds/seed004.mbox"), "--rule", "RT001")
    assert len(out["replies"]) == 1
    reply = out["replies"][0]
    assert reply["body"] == SEED004_REPLY
    assert reply["subject"] == "Re: [PATCH v2 1/1] xfrm : lock input tasklet skb queue"
    assert reply["in_reply_to"] == "seed004.0.f0c0e0fcc876@fixtures.invalid"
    assert reply["to"] == ["Tom Rix <trix@redhat.com>"]
    assert "netdev@vger.kernel.org" in reply["cc"]
    assert not any("trix@redhat.com" in c for c in reply["cc"])
    patch = out["patches"][0]
    assert patch["applies"] is None            # no --tree
    f = patch["findings"][0]
    assert (f["rule"], f["family"], f["path"], f["line"], f["confidence"]) == \
        ("RT001", "preempt-rt", "net/xfrm/xfrm_input.c", 766, "high")
    assert any("lost their leading space" in n for n in patch["notes"])


def test_json_keys():
    out = review_json(str(DATA / "seeds/seed002.mbox"))
    assert set(out) >= {"series", "patches", "series_findings", "replies"}
    assert set(out["series"]) == {"message_id", "subject", "version", "total", "cover", "base", "tree"}
    assert out["series"]["cover"] is True and out["series"]["total"] == 6
    assert [p["index"] for p in out["patches"]] == [1, 2, 3, 4, 5, 6]
    for p in out["patches"]:
        assert set(p) == {"index", "message_id", "subject", "author", "applies", "apply_error", "notes", "findings"}
        for f in p["findings"]:
            assert set(f) == {"rule", "name", "family", "severity", "confidence", "path", "line", "message", "related"}


def test_seed000_duplicate_copy_choice_is_reported():
    out = review_json(str(DATA / "seeds/seed000.mbox"))
    notes = " ".join(out["notes"])
    assert "2 different copies of <20200506125514.1020829-2-jakub@cloudflare.com>" in notes
    assert "netdev@vger.kernel.org" in notes
    assert "2/17" in notes and "missing" in notes
    assert out["series"]["total"] == 17 and len(out["patches"]) == 1


def test_seed003_without_patch_says_so():
    p = run("review", str(DATA / "seeds/seed003.mbox"))
    assert p.returncode == 0, p.stderr
    assert b"No patch series found." in p.stdout
    assert b"no patch in this thread" in p.stdout


def test_text_format_has_summary_table():
    p = run("review", str(DATA / "seeds/seed002.mbox"), "--from", REVIEWER)
    assert p.returncode == 0
    text = p.stdout.decode()
    assert "patch    applies  error warning info  subject" in text
    assert "6/6 " in text


def test_stdin_source():
    p = run("review", "-", "--format", "json", input=(DATA / "seeds/seed004.mbox").read_bytes())
    assert p.returncode == 0
    assert json.loads(p.stdout)["series"]["subject"] == "xfrm : lock input tasklet skb queue"


@pytest.mark.parametrize("source,msg", [
    ("/nonexistent/file.mbox", "is not a file, a lore URL or a Message-ID"),
    ("not a source", "is not a file"),
])
def test_bad_source_one_line(source, msg):
    p = run("review", source)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert err.count("\n") == 1 and msg in err and "Traceback" not in err


# -- lore on loopback -----------------------------------------------------

SK_V1 = "20200506125514.1020829-1-jakub@cloudflare.com"
SK_V2 = "20200511185218.1422406-1-jakub@cloudflare.com"


def test_review_by_msgid_assembles_17_patches(lore):
    out = review_json(SK_V2, "--lore-url", lore.url)
    assert out["series"]["version"] == 2
    assert out["series"]["total"] == 17 and out["series"]["cover"] is True
    assert [p["index"] for p in out["patches"]] == list(range(1, 18))
    assert out["series"]["message_id"] == SK_V2


@pytest.mark.parametrize("suffix", ["", "T/", "t/", "raw", "t.mbox.gz"])
def test_review_by_url_forms(lore, suffix):
    url = f"{lore.url}netdev/{SK_V1}/{suffix}"
    out = review_json(url)
    assert out["series"]["version"] == 1 and len(out["patches"]) == 17
    # v1 and v2 are separate threads: v1's review is not v2's
    assert out["series"]["message_id"] == SK_V1


def test_review_by_msgid_on_one_inbox(lore):
    out = review_json(f"<{SK_V1}>", "--lore-url", lore.inbox_url("netdev"))
    assert len(out["patches"]) == 17


def test_unknown_msgid_one_line(lore):
    p = run("review", "no-such-message@example.org", "--lore-url", lore.url)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert err.count("\n") == 1
    assert "no-such-message@example.org" in err and "not found" in err


def test_lore_url_from_git_config(lore, tmp_path):
    cfg = tmp_path / "gitconfig"
    cfg.write_text(f"[reviewbot]\n\tlore-url = {lore.url}\n")
    out = review_json(SK_V2, env={"GIT_CONFIG_GLOBAL": str(cfg), "HOME": str(tmp_path)})
    assert len(out["patches"]) == 17


# -- applying to a tree of real 6.1 files -------------------------------

XFRM = "net/xfrm/xfrm_input.c"


@pytest.fixture
def xfrm_tree(tmp_path):
    files = ktree.kernel_files([XFRM])
    tree = tmp_path / "linux"
    base = ktree.make_tree(tree, files)
    return tree, base


def _lock_queue(text: str) -> str:
    old = "\t__skb_queue_tail(&trans->queue, skb);\n"
    assert old in text
    return text.replace(old, "\tskb_queue_tail(&trans->queue, skb);\n")


def test_format_patch_applies(xfrm_tree, tmp_path):
    tree, base = xfrm_tree
    patch = ktree.make_patch(tree, {XFRM: _lock_queue}, "xfrm: use the locked queue helper")
    (tmp_path / "p.mbox").write_bytes(patch)
    before = tree_state(tree)
    out = review_json(str(tmp_path / "p.mbox"), "--tree", str(tree))
    assert out["patches"][0]["applies"] is True
    assert out["patches"][0]["notes"] == []
    assert out["series"]["base"] == base and out["series"]["tree"] == str(tree)
    assert tree_state(tree) == before


def test_whitespace_damaged_patch_applies_after_fallback(xfrm_tree, tmp_path):
    tree, _ = xfrm_tree
    patch = ktree.make_patch(tree, {XFRM: _lock_queue}, "xfrm: use the locked queue helper")
    head, sep, diff = patch.partition(b"\ndiff --git")
    damaged = head + sep + diff.replace(b"\t", b"        ")
    (tmp_path / "p.mbox").write_bytes(damaged)
    before = tree_state(tree)
    out = review_json(str(tmp_path / "p.mbox"), "--tree", str(tree))
    p = out["patches"][0]
    assert p["applies"] is True
    assert "whitespace-damaged" in p["notes"]
    assert tree_state(tree) == before


def test_seed_patches_do_not_apply_and_are_reported(xfrm_tree):
    tree, _ = xfrm_tree
    before = tree_state(tree)
    out = review_json(str(DATA / "seeds/seed004.mbox"), "--tree", str(tree))
    p = out["patches"][0]
    assert p["applies"] is False
    assert "net/xfrm/xfrm_input.c" in p["apply_error"]
    assert any("1/1 does not apply" in n and "reviewed the diff text only" in n for n in p["notes"])
    # the diff is still reviewed
    assert [f["rule"] for f in p["findings"]] == ["RT001"]
    assert tree_state(tree) == before


def test_series_missing_file_reports_each_patch(xfrm_tree):
    tree, _ = xfrm_tree
    before = tree_state(tree)
    out = review_json(str(DATA / "seeds/seed002.mbox"), "--tree", str(tree))
    assert [p["applies"] for p in out["patches"]] == [False] * 6
    assert all(p["apply_error"] for p in out["patches"])
    assert tree_state(tree) == before


def test_base_commit_from_series_used_when_tree_has_it(xfrm_tree, tmp_path):
    tree, base = xfrm_tree
    patch = ktree.make_patch(tree, {XFRM: _lock_queue}, "xfrm: use the locked queue helper")
    # move HEAD on: the patch must still be applied to its base-commit
    (tree / XFRM).write_text((tree / XFRM).read_text().replace("__skb_queue_tail(&trans->queue, skb);", "/* moved */"))
    subprocess.run(["git", "-C", str(tree), "commit", "-qam", "move on"], check=True,
                   env=ktree.git_env())
    patch = patch.replace(b"\n-- \n", b"\nbase-commit: " + base.encode() + b"\n-- \n", 1) \
        if b"\n-- \n" in patch else patch + b"\nbase-commit: " + base.encode() + b"\n"
    (tmp_path / "p.mbox").write_bytes(patch)
    out = review_json(str(tmp_path / "p.mbox"), "--tree", str(tree))
    assert out["series"]["base"] == base
    assert out["patches"][0]["applies"] is True


def test_not_a_tree_one_line(tmp_path):
    p = run("review", str(DATA / "seeds/seed004.mbox"), "--tree", str(tmp_path))
    assert p.returncode != 0
    assert p.stderr.decode().count("\n") == 1 and "not a git tree" in p.stderr.decode()


# -- replies for git send-email -------------------------------------------

def test_mbox_out_accepted_by_git_send_email(tmp_path):
    out = tmp_path / "out.mbox"
    p = run("review", str(DATA / "seeds/seed004.mbox"), "--from", REVIEWER, "--mbox-out", str(out))
    assert p.returncode == 0, p.stderr
    # the user's own git identity, as a maintainer's machine has it
    env = dict(os.environ, HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_NAME="Rita Reviewer", GIT_AUTHOR_EMAIL="rita@example.org",
               GIT_COMMITTER_NAME="Rita Reviewer", GIT_COMMITTER_EMAIL="rita@example.org")
    sent = subprocess.run(["git", "send-email", "--dry-run", "--confirm=never", "--no-validate",
                           "--smtp-server=127.0.0.1", "--suppress-cc=self", str(out)],
                          capture_output=True, env=env, cwd=tmp_path, timeout=60)
    text = sent.stdout.decode() + sent.stderr.decode()
    assert sent.returncode == 0, text
    assert "Dry-OK. Log says:" in text
    assert "Subject: Re: [PATCH v2 1/1] xfrm : lock input tasklet skb queue" in text
    assert "In-Reply-To: <seed004.0.f0c0e0fcc876@fixtures.invalid>" in text
    assert "To: Tom Rix <trix@redhat.com>" in text
    assert "From: Rita Reviewer <rita@example.org>" in text


def test_mbox_out_directory_one_file_per_reply(tmp_path):
    d = tmp_path / "outbox"
    p = run("review", str(DATA / "seeds/seed004.mbox"), "--from", REVIEWER, "--mbox-out", str(d) + "/")
    assert p.returncode == 0
    files = sorted(d.iterdir())
    assert [f.name for f in files] == ["0001-reply-0001.mbox"]
    assert files[0].read_bytes().startswith(b"From ")


def test_finding_already_raised_by_a_human_is_not_repeated(tmp_path):
    patch = (DATA / "seeds/seed004.mbox").read_bytes().split(b"\nFrom mboxrd@z")[0] + b"\n"
    reply = b"""From mboxrd@z Thu Jan  1 00:00:00 1970
From: Sebastian Andrzej Siewior <bigeasy@linutronix.de>
To: Tom Rix <trix@redhat.com>
Subject: Re: [PATCH v2 1/1] xfrm : lock input tasklet skb queue
Date: Wed, 23 Oct 2019 09:00:00 +0200
Message-ID: <human-reply@fixtures.invalid>
In-Reply-To: <seed004.0.f0c0e0fcc876@fixtures.invalid>
References: <seed004.0.f0c0e0fcc876@fixtures.invalid>

On 2019-10-23 00:22:00 [+0000], Tom Rix wrote:
> +#ifdef CONFIG_PREEMPT_RT_FULL
> +    spin_lock_irqsave(&trans->queue.lock, flags);
> +#endif

Please fix PREEMPT_RT_FULL instead of sprinkling ifdefs.

Sebastian
"""
    (tmp_path / "t.mbox").write_bytes(patch + reply)
    out = review_json(str(tmp_path / "t.mbox"), "--rule", "RT001")
    assert out["replies"] == []
    assert out["patches"][0]["findings"] == []
    assert any("not repeated" in n and "Sebastian" in n for n in out["patches"][0]["notes"])
    # without the human reply, the same finding is drafted
    (tmp_path / "p.mbox").write_bytes(patch)
    assert len(review_json(str(tmp_path / "p.mbox"), "--rule", "RT001")["replies"]) == 1


def test_b4_attestation_modules_still_work_after_assembly():
    """A review loads b4 without its attestation modules (dkim, patatt);
    b4's own attestation code must still reach the real ones."""
    code = """
import sys
from reviewbot.lore import mail, series
groups, _ = mail.split_mbox(open(sys.argv[1], 'rb').read())
s = series.assemble(groups)
import b4
assert 'dkim' not in sys.modules or type(sys.modules['dkim']).__name__ == '_OnFirstUse'
b4.patatt.logger = b4.logger
import patatt
assert patatt.logger is b4.logger and b4.patatt.RES_VALID == patatt.RES_VALID
assert b4.dkim.verify.__module__ == 'dkim'
print(len(s.patches))
"""
    p = subprocess.run([sys.executable, "-c", code, str(DATA / "seeds" / "seed004.mbox")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) >= 1
