"""Integration: a real patch reviewed against the whole linux-source-6.1
tree (78k files), which must stay untouched."""
from __future__ import annotations

import difflib
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.treestate import tree_state

pytestmark = pytest.mark.slow


def _patch(tree, path: str, old: str, new: str, subject: str) -> bytes:
    text = (tree / path).read_text()
    assert old in text
    diff = difflib.unified_diff(text.splitlines(True), text.replace(old, new, 1).splitlines(True),
                                f"a/{path}", f"b/{path}", n=3)
    body = "".join(diff)
    return (f"From: Ada Author <ada@example.org>\nTo: netdev@vger.kernel.org\n"
            f"Subject: [PATCH] {subject}\nDate: Mon, 02 Jan 2023 00:00:00 +0000\n"
            f"Message-ID: <full-tree-{hashlib.sha1(body.encode()).hexdigest()[:10]}@example.org>\n\n"
            f"{subject}.\n\nSigned-off-by: Ada Author <ada@example.org>\n---\n"
            f"diff --git a/{path} b/{path}\n{body}").encode()


def test_review_against_the_full_tree(full_kernel_tree, tmp_path):
    tree, base = full_kernel_tree
    path = "net/xfrm/xfrm_input.c"
    good = _patch(tree, path, "\t__skb_queue_tail(&trans->queue, skb);\n",
                  "#ifdef CONFIG_PREEMPT_RT\n\tskb_queue_tail(&trans->queue, skb);\n#else\n"
                  "\t__skb_queue_tail(&trans->queue, skb);\n#endif\n", "xfrm: lock the queue on RT")
    (tmp_path / "p.mbox").write_bytes(good)
    before = tree_state(tree, files=False)
    p = subprocess.run([sys.executable, "-m", "reviewbot.cli", "review", str(tmp_path / "p.mbox"),
                        "--tree", str(tree), "--format", "json"], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout)
    patch = out["patches"][0]
    assert patch["applies"] is True and out["series"]["base"] == base
    assert "RT001" in [f["rule"] for f in patch["findings"]]
    assert tree_state(tree, files=False) == before
    # the seed (2019) does not apply to 6.1: reported, reviewed anyway, tree intact
    p = subprocess.run([sys.executable, "-m", "reviewbot.cli", "review",
                        str(Path(__file__).parent / "data/seeds/seed004.mbox"), "--tree", str(tree), "--format", "json"],
                       capture_output=True, timeout=300)
    out = json.loads(p.stdout)
    assert out["patches"][0]["applies"] is False and out["patches"][0]["findings"]
    assert tree_state(tree, files=False) == before
