"""Findings are typed values: what a rule says about a place in a patch."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEVERITIES = ("info", "warning", "error")
CONFIDENCES = ("low", "medium", "high")


@dataclass(frozen=True)
class Location:
    path: str
    line: int | None
    message: str = ""


@dataclass(frozen=True)
class Finding:
    rule: str            # stable code, e.g. "RT001"
    name: str            # kebab-case name, e.g. "preempt-rt-ifdef"
    family: str          # locking | duplicated-helper | missing-release | preempt-rt | ...
    severity: str        # info | warning | error
    confidence: str      # low | medium | high
    path: str | None     # file in the post-image (None: about the commit message/series)
    line: int | None     # line in the post-image (new side of the diff)
    message: str         # reviewer's question, plain text
    related: tuple[Location, ...] = field(default_factory=tuple)
    end_line: int | None = None      # last line the comment is about (quoting)

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "name": self.name,
            "family": self.family,
            "severity": self.severity,
            "confidence": self.confidence,
            "path": self.path,
            "line": self.line,
            "message": self.message,
            "related": [asdict(r) for r in self.related],
        }

    def key(self) -> tuple:
        """Identity used to compare findings across revisions or pre/post."""
        return (self.rule, self.path, self.message)


def confidence_at_least(conf: str, minimum: str) -> bool:
    return CONFIDENCES.index(conf) >= CONFIDENCES.index(minimum)
