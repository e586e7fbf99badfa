"""Append-only, hash-chained audit log of attestation decisions and policy changes.

Each entry's hash covers its own fields and the previous entry's hash, so
editing, deleting or reordering any entry breaks every hash after it.  The
chain head (last sequence number and hash) lives in its own row: appends lock
it, which serialises writers on every database, and comparing it with the
last entry catches a truncated tail.  An operator who copies the head hash
elsewhere (``sgxcloud audit verify`` prints it) can later prove that nothing
was rewritten even by someone holding the whole database.

Entries never contain secret values: callers pass identities, verdicts,
reasons and hashes only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sgxcloud.cas.store import AuditHead, Database, Repository
from sgxcloud.cas.store.models import AuditEntryRow

GENESIS_HASH = "0" * 64
"""What the first entry chains to (also seeded by the initial migration)."""


class AuditKind(StrEnum):
    ATTESTATION = "attestation"
    POLICY_APPLY = "policy.apply"
    POLICY_DELETE = "policy.delete"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: int
    kind: str
    subject: str
    actor: str
    outcome: str
    detail: dict[str, Any]
    prev_hash: str
    entry_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "subject": self.subject,
            "actor": self.actor,
            "outcome": self.outcome,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the chain: ``ok`` only if no problem was found."""

    entries: int
    head_seq: int
    head_hash: str
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "problems": [{"seq": p.seq, "problem": p.problem} for p in self.problems],
        }


def canonical_json(value: Mapping[str, Any]) -> str:
    """The one serialisation that hashes are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(
    *,
    seq: int,
    at: int,
    kind: str,
    subject: str,
    actor: str,
    outcome: str,
    detail: str,
    prev_hash: str,
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "at": at,
            "kind": kind,
            "subject": subject,
            "actor": actor,
            "outcome": outcome,
            "detail": detail,
            "prev": prev_hash,
        }
    )
    return hashlib.sha256(body.encode()).hexdigest()


def append(
    repo: Repository,
    *,
    kind: AuditKind | str,
    subject: str,
    actor: str,
    outcome: str,
    detail: Mapping[str, Any],
    now: int,
    head: AuditHead | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's transaction (commits with it).

    ``head`` is the chain head this transaction already locked, if it did.
    """
    head = head or repo.lock_audit_head()
    detail_json = canonical_json(detail)
    fields = {
        "seq": head.seq + 1,
        "at": now,
        "kind": str(kind),
        "subject": subject,
        "actor": actor,
        "outcome": outcome,
        "detail": detail_json,
        "prev_hash": head.entry_hash,
    }
    digest = entry_hash(**fields)
    repo.add_audit_entry({**fields, "entry_hash": digest})
    return AuditEntry(head.seq + 1, now, str(kind), subject, actor, outcome, dict(detail),
                      head.entry_hash, digest)


def entries(
    database: Database,
    *,
    after: int = 0,
    limit: int | None = None,
    policies: Iterable[str] | None = None,
) -> list[AuditEntry]:
    """Entries after ``after`` (about ``policies`` only, if given), oldest first."""
    rows = database.run(
        lambda repo: repo.audit_entries(after=after, limit=limit, policies=policies)
    )
    return [_entry(row) for row in rows]


def verify_chain(database: Database) -> ChainReport:
    """Walk the whole chain and report every break found (not just the first)."""
    rows, head = database.run(lambda repo: (repo.audit_entries(), repo.audit_head()))
    problems: list[ChainProblem] = []
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for row in rows:
        if row.seq != expected_seq:
            problems.append(
                ChainProblem(row.seq, f"sequence gap: expected {expected_seq}, found {row.seq}")
            )
        if row.prev_hash != expected_prev:
            problems.append(ChainProblem(row.seq, "previous-hash link broken"))
        recomputed = entry_hash(
            seq=row.seq,
            at=row.at,
            kind=row.kind,
            subject=row.subject,
            actor=row.actor,
            outcome=row.outcome,
            detail=row.detail,
            prev_hash=row.prev_hash,
        )
        if recomputed != row.entry_hash:
            problems.append(ChainProblem(row.seq, "entry hash does not match its contents"))
        expected_prev = row.entry_hash
        expected_seq = row.seq + 1
    last_seq = rows[-1].seq if rows else 0
    if head is None:
        problems.append(ChainProblem(last_seq, "chain head row is missing"))
        return ChainReport(len(rows), last_seq, expected_prev, problems)
    if head.seq != last_seq or head.entry_hash != expected_prev:
        problems.append(
            ChainProblem(
                head.seq,
                f"chain head (seq {head.seq}) does not match the last entry (seq {last_seq})",
            )
        )
    return ChainReport(len(rows), head.seq, head.entry_hash, problems)


def _entry(row: AuditEntryRow) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=row.at,
        kind=row.kind,
        subject=row.subject,
        actor=row.actor,
        outcome=row.outcome,
        detail=json.loads(row.detail),
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )
