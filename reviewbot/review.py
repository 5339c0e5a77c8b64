"""The review pipeline: fetch, assemble, apply, run rules, render."""
from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field

from reviewbot.tree import apply as applymod
from reviewbot.analysis import diffmodel
from reviewbot import engine
from reviewbot.lore import mail
from reviewbot.reply import render
from reviewbot.lore import series as seriesmod
from reviewbot.errors import ReviewbotError
from reviewbot.lore.fetch import DEFAULT_LORE, HttpPolicy, load_source
from reviewbot.findings import Finding, confidence_at_least


@dataclass
class Options:
    lore_url: str = DEFAULT_LORE
    tree: str | None = None
    base: str | None = None
    reviewer: tuple[str, str] = ("", "")
    min_confidence: str = "medium"
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    only_rules: set[str] | None = None


@dataclass
class PatchResult:
    patch: seriesmod.Patch
    applies: bool | None = None
    apply_error: str | None = None
    notes: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Result:
    series: seriesmod.Series | None
    patches: list[PatchResult]
    series_findings: list[Finding]
    replies: list[render.ReplyDraft]
    notes: list[str]
    tree: str | None = None
    base: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    source: str = ""


class _Timer:
    def __init__(self):
        self.t = {}

    def __call__(self, stage):
        timer = self

        class _C:
            def __enter__(self_inner):
                self_inner.s = time.perf_counter()

            def __exit__(self_inner, *a):
                timer.t[stage] = timer.t.get(stage, 0.0) + time.perf_counter() - self_inner.s
        return _C()


def parse_reviewer(text: str) -> tuple[str, str]:
    name, addr = email.utils.parseaddr(text or "")
    if not addr or "@" not in addr:
        return ("reviewbot", "reviewbot@localhost.invalid")
    return (name, addr)


def review_source(source: str, opts: Options, stdin=None, progress=None) -> Result:
    """Fetch and review SOURCE (a Message-ID, a lore URL, an mbox path or '-')."""
    timer = _Timer()
    with timer("fetch"):
        if progress:
            progress("fetching " + (source if source != "-" else "standard input"))
        fetched = load_source(source, opts.lore_url, opts.policy, stdin=stdin)
    res = review_mbox(fetched.data, opts, want_msgid=fetched.msgid, timer=timer, progress=progress)
    res.source = fetched.origin
    return res


def review_mbox(data: bytes, opts: Options, want_msgid: str | None = None, timer=None, progress=None) -> Result:
    """Review the series in the mbox DATA (WANT_MSGID: the message asked for)."""
    timer = timer or _Timer()
    with timer("rules"):
        rules = engine.discover()
    return _review_mbox(data, opts, want_msgid, timer, progress, rules)


def _review_mbox(data, opts, want_msgid, timer, progress, rules) -> Result:
    with timer("assemble"):
        groups, notes = mail.split_mbox(data)
        if not groups:
            # Say why (a message too large or unparseable), not only that.
            raise ReviewbotError("no mail found in the input" + (": " + "; ".join(notes) if notes else ""))
        ser = seriesmod.assemble(groups, want_msgid)
    if ser is None:
        notes.append("no patch in this thread: nothing to review")
        return Result(None, [], [], [], notes, timings=timer.t)
    notes = notes + ser.notes
    results = [PatchResult(p) for p in ser.patches]
    contexts: list[engine.PatchContext] = []
    session = None
    base = None
    try:
        if opts.tree:
            with timer("apply"):
                if progress:
                    progress(f"applying {len(ser.patches)} patch(es) to {opts.tree}")
                session = applymod.TreeSession(opts.tree, None)
                if opts.base:
                    base = session.resolve(opts.base)
                elif ser.base_commit and (found := session.commit_of(ser.base_commit)):
                    base = found
                else:
                    base = session.base
                    if ser.base_commit:
                        notes.append(f"base-commit {ser.base_commit[:12]} is not in the tree; applied to HEAD")
                touched = [path for p in ser.patches for fd in p.diff.files
                           for path in (fd.path, fd.old_path) if path]
                touched += [path for p in ser.patches for c in p.copies
                            for path in _diff_paths(c)]
                session.start(base, touched)
                images = [_apply_one(session, r) for r in results]
        else:
            images = [None] * len(results)
        with timer("parse"):        # the images (blobs), then the parse below
            for r, img in zip(results, images):
                r.notes.extend(r.patch.diff.notes)
                if not r.patch.has_diff:
                    r.notes.append("no diff in this message")
                files = []
                for fd in r.patch.diff.files:
                    pre = post = None
                    if img is not None and session is not None:
                        pre_tree, post_tree = img
                        if pre_tree and fd.old_path and not fd.is_new:
                            pre = session.read_blob(pre_tree, fd.old_path)
                        if post_tree and fd.path:
                            post = session.read_blob(post_tree, fd.path)
                    files.append(engine.FileView(fd, pre, post))
                contexts.append(engine.PatchContext(ser, r.patch, r.patch.diff, files, session is not None,
                                                    tree_path=opts.tree if session is not None else None,
                                                    base=base))
            for c in contexts:
                c.all_patches = contexts
        with timer("parse"):
            for c in contexts:
                for fv in c.c_files():
                    # parse now (memoised by content), so that the
                    # rules stage measures the rules
                    fv.post_tree
                    if not fv.diff.is_new:
                        fv.pre_tree
        with timer("rules"):
            per_patch, series_findings, rule_notes = engine.run(rules, contexts, opts.only_rules)
        with timer("rules"):
            notes.extend(rule_notes)
            for r in results:
                found = per_patch.get(r.patch.index, [])
                kept, dropped = _not_already_raised(ser, r.patch, found)
                r.findings = kept
                r.notes.extend(dropped)
    finally:
        if session is not None:
            session.close()
    with timer("render"):
        replies = render_replies(ser, results, series_findings, opts)
    return Result(ser, results, series_findings, replies, notes, tree=opts.tree, base=base, timings=timer.t)


