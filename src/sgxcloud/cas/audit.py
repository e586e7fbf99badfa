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

from sgxcloud.bounded import bounded
from sgxcloud.canonical import canonical_json as shared_canonical_json
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


PAGE = 1000
"""Entries read per transaction while walking the chain."""

# What kind of break a problem is, without saying where (answers to owners
# must not carry chain positions: see sgxcloud.cas.service.core.verify_audit).
SEQUENCE_GAP = "sequence gap"
LINK_BROKEN = "previous-hash link broken"
CONTENT_CHANGED = "entry hash does not match its contents"
HEAD_MISSING = "chain head row is missing"
HEAD_MISMATCH = "chain head does not match the last entry"
REWRITTEN = "an entry verified earlier was changed or removed"


@dataclass(frozen=True)
class Checkpoint:
    """A position verified earlier: entry ``seq`` (0: none yet) had hash ``entry_hash``."""

    seq: int
    entry_hash: str


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str
    kind: str = ""


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the chain: ``ok`` only if no problem was found.

    ``entries``: how many this walk checked (all of them, unless it started
    from a checkpoint).
    """

    entries: int
    head_seq: int
    head_hash: str
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the next walk may start from (the head this one reached)."""
        return Checkpoint(self.head_seq, self.head_hash)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "problems": [{"seq": p.seq, "problem": p.problem} for p in self.problems],
        }


def canonical_json(value: Mapping[str, Any]) -> str:
    """The one serialisation that hashes are computed over: ASCII, as every stored entry."""
    return shared_canonical_json(value, ascii_only=True).decode("ascii")


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
    detail = bounded(detail)
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
    return AuditEntry(
        head.seq + 1, now, str(kind), subject, actor, outcome, dict(detail), head.entry_hash, digest
    )


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


def verify_chain(
    database: Database, since: Checkpoint | None = None, *, page: int = PAGE
) -> ChainReport:
    """Walk the chain and report every break found (not just the first).

    Without ``since``, the whole chain.  From a checkpoint (a position this
    caller verified before and kept where the database cannot change it),
    only what was appended since: the checkpointed entry must still hold its
    hash and the entries after it must link to it, so a rewrite of the chain
    up to there shows, while an edit of an older entry that leaves every
    hash alone is left to full walks (``sgxcloud audit verify``).  Rows are
    read ``page`` at a time, each page in a transaction of its own: memory
    and lock time stay bounded however long the chain is.
    """
    start = since or Checkpoint(0, GENESIS_HASH)
    # The last entry before the head: an append moves both in one commit, so
    # a head read after it is at or past it (at every isolation level), and
    # entries appended meanwhile lie beyond the head and wait for the next walk.
    last_seq, head = database.run(lambda repo: (repo.last_audit_seq(), repo.audit_head()))
    end = head.seq if head is not None else last_seq
    problems: list[ChainProblem] = []
    expected_prev, expected_seq = start.entry_hash, start.seq + 1
    cursor, walked = start.seq, 0
    if start.seq:
        problems.extend(_anchor_problems(database, start))
    while cursor < end:
        rows = database.run(lambda repo, after=cursor: repo.audit_entries(after=after, limit=page))
        rows = [row for row in rows if row.seq <= end]
        if not rows:
            break
        for row in rows:
            problems.extend(_row_problems(row, expected_seq, expected_prev))
            expected_prev = row.entry_hash
            expected_seq = row.seq + 1
        walked += len(rows)
        cursor = rows[-1].seq
    if head is None:
        problems.append(ChainProblem(cursor, "chain head row is missing", HEAD_MISSING))
        return ChainReport(walked, cursor, expected_prev, problems)
    if head.seq < start.seq:
        problems.append(
            ChainProblem(
                head.seq,
                f"chain head (seq {head.seq}) is behind entry {start.seq}, verified earlier",
                HEAD_MISMATCH,
            )
        )
    elif last_seq != head.seq or cursor != head.seq or head.entry_hash != expected_prev:
        found = last_seq if last_seq > head.seq else cursor
        problems.append(
            ChainProblem(
                head.seq,
                f"chain head (seq {head.seq}) does not match the last entry (seq {found})",
                HEAD_MISMATCH,
            )
        )
    return ChainReport(walked, head.seq, head.entry_hash, problems)


OWNED_CHECKED = 1000
"""How many of a caller's older entries each verify re-checks: the latest, and as many
more continuing the caller's sweep (see :func:`recheck_entries_of`)."""


ROUND_LEFT_COUNTED = 100_000
"""How far the entries a round still has to re-check are counted: at this value the
count means "at least" (the count is an index walk over the caller's entries; bounded so
a big owner's call stays bounded)."""


@dataclass(frozen=True)
class Progress:
    """Where a principal's re-check round stands after one call of :func:`recheck_entries_of`.

    ``complete``: this call reached the principal's last entry before the checkpoint, so
    every one of its entries was re-checked in round ``round`` (older ones by the sweep,
    newer ones by the walk from the checkpoint); the next call starts round ``round + 1``.
    ``left``: the principal's entries the round still has to re-check (up to
    :data:`ROUND_LEFT_COUNTED`; 0 when complete).
    """

    round: int
    complete: bool
    left: int


@dataclass(frozen=True)
class Sweep:
    """Where a principal's re-check of its older entries goes on from: after ``seq``, in
    round ``round`` (a round ends at the caller's last entry; the next starts at 0)."""

    round: int
    seq: int

    def later(self, other: Sweep) -> Sweep:
        return max(self, other, key=lambda s: (s.round, s.seq))


