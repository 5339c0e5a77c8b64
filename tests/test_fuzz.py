"""Fuzzing the parsers with hypothesis (bounded: the file runs in well
under a minute).  Mail, subjects and diffs are untrusted: nothing may raise
except ReviewbotError, and a diff's paths are never unsafe once parsed.

Inputs are random bytes, grammar-built diffs and mail, and real mail from
tests/data (seeds and other tools' samples) with random byte edits.
"""
from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from reviewbot.analysis import diffmodel
from reviewbot.lore import mail
from reviewbot.lore import series
from reviewbot.errors import ReviewbotError
from reviewbot.review import Options, review_mbox

HERE = Path(__file__).resolve().parent
SAMPLES = sorted(p for p in (HERE / "data" / "hostile" / "tools").rglob("*")
                 if p.is_file() and p.stat().st_size < 40_000)
SAMPLES += [HERE / "data" / "seeds" / "seed003.mbox", HERE / "data" / "seeds" / "seed004.mbox"]
_CACHE: dict[Path, bytes] = {}

# REVIEWBOT_FUZZ_SCALE=20 (say) runs 20 times as many random examples, for
# a longer hunt; by default the examples are fixed (derandomize) and few.
_SCALE = int(os.environ.get("REVIEWBOT_FUZZ_SCALE", "0") or 0)
_COMMON = dict(deadline=None, database=None, derandomize=not _SCALE,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FAST = settings(max_examples=100 * max(_SCALE, 1), **_COMMON)
SLOW = settings(max_examples=15 * max(_SCALE, 1), **_COMMON)


def _sample(i: int) -> bytes:
    p = SAMPLES[i % len(SAMPLES)]
    if p not in _CACHE:
        _CACHE[p] = p.read_bytes()
    return _CACHE[p]


SPICE = [b"\n", b"\r\n", b"\x00", b"From ", b">From ", b"\n\n", b"--", b"=?utf-8?b?", b"?=", b"=\n", b"=ZZ",
         b"@@ -1,3 +1,4 @@\n", b"diff --git a/x b/x\n", b"--- a/x\n+++ b/x\n", b"+++ /etc/passwd\n",
         b"--- ../../x\n", b"Content-Type: multipart/mixed; boundary=b\n", b"--b\n", b"--b--\n",
         b"charset=x-bogus", b"Content-Transfer-Encoding: base64\n", b"[PATCH 1/10000] ", b"[PATCH v2 0/3]",
         b"Message-ID: <../x>\n", b"In-Reply-To: <a/b>\n", b"{{ 7*7 }}", b"\xff\xfe", b"\xc3\x28", b"\t", b" "]


@st.composite
def mutated_mail(draw) -> bytes:
    data = bytearray(_sample(draw(st.integers(0, len(SAMPLES) - 1))))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["insert", "delete", "replace", "flip", "truncate", "dup"]))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(SPICE))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 200))]
        elif op == "replace":
            data[pos:pos + 1] = draw(st.binary(min_size=1, max_size=4))
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        else:
            n = draw(st.integers(1, 500))
            data[pos:pos] = data[pos:pos + n]
    return bytes(data)


# -- diffs built from a grammar ---------------------------------------------

_path = st.sampled_from(["net/core/filter.c", "a.c", "../../etc/passwd", "/etc/passwd", "x/../../y", "dir/",
                         "", "a b.c", "\u00e9.c", "a\tb", ".git/config", "net/../x.c", "/dev/null"])
_num = st.one_of(st.integers(0, 50), st.integers(0, 10 ** 25))
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@st.composite
def diff_line(draw) -> str:
    kind = draw(st.sampled_from(["ctx", "add", "del", "blank", "nonl", "hunk", "hunk1", "gitdiff", "minus3",
                                 "plus3", "sig", "index", "mode", "rename", "binary", "junk", "similarity"]))
    t = draw(_text)
    p = draw(_path)
    return {
        "ctx": " " + t, "add": "+" + t, "del": "-" + t, "blank": "", "nonl": "\\ No newline at end of file",
        "hunk": f"@@ -{draw(_num)},{draw(_num)} +{draw(_num)},{draw(_num)} @@ {t}",
        "hunk1": f"@@ -{draw(_num)} +{draw(_num)} @@", "gitdiff": f"diff --git a/{p} b/{p}",
        "minus3": f"--- {'a/' if draw(st.booleans()) else ''}{p}", "plus3": f"+++ {'b/' if draw(st.booleans()) else ''}{p}",
        "sig": "-- ", "index": "index 1234567..89abcde 100644", "mode": f"new mode {draw(st.sampled_from(['100644', '120000', '160000', '777']))}",
        "rename": f"rename {draw(st.sampled_from(['from', 'to']))} {p}", "binary": "GIT binary patch",
        "junk": t, "similarity": "similarity index 100%",
    }[kind]


