"""What "the user's tree is byte-identical" means, for every test that checks it."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path


def tree_state(tree: Path, files: bool = True) -> dict:
    """Everything about a git tree a review could disturb: status, stash,
    worktrees, refs, the index bytes, the object store's file list and (with
    files=True) a hash of every working file.  files=False spares hashing a
    78k-file checkout."""
    def g(*args):
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=tree, capture_output=True,
                              env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}).stdout
    h = hashlib.sha256()
    gitdir = Path(g("rev-parse", "--absolute-git-dir").decode().strip())
    common = Path(g("rev-parse", "--path-format=absolute", "--git-common-dir").decode().strip())
    for p in sorted(tree.rglob("*")) if files else ():
        rel = p.relative_to(tree)
        if rel.parts[0] == ".git" and len(rel.parts) > 1 and rel.parts[1] == "objects":
            continue
        h.update(str(rel).encode() + b"\0")
        if p.is_symlink():
            h.update(b"L" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    objects = sorted(str(p.relative_to(common)) for p in (common / "objects").rglob("*"))
    return {
        "status": g("status", "--porcelain", "--ignored"),
        "stash": g("stash", "list"),
        "worktrees": g("worktree", "list", "--porcelain"),
        "refs": g("for-each-ref"),
        "index": (gitdir / "index").read_bytes() if (gitdir / "index").exists() else None,
        "files": h.hexdigest(),
        "objects": objects,
    }