def recheck_entries_of(
    database: Database,
    principal: str,
    *,
    before: int,
    sweep: Sweep,
    limit: int = OWNED_CHECKED,
    walked_to: int | None = None,
) -> tuple[list[ChainProblem], Sweep, Progress]:
    """Re-check ``principal``'s entries older than ``before``; where the sweep goes on from,
    and how far its round is (:class:`Progress`).

    ``walked_to``: the last position the caller's walk checked (entries up to it are
    swept by the round's later calls, whose ``before`` will have moved there); the round
    is complete when no entry of the principal is left between the sweep's new position
    and it.

    The entries are those about the policies in the principal's audit view
    (``policy_access``).  Two sets, each at most ``limit``: the latest before
    ``before``, and the next ones after ``sweep.seq`` — so every one of the
    principal's entries is re-checked once per round of its verify calls
    (⌈entries / limit⌉ calls), however many entries others add about its
    policies: they lengthen the round, they cannot push an entry out of it
    (red team rt7 finding 4: the latest 1000 alone were a window anyone could
    fill in ~2 s with keyless malformed attestations).

    For what an incremental walk (:func:`verify_chain` from a checkpoint at
    ``before``) no longer looks at: each entry must still match its hash,
    and its successor must link to that hash and match its own.  So an
    edit that leaves the hash alone (red team rt6 finding 2) shows, and so
    does one that rewrites the entry's hash; a writer who also rewrites the
    successor's link and hash moves the break one entry further, onto an
    entry of someone else that only the full walk (``sgxcloud audit
    verify``) checks.  The cost follows the caller's entries (indexed
    reads), never the whole chain.
    """
    if before <= 1:  # nothing older than the checkpoint: the walk checked it all
        return [], Sweep(sweep.round + 1, 0), Progress(sweep.round, True, 0)
    latest, swept = database.run(
        lambda repo: (
            repo.audit_entries_for(principal, before=before, limit=limit, latest=True),
            repo.audit_entries_for(principal, after=sweep.seq, before=before, limit=limit),
        )
    )
    if not swept and sweep.seq:  # the last round ended exactly at the caller's last entry
        sweep = Sweep(sweep.round + 1, 0)
        swept = database.run(
            lambda repo: repo.audit_entries_for(principal, before=before, limit=limit)
        )
    left = 0
    if len(swept) == limit:
        following = Sweep(sweep.round, swept[-1].seq)
        end = before if walked_to is None else max(before, walked_to + 1)
        left = database.run(
            lambda repo: repo.count_audit_entries_for(
                principal, after=following.seq, before=end, cap=ROUND_LEFT_COUNTED
            )
        )
    if left == 0:  # the round reached the caller's last entry (the walk checked the rest)
        following = Sweep(sweep.round + 1, 0)
    rows = {row.seq: row for row in (*latest, *swept)}
    problems = _recheck(database, sorted(rows.values(), key=lambda row: row.seq))
    return problems, following, Progress(sweep.round, left == 0, left)


def _recheck(database: Database, owned: list[AuditEntryRow]) -> list[ChainProblem]:
    if not owned:
        return []
    successors = {
        row.seq: row
        for row in database.run(lambda repo: repo.audit_entries_at(r.seq + 1 for r in owned))
    }
    owned_seqs = {row.seq for row in owned}  # re-hashed once each, as owned
    problems: list[ChainProblem] = []
    for row in owned:
        if _recomputed(row) != row.entry_hash:
            problems.append(
                ChainProblem(row.seq, "entry hash does not match its contents", CONTENT_CHANGED)
            )
        after = successors.get(row.seq + 1)
        if after is None:  # before <= the head: every owned entry has a successor
            problems.append(ChainProblem(row.seq + 1, "entry is missing", SEQUENCE_GAP))
            continue
        if after.prev_hash != row.entry_hash:
            problems.append(ChainProblem(after.seq, "previous-hash link broken", LINK_BROKEN))
        if after.seq not in owned_seqs and _recomputed(after) != after.entry_hash:
            problems.append(
                ChainProblem(after.seq, "entry hash does not match its contents", CONTENT_CHANGED)
            )
    return problems


def _row_problems(row: AuditEntryRow, expected_seq: int, expected_prev: str) -> list[ChainProblem]:
    problems = []
    if row.seq != expected_seq:
        problems.append(
            ChainProblem(
                row.seq, f"sequence gap: expected {expected_seq}, found {row.seq}", SEQUENCE_GAP
            )
        )
    if row.prev_hash != expected_prev:
        problems.append(ChainProblem(row.seq, "previous-hash link broken", LINK_BROKEN))
    if _recomputed(row) != row.entry_hash:
        problems.append(
            ChainProblem(row.seq, "entry hash does not match its contents", CONTENT_CHANGED)
        )
    return problems


def _anchor_problems(database: Database, start: Checkpoint) -> list[ChainProblem]:
    """The checkpointed entry must be there, whole, with the hash it had when verified."""
    rows = database.run(lambda repo: repo.audit_entries(after=start.seq - 1, limit=1))
    row = rows[0] if rows else None
    if (
        row is None
        or row.seq != start.seq
        or row.entry_hash != start.entry_hash
        or _recomputed(row) != row.entry_hash
    ):
        return [
            ChainProblem(start.seq, "an entry verified earlier was changed or removed", REWRITTEN)
        ]
    return []


def _recomputed(row: AuditEntryRow) -> str:
    return entry_hash(
        seq=row.seq,
        at=row.at,
        kind=row.kind,
        subject=row.subject,
        actor=row.actor,
        outcome=row.outcome,
        detail=row.detail,
        prev_hash=row.prev_hash,
    )


def entry_of(row: AuditEntryRow) -> AuditEntry:
    """A stored row as an :class:`AuditEntry` (its detail parsed)."""
    return _entry(row)


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
