"""Hostile and broken input: every mail gets a review or a one-line error.

The corpus is the mail samples of other tools' test suites (patchwork, b4,
git's t5100, public-inbox, patchew: copied into tests/data/hostile/tools),
the real seed threads, and hostile cases generated here at test time
(empty and binary files, a 20 MB line, lying hunk headers, binary diffs,
renames and mode changes, '../' and absolute paths, shell and jinja syntax
in subjects, bodies and names, unknown charsets, broken base64 and
quoted-printable, deep multipart nesting, HTML-only mail, 1/10000 series,
Message-IDs with '/' and '..').

Every input runs in its own process, without and with --tree, under a
wall-clock timeout and an address-space limit.  It must end with exit 0
and a review, or exit 1 and exactly one `reviewbot: ...` line on stderr;
never a traceback, an internal error or a hang; it must write nothing but
its --mbox-out files, run nothing named in the mail, and leave the tree
byte-identical.

Starting the interpreter and importing reviewbot costs seconds on a busy
machine, so a small driver imports reviewbot once and forks one child per
input (the child runs the same `reviewbot.cli.main` the console script
runs, in its own cwd, with its own HOME and TMPDIR, under RLIMIT_AS and a
SIGKILL deadline).  A few cases also go through the real `reviewbot`
executable.
"""
from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from support import ktree
from support.treestate import tree_state

HERE = Path(__file__).resolve().parent
HOSTILE = HERE / "data" / "hostile"
TOOLS = HOSTILE / "tools"
SEEDS = HERE / "data" / "seeds"

TREE_FILES = ["net/xfrm/xfrm_input.c", "lib/ucs2_string.c", "include/linux/filter.h",
              "net/core/sock_map.c"]
REVIEWER = "Rita Reviewer <rita@example.org>"
CASE_TIMEOUT = 60          # seconds per input (the 20 MB cases take a few)
CASE_MEMORY = 3 << 30      # RLIMIT_AS per input (numpy and friends map a lot)

# Text that must come out verbatim: never evaluated by jinja, never run.
JINJA = "{{ 7*7 }} {% for x in range(3) %}X{% endfor %} {# hidden #} {{ self.__init__.__globals__ }}"
SHELL = "$(touch PWNED-dollar) `touch PWNED-tick` ; touch PWNED-semi | touch PWNED-pipe && touch PWNED-and"


# ---------------------------------------------------------------------------
# the fork-per-input driver
# ---------------------------------------------------------------------------

DRIVER = r'''
import json, os, resource, signal, sys, time
import reviewbot.cli, reviewbot.review, reviewbot.engine
reviewbot.engine.discover()          # import every rule once, before forking
jobs = json.load(sys.stdin)
out = []
for job in jobs:
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(job["cwd"])
            os.environ.update(job["env"])
            resource.setrlimit(resource.RLIMIT_AS, (job["mem"], job["mem"]))
            fd_out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fd_err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd_out, 1)
            os.dup2(fd_err, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            import tempfile
            tempfile.tempdir = None
            rc = reviewbot.cli.main(job["argv"])
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(rc or 0)
        except SystemExit as e:
            os._exit(e.code if isinstance(e.code, int) else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(99)
    deadline = t0 + job["timeout"]
    killed = False
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            killed = True
            wpid, status, ru = os.wait4(pid, 0)
            break
        time.sleep(0.01)
    out.append({"rc": os.waitstatus_to_exitcode(status), "timed_out": killed,
                "seconds": time.monotonic() - t0, "maxrss_kb": ru.ru_maxrss})
json.dump(out, sys.stdout)
'''


