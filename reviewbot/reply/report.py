"""The text format: reply drafts, then notes and a summary table."""
from __future__ import annotations

from reviewbot.reply.outbox import to_message


def text(res) -> str:
    out: list[str] = []
    for r in res.replies:
        msg = to_message(r)
        out.append("=" * 72)
        for h in ("From", "To", "Cc", "Subject", "In-Reply-To"):
            if msg.get(h):
                out.append(f"{h}: {msg[h]}")
        out.append("")
        out.append(r.body.rstrip("\n"))
    if res.replies:
        out.append("=" * 72)
    ser = res.series
    if ser is None:
        out.append("No patch series found.")
    else:
        out.append(f"Series: {ser.subject} (v{ser.version}, {len(ser.patches)} of {ser.total} patch"
                   f"{'es' if ser.total != 1 else ''}{', cover letter' if ser.cover is not None else ''})")
    for n in res.notes:
        out.append(f"note: {n}")
    if res.patches:
        out.append("")
        out.append(f"{'patch':<8} {'applies':<8} {'error':>5} {'warning':>7} {'info':>4}  subject")
        for r in res.patches:
            counts = {s: sum(1 for f in r.findings if f.severity == s) for s in ("error", "warning", "info")}
            applies = {True: "yes", False: "NO", None: "-"}[r.applies]
            out.append(f"{r.patch.label:<8} {applies:<8} {counts['error']:>5} {counts['warning']:>7} "
                       f"{counts['info']:>4}  {r.patch.subject[:50]}")
            for n in r.notes:
                out.append(f"         note: {n}")
    if res.series_findings:
        out.append(f"series-level findings: {len(res.series_findings)}")
    out.append(f"{len(res.replies)} repl{'y' if len(res.replies) == 1 else 'ies'} drafted")
    return "\n".join(out) + "\n"
