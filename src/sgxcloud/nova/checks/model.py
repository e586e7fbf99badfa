"""What every check tool reports: findings with a verdict and a one-line fix.

The three tools (host check, VM EPC, guest check) share this shape so that an
operator reads one kind of table and a script parses one kind of JSON.  The
JSON layout is a public contract, documented by the schemas in
``docs/operations/*.schema.json``; bump ``SCHEMA_VERSION`` on any change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class Status(enum.StrEnum):
    """A finding's verdict, ordered from harmless to blocking."""

    OK = "ok"
    WARNING = "warning"
    FAILURE = "failure"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Status.OK: 0, Status.WARNING: 1, Status.FAILURE: 2}


@dataclass(frozen=True)
class Finding:
    """One fact checked: what was looked at, what was found, how to fix it."""

    check: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
            "data": self.data,
        }


def ok(check: str, detail: str, **data: Any) -> Finding:
    return Finding(check, Status.OK, detail, None, data)


def warning(check: str, detail: str, fix: str, **data: Any) -> Finding:
    return Finding(check, Status.WARNING, detail, fix, data)


def failure(check: str, detail: str, fix: str, **data: Any) -> Finding:
    return Finding(check, Status.FAILURE, detail, fix, data)


@dataclass
class Report:
    """Findings of one tool run; the verdict is the worst finding's status."""

    tool: str
    root: str
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, *findings: Finding) -> None:
        self.findings.extend(findings)

    @property
    def verdict(self) -> Status:
        worst = max((f.status for f in self.findings), key=lambda s: s.rank, default=Status.OK)
        return worst

    @property
    def ready(self) -> bool:
        """True when nothing blocks: warnings are advice, failures are not."""
        return self.verdict is not Status.FAILURE

    @property
    def exit_code(self) -> int:
        return 0 if self.ready else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": self.tool,
            "root": self.root,
            "verdict": self.verdict.value,
            "ready": self.ready,
            "findings": [f.to_dict() for f in self.findings],
            "facts": self.facts,
        }