def run_cases(jobs: list[dict], workdir: Path) -> list[dict]:
    """Run reviewbot once per job (argv, name) in forked children; return
    one result per job: rc, stdout, stderr, seconds, timed_out, cwd, out."""
    prepared = []
    for n, job in enumerate(jobs):
        base = workdir / f"case-{n:04d}"
        for sub in ("cwd", "home", "tmp", "out"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        argv = [a.replace("@OUT@", str(base / "out")) for a in job["argv"]]
        prepared.append({
            "argv": argv, "cwd": str(base / "cwd"), "timeout": job.get("timeout", CASE_TIMEOUT),
            "mem": CASE_MEMORY, "stdout": str(base / "stdout"), "stderr": str(base / "stderr"),
            "env": {"HOME": str(base / "home"), "TMPDIR": str(base / "tmp"),
                    "XDG_CACHE_HOME": str(base / "home" / ".cache"),
                    "XDG_CONFIG_HOME": str(base / "home" / ".config"),
                    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"},
        })
    total_timeout = sum(j["timeout"] for j in prepared) + 120
    proc = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(prepared).encode(),
                          capture_output=True, timeout=total_timeout)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    results = json.loads(proc.stdout)
    for job, prep, res in zip(jobs, prepared, results):
        base = Path(prep["cwd"]).parent
        res["name"] = job["name"]
        res["argv"] = prep["argv"]
        res["stdout"] = (base / "stdout").read_bytes().decode(errors="replace")
        res["stderr"] = (base / "stderr").read_bytes().decode(errors="replace")
        res["base"] = base
    return results


def problems(res: dict) -> list[str]:
    """What is wrong with one run, as a user would see it."""
    bad = []
    err = res["stderr"]
    if res["timed_out"]:
        bad.append(f"hung: killed after {res['seconds']:.0f}s")
    elif res["rc"] == 0:
        if not res["stdout"].strip():
            bad.append("exit 0 without a review")
        if err.strip():
            bad.append(f"exit 0 but wrote to stderr: {err[:200]!r}")
    elif res["rc"] == 1:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("reviewbot: "):
            bad.append(f"exit 1 without a one-line error: {err[-600:]!r}")
    else:
        bad.append(f"exit {res['rc']}: {err[-800:]!r}")
    if "Traceback" in err or "internal error" in err:
        bad.append(f"traceback or internal error: {err[-800:]!r}")
    base = res["base"]
    for sub in ("cwd", "tmp"):
        left = sorted(p.name for p in (base / sub).iterdir())
        if left:
            bad.append(f"left files in {sub}: {left[:5]}")
    home = [str(p.relative_to(base / "home")) for p in (base / "home").rglob("*") if p.is_file()]
    if home:
        bad.append(f"wrote into $HOME: {home[:5]}")
    outs = sorted(p.name for p in (base / "out").iterdir())
    for name in outs:
        if not (name.endswith(".mbox") and name[:4].isdigit()):
            bad.append(f"unexpected file in --mbox-out: {name!r}")
    return bad


# ---------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------

def mail(subject: str = "[PATCH] net: fix a thing", body: str = "", *, frm: str = "A U Thor <author@example.org>",
         msgid: str | None = "hostile-1@example.org", headers: str = "",
         ctype: str = "text/plain; charset=utf-8", cte: str | None = None, from_line: bool = True) -> bytes:
    head = ""
    if from_line:
        head += "From hostile@z Thu Jan  1 00:00:00 1970\n"
    head += f"From: {frm}\nTo: netdev@vger.kernel.org\nDate: Mon, 2 Jan 2023 00:00:00 +0000\n"
    head += f"Subject: {subject}\n"
    if msgid is not None:
        head += f"Message-ID: <{msgid}>\n"
    head += "MIME-Version: 1.0\n"
    if ctype:
        head += f"Content-Type: {ctype}\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\n"
    head += headers
    return (head + "\n" + body).encode("utf-8", "surrogateescape")


SIMPLE_DIFF = """\
diff --git a/lib/ucs2_string.c b/lib/ucs2_string.c
--- a/lib/ucs2_string.c
+++ b/lib/ucs2_string.c
@@ -1,3 +1,4 @@
 // SPDX-License-Identifier: GPL-2.0
+/* hello */
 #include <linux/ucs2_string.h>
 #include <linux/module.h>
"""

COMMIT = "Fix a thing.\n\nSigned-off-by: A U Thor <author@example.org>\n---\n"


def rt_patch(tree: Path) -> bytes:
    """A real patch against the small tree that RT001 comments on, so that
    hostile names, subjects and bodies end up in a drafted reply."""
    def edit(s: str) -> str:
        old = "\tspin_lock_bh(&trans->queue_lock);\n\tskb_queue_splice_init"
        assert old in s
        return s.replace(old, "#ifdef CONFIG_PREEMPT_RT\n\tspin_lock_irqsave(&trans->queue.lock, flags);\n"
                              "#endif\n" + old, 1)
    return ktree.make_patch(tree, {"net/xfrm/xfrm_input.c": edit}, "xfrm: lock the queue on RT",
                            "A U Thor <author@example.org>", body="Lock it.",
                            message_id="rt-base@example.org")


def with_headers(raw: bytes, subject: str | None = None, frm: str | None = None,
                 msgid: str | None = None, body_prefix: str | None = None) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    lines = head.split(b"\n")
    out = []
    for ln in lines:
        if subject is not None and ln.startswith(b"Subject: "):
            ln = b"Subject: " + subject.encode()
        elif frm is not None and ln.startswith(b"From: "):
            ln = b"From: " + frm.encode()
        elif msgid is not None and ln.startswith(b"Message-ID: "):
            ln = b"Message-ID: <" + msgid.encode() + b">"
        out.append(ln)
    if body_prefix is not None:
        body = body_prefix.encode() + b"\n\n" + body
    return b"\n".join(out) + sep + body


def generated_cases(dest: Path, tree: Path) -> dict[str, Path]:
    """Write the hostile cases into dest; return name -> path."""
    dest.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(1234)
    cases: dict[str, bytes] = {}
    cases["empty"] = b""
    cases["blank-lines"] = b"\n\n   \n\t\n"
    cases["binary-random"] = rnd.randbytes(200_000)
    cases["binary-nul"] = b"\x00" * 4096
    cases["from-line-only"] = b"From x@y Thu Jan  1 00:00:00 1970\n"
    cases["elf-like"] = b"\x7fELF\x02\x01\x01" + rnd.randbytes(50_000)
    cases["gzip-file"] = b"\x1f\x8b\x08\x00" + rnd.randbytes(1000)
    big = "x" * (20 * 1024 * 1024)
    cases["line-20mb-in-diff"] = mail(body=COMMIT + SIMPLE_DIFF.replace("+/* hello */", "+" + big))
    cases["line-20mb-in-body"] = mail(body=big + "\n" + COMMIT + SIMPLE_DIFF)
    cases["line-20mb-subject"] = mail(subject="[PATCH] " + "s" * (20 * 1024 * 1024), body=COMMIT + SIMPLE_DIFF)
    cases["line-20mb-no-from-line"] = big.encode()
    cases["line-5mb-in-diff"] = mail(body=COMMIT + SIMPLE_DIFF.replace("+/* hello */", "+" + "y" * (5 << 20)))
    cases["hunk-lies-longer"] = mail(body=COMMIT + SIMPLE_DIFF.replace("@@ -1,3 +1,4 @@", "@@ -1,300 +1,4000 @@"))
    cases["hunk-lies-shorter"] = mail(body=COMMIT + SIMPLE_DIFF.replace("@@ -1,3 +1,4 @@", "@@ -1,1 +1,1 @@"))
    cases["hunk-huge-numbers"] = mail(body=COMMIT + SIMPLE_DIFF.replace(
        "@@ -1,3 +1,4 @@", "@@ -99999999999999999999999,99999999999999999999 +1,18446744073709551617 @@"))
    cases["hunk-zero"] = mail(body=COMMIT + SIMPLE_DIFF.replace("@@ -1,3 +1,4 @@", "@@ -0,0 +0,0 @@"))
    cases["hunk-only-headers"] = mail(body=COMMIT + "diff --git a/x b/x\n--- a/x\n+++ b/x\n" + "@@ -1 +1 @@\n" * 5000)
    cases["hunk-no-file-header"] = mail(body=COMMIT + "@@ -1,2 +1,2 @@\n-a\n+b\n c\n")
    cases["many-files"] = mail(body=COMMIT + "".join(
        f"diff --git a/f{i}.c b/f{i}.c\n--- a/f{i}.c\n+++ b/f{i}.c\n@@ -1 +1 @@\n-a\n+b\n" for i in range(2000)))
    cases["binary-diff-literal"] = mail(body=COMMIT + (
        "diff --git a/fw.bin b/fw.bin\nnew file mode 100644\nindex 0000000..1111111\n"
        "GIT binary patch\nliteral 12\nTcmZ?wbmnj@Kn4H+0Dk%S)Bpeg\n\nliteral 0\nHcmV?d00001\n\n"))
    cases["binary-diff-garbage"] = mail(body=COMMIT + (
        "diff --git a/fw.bin b/fw.bin\nindex 1111111..2222222 100644\n"
        "GIT binary patch\nliteral 999999999\nzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n\n"))
    cases["binary-files-differ"] = mail(body=COMMIT + (
        "diff --git a/fw.bin b/fw.bin\nindex 1111111..2222222 100644\nBinary files a/fw.bin and b/fw.bin differ\n"))
    cases["rename-and-mode"] = mail(body=COMMIT + (
        "diff --git a/lib/ucs2_string.c b/lib/ucs2_string2.c\nold mode 100644\nnew mode 100755\n"
        "similarity index 100%\nrename from lib/ucs2_string.c\nrename to lib/ucs2_string2.c\n"))
    cases["mode-only"] = mail(body=COMMIT + (
        "diff --git a/include/linux/filter.h b/include/linux/filter.h\nold mode 100644\nnew mode 100755\n"))
    cases["symlink-to-etc"] = mail(body=COMMIT + (
        "diff --git a/evil b/evil\nnew file mode 120000\nindex 0000000..1111111\n--- /dev/null\n+++ b/evil\n"
        "@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n"
        "diff --git a/evil/passwd b/evil/passwd\nnew file mode 100644\n--- /dev/null\n+++ b/evil/passwd\n"
        "@@ -0,0 +1 @@\n+root::0:0::/:/bin/sh\n"))
    cases["gitlink"] = mail(body=COMMIT + (
        "diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000..1234567\n--- /dev/null\n+++ b/sub\n"
        "@@ -0,0 +1 @@\n+Subproject commit 1234567890123456789012345678901234567890\n"))
    for name, path in {"dotdot": "../../../../tmp/reviewbot-escape", "absolute": "/tmp/reviewbot-escape-abs",
                       "dotdot-inner": "net/../../reviewbot-escape-inner", "dotgit": ".git/hooks/post-checkout"}.items():
        cases[f"path-{name}"] = mail(body=COMMIT + (
            f"diff --git a/{path} b/{path}\nnew file mode 100755\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1,2 @@\n+#!/bin/sh\n+touch PWNED-hook\n"))
    cases["path-plain-dotdot"] = mail(body=COMMIT + (
        "--- ../../etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-root:x:0:0::/root:/bin/bash\n+root::0:0::/:/bin/sh\n"))
    cases["rename-to-dotdot"] = mail(body=COMMIT + (
        "diff --git a/lib/ucs2_string.c b/../ucs2_string.c\nsimilarity index 100%\n"
        "rename from lib/ucs2_string.c\nrename to ../ucs2_string.c\n"))
    # shell and jinja syntax everywhere a user sees it
    rt = rt_patch(tree)
    cases["rt-plain"] = rt
    cases["jinja-subject"] = with_headers(rt, subject="[PATCH] xfrm: " + JINJA)
    cases["jinja-author"] = with_headers(rt, frm='"{{ 7*7 }} {% raw %}Eve" <eve@example.org>')
    cases["jinja-body"] = with_headers(rt, body_prefix=JINJA + "\n" + SHELL)
    cases["shell-subject"] = with_headers(rt, subject="[PATCH] xfrm: " + SHELL)
    cases["shell-author"] = with_headers(rt, frm='"$(touch PWNED-from) `touch PWNED-from2`" <eve@example.org>')
    cases["shell-msgid"] = with_headers(rt, msgid="$(touch PWNED-msgid)@`touch PWNED-msgid2`")
    cases["jinja-encoded-author"] = with_headers(
        rt, frm="=?utf-8?b?" + base64.b64encode("{{ 7*7 }} Ève".encode()).decode() + "?= <eve@example.org>")
    cases["crlf-header-injection"] = with_headers(
        rt, subject="[PATCH] xfrm: a\r\nBcc: victim@example.org", frm="Eve <eve@example.org>\r\nX-Evil: 1")
    cases["msgid-slash"] = with_headers(rt, msgid="a/b/../../etc/passwd@example.org")
    cases["msgid-dotdot"] = with_headers(rt, msgid="..")
    cases["msgid-dotdot-at"] = with_headers(rt, msgid="../../..@..")
    cases["msgid-huge"] = with_headers(rt, msgid="m" * 100_000 + "@example.org")
    cases["msgid-nul"] = with_headers(rt, msgid="a\x00b@example.org")
    # charsets and transfer encodings
    cases["charset-unknown"] = mail(body=COMMIT + SIMPLE_DIFF, ctype="text/plain; charset=x-no-such-charset")
    cases["charset-unknown-header"] = mail(subject="=?x-bogus?B?W1BBVENIXSBoaQ==?= [PATCH] x",
                                           frm="=?x-bogus?q?Ev=E9?= <eve@example.org>", body=COMMIT + SIMPLE_DIFF)
    cases["charset-utf7"] = mail(body=COMMIT + SIMPLE_DIFF, ctype="text/plain; charset=utf-7")
    cases["charset-latin1-bytes"] = mail(body=COMMIT + SIMPLE_DIFF, ctype="text/plain; charset=utf-8") \
        .replace(b"hello", b"h\xe9ll\xff\xfe")
    cases["base64-broken"] = mail(body="W1BBVENIXSBoaQ=!!!===\n%%%%\nAAAA=AAA\n", cte="base64")
    cases["base64-diff-truncated"] = mail(
        body=base64.encodebytes((COMMIT + SIMPLE_DIFF).encode()).decode()[:-30], cte="base64")
    cases["qp-broken"] = mail(body=(COMMIT + SIMPLE_DIFF).replace("hello", "he=ZZl=\nlo=") + "=", cte="quoted-printable")
    cases["cte-unknown"] = mail(body=COMMIT + SIMPLE_DIFF, cte="x-uuencode-ish")
    # MIME structure
    for nest in (50, 3000):
        inner = "Content-Type: text/plain\n\n" + COMMIT + SIMPLE_DIFF
        for i in range(nest):
            inner = (f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' + inner + f"\n--b{i}--\n")
        cases[f"multipart-nested-{nest}"] = mail(body=inner.split("\n\n", 1)[1],
                                                 ctype=f'multipart/mixed; boundary="b{nest - 1}"')
    cases["multipart-no-boundary"] = mail(body="--x\n\n" + COMMIT + SIMPLE_DIFF, ctype="multipart/mixed")
    cases["multipart-unterminated"] = mail(
        body='--zz\nContent-Type: text/plain\n\n' + COMMIT + SIMPLE_DIFF, ctype='multipart/mixed; boundary="zz"')
    cases["multipart-signed"] = (SEEDS / "seed003.mbox").read_bytes()
    cases["html-only"] = mail(body="<html><body><p>" + COMMIT + "</p><pre>" + SIMPLE_DIFF + "</pre>"
                                   "<script>alert(1)</script>{{ 7*7 }}</body></html>", ctype="text/html")
    cases["message-rfc822-patch"] = mail(body="From: x <x@y>\nSubject: [PATCH] inner\n\n" + COMMIT + SIMPLE_DIFF,
                                         ctype="message/rfc822")
    # series shapes
    cases["series-1-of-10000"] = mail(subject="[PATCH 1/10000] net: one of many", body=COMMIT + SIMPLE_DIFF)
    cases["series-1-of-9999"] = mail(subject="[PATCH 1/9999] net: one of many", body=COMMIT + SIMPLE_DIFF)
    cases["series-10000-of-10000"] = mail(subject="[PATCH 10000/10000] net: last", body=COMMIT + SIMPLE_DIFF)
    cases["series-huge-numbers"] = mail(subject="[PATCH v99999999999999999999 99999999999999999999/1] x",
                                        body=COMMIT + SIMPLE_DIFF)
    cases["series-0-of-0"] = mail(subject="[PATCH 0/0] nothing", body="cover")
    cases["series-dup-index"] = b"".join(
        mail(subject=f"[PATCH 1/2] dup {i}", body=COMMIT + SIMPLE_DIFF, msgid=f"dup{i}@x") for i in range(3))
    cases["series-self-reply"] = mail(body=COMMIT + SIMPLE_DIFF, headers="In-Reply-To: <hostile-1@example.org>\n"
                                      "References: <hostile-1@example.org> <hostile-1@example.org>\n")
    cases["series-reply-loop"] = (
        mail(subject="[PATCH 1/2] a", body=COMMIT + SIMPLE_DIFF, msgid="l1@x", headers="In-Reply-To: <l2@x>\n")
        + mail(subject="[PATCH 2/2] b", body=COMMIT + SIMPLE_DIFF, msgid="l2@x", headers="In-Reply-To: <l1@x>\n"))
    cases["many-messages"] = b"".join(
        mail(subject=f"Re: [PATCH] x {i}", body="> quote\nreply", msgid=f"r{i}@x",
             headers="In-Reply-To: <hostile-1@example.org>\n") for i in range(3000)) + mail(body=COMMIT + SIMPLE_DIFF)
    cases["headers-only"] = b"From x@y Thu Jan  1 00:00:00 1970\nSubject: [PATCH] x\n"
    cases["no-headers-diff"] = (COMMIT + SIMPLE_DIFF).encode()
    cases["long-header-fold"] = mail(body=COMMIT + SIMPLE_DIFF, headers="X-Long: " + "a\n " * 200_000 + "\n")
    cases["many-recipients"] = mail(body=COMMIT + SIMPLE_DIFF, headers="Cc: " + ", ".join(
        f"u{i}@example.org" for i in range(20000)) + "\n")
    paths = {}
    for name, data in cases.items():
        p = dest / f"{name}.mbox"
        p.write_bytes(data)
        paths[f"gen/{name}"] = p
    return paths


def corpus_files() -> dict[str, Path]:
    out = {}
    for p in sorted(TOOLS.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(TOOLS))] = p
    for p in sorted(SEEDS.glob("*.mbox")):
        out[f"seeds/{p.name}"] = p
    return out


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("ktree") / "linux"
    ktree.make_tree(tree, ktree.kernel_files(TREE_FILES))
    return tree


@pytest.fixture(scope="module")
def generated(tmp_path_factory, small_tree) -> dict[str, Path]:
    return generated_cases(tmp_path_factory.mktemp("hostile"), small_tree)


# ---------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------

def _review_jobs(names_paths: dict[str, Path], tree: Path | None) -> list[dict]:
    jobs = []
    for name, path in names_paths.items():
        argv = ["review", str(path), "--from", REVIEWER, "--mbox-out", "@OUT@/"]
        if tree is not None:
            argv += ["--tree", str(tree)]
        jobs.append({"name": name + (" --tree" if tree else ""), "argv": argv})
    return jobs


def _check_all(jobs, workdir: Path, tree: Path | None):
    before = tree_state(tree) if tree else None
    results = run_cases(jobs, workdir)
    failures = []
    for res in results:
        for p in problems(res):
            failures.append(f"{res['name']}: {p}")
    if tree is not None:
        after = tree_state(tree)
        for k in before:
            if before[k] != after[k]:
                failures.append(f"the tree changed ({k})")
    for stray in ("/tmp/reviewbot-escape", "/tmp/reviewbot-escape-abs"):
        if os.path.exists(stray):
            failures.append(f"a diff wrote {stray}")
    assert not failures, "\n".join(failures)
    return results


@pytest.mark.parametrize("with_tree", [False, True], ids=["no-tree", "tree"])
def test_tool_corpus(tmp_path, small_tree, with_tree):
    """Every mail sample of patchwork, b4, git, public-inbox and patchew,
    and the seed threads: a review or one line, nothing else touched."""
    files = corpus_files()
    assert len(files) > 140
    results = _check_all(_review_jobs(files, small_tree if with_tree else None), tmp_path,
                         small_tree if with_tree else None)
    reviewed = [r for r in results if r["rc"] == 0]
    assert len(reviewed) > 120, "most samples are mail and must be reviewed"
    for r in results:
        assert r["seconds"] < 30, f"{r['name']} took {r['seconds']:.1f}s"


@pytest.mark.parametrize("with_tree", [False, True], ids=["no-tree", "tree"])
def test_generated_hostile(tmp_path, small_tree, generated, with_tree):
    tree = small_tree if with_tree else None
    results = {r["name"].removesuffix(" --tree"): r
               for r in _check_all(_review_jobs(generated, tree), tmp_path, tree)}
    # Nothing named in mail was run, whatever the quoting.
    for r in results.values():
        for sub in ("cwd", "home", "tmp"):
            assert not list((r["base"] / sub).rglob("PWNED*")), r["name"]
    # What could not be read is said, not hidden.
    assert results["gen/empty"]["rc"] == 1
    assert "no mail" in results["gen/empty"]["stderr"]
    assert results["gen/binary-random"]["rc"] in (0, 1)
    assert "no patch" in results["gen/multipart-signed"]["stdout"]
    for name in ("gen/line-20mb-in-diff", "gen/line-20mb-subject"):
        r = results[name]
        assert "too large" in r["stdout"] + r["stderr"], (name, r["stderr"])
    assert "could not be parsed" in results["gen/multipart-nested-3000"]["stderr"] + \
        results["gen/multipart-nested-3000"]["stdout"]
    nested = results["gen/multipart-nested-50"]
    assert nested["rc"] == 0 and "net: fix a thing" in nested["stdout"] and "no diff" not in nested["stdout"]
    # b4 reads at most four-digit counters: 1/10000 is a lone patch, 1/9999
    # a huge series of which one patch arrived.
    assert results["gen/series-1-of-10000"]["rc"] == 0
    assert "claims 9999 patches" in results["gen/series-1-of-9999"]["stdout"]
    for name in ("gen/path-dotdot", "gen/path-absolute", "gen/path-dotdot-inner", "gen/path-plain-dotdot"):
        assert "unsafe path" in results[name]["stdout"], name
    assert "recounted" in results["gen/hunk-lies-longer"]["stdout"]
    # Hostile text reaches the reply verbatim and is not evaluated.
    for name in ("gen/jinja-subject", "gen/jinja-author", "gen/jinja-body", "gen/shell-subject",
                 "gen/shell-author", "gen/rt-plain", "gen/msgid-slash", "gen/msgid-dotdot"):
        outs = sorted((results[name]["base"] / "out").iterdir())
        assert outs, f"{name}: no reply written ({results[name]['stdout'][-400:]})"
    subj = _reply(results["gen/jinja-subject"])
    assert "{{ 7*7 }} {% for x in range(3) %}X{% endfor %} {# hidden #}" in subj
    # (not a bare "49": the Message-ID and Date of a reply hold digits)
    assert "xfrm: 49" not in subj and "XXX" not in subj and "<function" not in subj
    author = _reply(results["gen/jinja-author"])
    assert "{{ 7*7 }} {% raw %}Eve" in author and "49 Eve" not in author
    shell = _reply(results["gen/shell-subject"])
    assert SHELL in " ".join(shell.split())
    assert "$(touch PWNED-from) `touch PWNED-from2`" in _reply(results["gen/shell-author"])
    assert "{{ 7*7 }}" in results["gen/jinja-encoded-author"]["stdout"]
    # A Message-ID with '/' or '..' is only a header value: file names in
    # --mbox-out come from the patch number.
    for name in ("gen/msgid-slash", "gen/msgid-dotdot"):
        assert [p.name for p in (results[name]["base"] / "out").iterdir()] == ["0001-reply-0001.mbox"]
    # A newline in Subject/From never becomes a header of ours.
    inj = results["gen/crlf-header-injection"]
    for p in (inj["base"] / "out").iterdir():
        assert b"\nBcc:" not in p.read_bytes() and b"\nX-Evil:" not in p.read_bytes()
    # Memory stays bounded on the 20 MB cases.
    for name in ("gen/line-20mb-in-diff", "gen/line-20mb-subject", "gen/line-20mb-no-from-line"):
        assert results[name]["maxrss_kb"] < 1_500_000, (name, results[name]["maxrss_kb"])


def _reply(res) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((res["base"] / "out").iterdir()))


