"""The quoting is code: exact strings."""
from __future__ import annotations

from types import SimpleNamespace

from reviewbot.analysis import diffmodel
from reviewbot.reply import render
from reviewbot.findings import Finding

DIFF = """\
diff --git a/net/core/x.c b/net/core/x.c
--- a/net/core/x.c
+++ b/net/core/x.c
@@ -10,11 +10,13 @@ static int x_init(void)
 \tint a;
 \tint b;
 \tint c;
 \tint d;
 \tint e;
+\tspin_lock(&x_lock);
 \ta = 1;
 \tb = 2;
+\tspin_unlock(&x_lock);
 \tc = 3;
 \td = 4;
 \te = 5;
 \treturn 0;
"""


def finding(line, msg, end=None):
    return Finding("TST001", "test-rule", "locking", "warning", "high", "net/core/x.c", line, msg, (),
                   end_line=end)


def patch_with(diff):
    return SimpleNamespace(diff=diffmodel.parse(diff), subject="x: init", msg=None)


def test_quote_two_comments_with_skip_and_nothing_after_last():
    p = patch_with(DIFF)
    lines, general = render.quote_patch(p, [finding(15, "Is x_lock the right lock here?"),
                                            finding(18, "Why drop it before c is set?")])
    assert general == []
    assert "\n".join(lines) == """\
> diff --git a/net/core/x.c b/net/core/x.c
> --- a/net/core/x.c
> +++ b/net/core/x.c
> @@ -10,11 +10,13 @@ static int x_init(void)
> [...]
>  \tint c;
>  \tint d;
>  \tint e;
> +\tspin_lock(&x_lock);

Is x_lock the right lock here?

>  \ta = 1;
>  \tb = 2;
> +\tspin_unlock(&x_lock);

Why drop it before c is set?
"""


def test_comment_spanning_lines_and_wrapping():
    p = patch_with(DIFF)
    long = ("Could this be a problem when x_init() runs concurrently with the teardown path that "
            "also takes x_lock, or is that excluded by the caller?")
    lines, _ = render.quote_patch(p, [finding(15, long, end=18)])
    text = "\n".join(lines)
    assert "> +\tspin_unlock(&x_lock);\n\nCould this be a problem" in text
    assert all(len(l) <= 72 for l in text.split("\n") if not l.startswith(">"))


def test_unanchored_finding_goes_to_top():
    p = patch_with(DIFF)
    lines, general = render.quote_patch(p, [Finding("TST001", "t", "f", "warning", "high", None, None,
                                                    "Could the commit message say why?")])
    assert lines == [] and len(general) == 1


def test_normalise_repairs_mail_damage():
    damaged = DIFF.replace("\n \tint c;\n", "\n\n").replace("\n", "\r\n") + "-- \r\n2.39.0\r\n"
    pd = diffmodel.parse(damaged)
    assert pd.files and len(pd.files[0].hunks) == 1
    assert [ln.new_no for ln in pd.files[0].added()] == [15, 18]
    assert any("blank context" in n for n in pd.notes)


def test_lying_hunk_header_is_recounted():
    lying = DIFF.replace("@@ -10,11 +10,13 @@", "@@ -10,40 +10,3 @@")
    pd = diffmodel.parse(lying)
    h = pd.files[0].hunks[0]
    assert (h.old_len, h.new_len) == (11, 13)
    assert any("recounted" in n for n in pd.notes)


def test_unsafe_paths_are_ignored():
    evil = DIFF.replace("a/net/core/x.c", "a/../../etc/passwd").replace("b/net/core/x.c", "b/../../etc/passwd")
    pd = diffmodel.parse(evil)
    assert pd.files == []
    assert any("unsafe path" in n for n in pd.notes)