diff_text = st.lists(diff_line(), max_size=60).map("\n".join)


def _check_parsed(pd: diffmodel.PatchDiff) -> None:
    for fd in pd.files:
        assert fd.safe
        for p in (fd.path, fd.old_path):
            assert not p.startswith("/"), p
            assert not os.path.normpath(p).startswith(".."), p
        for h in fd.hunks:
            for ln in h.lines:
                assert ln.kind in " +-"
                assert ln.new_no is None or 0 <= ln.new_no <= diffmodel.MAX_LINE_NO + 10 ** 6


@FAST
@given(diff_text)
@example("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,99999999999999999999 +1 @@\n-a\n+b")
@example("--- ../../etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n")
@example("@@ -1,3 +1,3 @@\n a\n\n b\n-- \nsig")
def test_diff_parse_never_raises(text):
    norm, notes = diffmodel.normalise(text)
    assert isinstance(norm, str) and all(isinstance(n, str) for n in notes)
    _check_parsed(diffmodel.parse(text))


@FAST
@given(diff_text)
def test_normalise_is_stable(text):
    """Normalising twice changes nothing more: a repaired diff is repaired."""
    once, _ = diffmodel.normalise(text)
    twice, _ = diffmodel.normalise(once)
    assert diffmodel.parse(twice).files == diffmodel.parse(once).files


@FAST
@given(st.binary(max_size=3000))
def test_split_mbox_random_bytes(data):
    groups, notes = mail.split_mbox(data)
    for g in groups:
        assert g.msgid and g.copies
        for m in g.copies:
            mail.header(m, "Subject")
            mail.body_text(m)
            mail.references(m)
            mail.author(m)
            mail.date_of(m)


@FAST
@given(mutated_mail())
def test_split_and_assemble_mutated_mail(data):
    groups, notes = mail.split_mbox(data)
    try:
        ser = series.assemble(groups)
    except ReviewbotError:
        return
    if ser is not None:
        for p in ser.patches:
            assert p.index >= 1 and p.total >= 1
            _check_parsed(p.diff)


@st.composite
def subject_mail(draw) -> bytes:
    pieces = draw(st.lists(st.one_of(
        st.sampled_from(["[PATCH", "[RFC", "PATCH", "]", "[", "v", "v0", "v99999999999999999999", "0/0", "1/1",
                         "1/10000", "10000/1", "-1/3", "3/2", "1/", "/1", "Re:", "RE: ", "Fwd:", "[net-next]",
                         "{{ 7*7 }}", "$(id)", " ", "\t", "=?utf-8?q?=5BPATCH=5D?=", "\u00e9"]),
        _text), min_size=1, max_size=12))
    subject = " ".join(pieces).replace("\n", " ").replace("\r", " ")
    body = draw(st.sampled_from(["", "text", "---\n" + "diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1 +1 @@\n-a\n+b\n"]))
    msgid = draw(st.sampled_from(["a@b", "../x@y", "a/b@c", "", "<>", "x y@z"]))
    return (f"From x@z Thu Jan  1 00:00:00 1970\nFrom: A <a@b.c>\nSubject: {subject}\n"
            f"Message-ID: <{msgid}>\n\n{body}").encode("utf-8", "surrogatepass")


@FAST
@given(st.lists(subject_mail(), min_size=1, max_size=4))
def test_subjects_and_series_numbers(msgs):
    groups, notes = mail.split_mbox(b"".join(msgs))
    try:
        ser = series.assemble(groups)
    except ReviewbotError:
        return
    if ser is not None:
        assert ser.total >= 1
        assert len(ser.missing) <= series.MAX_EXPECTED


@SLOW
@given(mutated_mail())
def test_review_mbox_mutated_mail(data):
    assume(data.strip())
    try:
        res = review_mbox(data, Options(reviewer=("R", "r@example.org")))
    except ReviewbotError:
        return
    for r in res.replies:
        assert "\n" not in r.subject and "\r" not in r.subject
        for addr in r.to + r.cc:
            assert "\n" not in addr


@SLOW
@given(st.lists(subject_mail(), min_size=1, max_size=3), diff_text)
def test_review_mbox_grammar_mail(msgs, diff):
    data = b"".join(msgs) + (b"From x@z Thu Jan  1 00:00:00 1970\nFrom: B <b@c.d>\nSubject: [PATCH] x\n"
                             b"Message-ID: <d@e>\n\nfix\n---\n" + diff.encode("utf-8", "surrogatepass"))
    try:
        review_mbox(data, Options(reviewer=("R", "r@example.org")))
    except ReviewbotError:
        pass