def test_console_script_on_hostile_mail(tmp_path, small_tree, generated):
    """The real `reviewbot` executable, on the cases most likely to escape."""
    before = tree_state(small_tree)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "HOME": str(tmp_path / "home"),
           "GIT_CONFIG_GLOBAL": os.devnull}
    (tmp_path / "tmp").mkdir()
    for name in ("gen/jinja-subject", "gen/shell-subject", "gen/path-dotgit", "gen/empty", "gen/symlink-to-etc"):
        out = tmp_path / "out" / name.replace("/", "_")
        proc = subprocess.run(["reviewbot", "review", str(generated[name]), "--tree", str(small_tree),
                               "--from", REVIEWER, "--mbox-out", str(out) + "/"],
                              cwd=cwd, env=env, capture_output=True, timeout=120)
        err = proc.stderr.decode()
        assert "Traceback" not in err and proc.returncode in (0, 1), (name, err)
        if proc.returncode:
            assert len(err.strip().splitlines()) == 1 and err.startswith("reviewbot: "), (name, err)
    # Binary junk on standard input.
    proc = subprocess.run(["reviewbot", "review", "-"], input=generated["gen/binary-random"].read_bytes(),
                          cwd=cwd, env=env, capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode in (0, 1) and "Traceback" not in err, err
    assert not list(cwd.iterdir())
    assert not list((tmp_path / "tmp").iterdir())
    assert tree_state(small_tree) == before
    body = "".join(p.read_text() for p in (tmp_path / "out" / "gen_jinja-subject").iterdir())
    assert "Subject: Re: [PATCH] xfrm: " + JINJA in body
    assert "xfrm: 49" not in body