def _diff_paths(msg) -> list[str]:
    _, difftext = diffmodel.split_body(mail.body_text(msg))
    return [p for fd in diffmodel.parse(difftext).files for p in (fd.path, fd.old_path) if p]


def _apply_one(session: applymod.TreeSession, r: PatchResult):
    p = r.patch
    if not p.has_diff:
        return None
    res = session.apply(p.body, p.diff.text)
    if not res.applies and p.copies:
        for other in p.copies:
            body = mail.body_text(other)
            _, difftext = diffmodel.split_body(body)
            alt = session.apply(body, diffmodel.normalise(difftext)[0])
            if alt.applies:
                p.msg, p.body, p.diff = other, body, diffmodel.parse(difftext)
                r.notes.append("the kept copy did not apply; reviewed another copy of the same Message-ID that does")
                res = alt
                break
    if not res.applies:
        blobs = {fd.old_path: fd.old_blob for fd in p.diff.files
                 if not fd.is_new and fd.old_path and fd.old_blob}
        if blobs and len(blobs) == sum(1 for fd in p.diff.files if not fd.is_new):
            alt = session.apply_on_blobs(p.body, blobs, p.diff.text)
            if alt.applies:
                res = alt
            else:
                res.notes.append(f"patch {p.label}: {alt.error}")
    r.applies = res.applies
    r.apply_error = res.error
    r.notes.extend(res.notes)
    if not res.applies:
        r.notes.append(f"patch {p.label} {res.error}; reviewed the diff text only")
    return (res.pre_tree, res.post_tree)


def _quoted_lines(body: str) -> set[str]:
    out = set()
    for line in body.split("\n"):
        if not line.startswith(">"):
            continue
        s = line
        while s.startswith(">"):
            s = s[1:].lstrip(" ") if not s[1:2] == "+" else s[1:]
        if s.startswith("+"):
            out.add(s[1:].strip())
    return out


def _not_already_raised(ser, patch, found: list[Finding]) -> tuple[list[Finding], list[str]]:
    replies = [r for r in ser.replies if r.in_reply_to == patch.msgid or patch.msgid in r.references]
    if not replies or not found:
        return found, []
    kept, notes = [], []
    quoted = [(r, _quoted_lines(r.body)) for r in replies]
    for f in found:
        text = _line_text(patch, f.path, f.line)
        who = next((r for r, q in quoted if text and text.strip() in q), None)
        if who is not None:
            notes.append(f"{f.rule} not repeated: {who.author[0] or who.author[1]} already replied on these lines")
        else:
            kept.append(f)
    return kept, notes


def _line_text(patch, path, line) -> str | None:
    fd = patch.diff.file(path) if path else None
    if fd is None or line is None:
        return None
    for h in fd.hunks:
        for ln in h.lines:
            if ln.kind == "+" and ln.new_no == line:
                return ln.text
    return None


def render_replies(ser, results: list[PatchResult], series_findings: list[Finding], opts: Options):
    replies = []
    for r in results:
        shown = [f for f in r.findings if confidence_at_least(f.confidence, opts.min_confidence)]
        if shown:
            replies.append(render.patch_reply(r.patch, shown, opts.reviewer))
    shown = [f for f in series_findings if confidence_at_least(f.confidence, opts.min_confidence)]
    if shown and (ser.cover is not None or ser.patches):
        replies.insert(0, render.cover_reply(ser, shown, opts.reviewer))
    return replies


def to_json(res: Result) -> dict:
    ser = res.series
    return {
        "series": None if ser is None else {
            "message_id": ser.message_id,
            "subject": ser.subject,
            "version": ser.version,
            "total": ser.total,
            "cover": ser.cover is not None,
            "base": res.base,
            "tree": res.tree,
        },
        "patches": [{
            "index": r.patch.index,
            "message_id": r.patch.msgid,
            "subject": r.patch.subject,
            "author": mail.format_addr(r.patch.author) if r.patch.author[1] else r.patch.author[0],
            "applies": r.applies,
            "apply_error": r.apply_error,
            "notes": r.notes,
            "findings": [f.to_json() for f in r.findings],
        } for r in res.patches],
        "series_findings": [f.to_json() for f in res.series_findings],
        "replies": [r.to_json() for r in res.replies],
        "notes": res.notes,
        "timings": {k: round(v, 4) for k, v in res.timings.items()},
    }
