"""Append-only, hash-chained audit log of every request and decision.

One JSON object per line.  Each entry carries the SHA-256 of the previous
entry, so removing, reordering or editing any line breaks the chain from
there on; :func:`verify_chain` finds the first broken entry.  Every party
may read the whole log: it holds who asked what (query texts), each verdict
(release, cache hit, refusal and its reason), which datasets were ingested
(never how many rows: a provider's sizes are its own), and for each release
its recipients and the keyed digest of the signed result — never a released
figure (only the result's recipients get those, and the digest's key) and
never an identifier, raw or hashed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sgxcloud.cleanroom.definition import canonical_json
from sgxcloud.cleanroom.errors import AuditChainError

GENESIS = "0" * 64
EVENTS = ("ingest", "ingest_rejected", "query", "release", "cache_hit", "refusal")


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    event: str
    actor: str
    data: dict[str, Any]
    prev: str
    hash: str

    def compute_hash(self) -> str:
        body = asdict(self)
        body.pop("hash")
        return hashlib.sha256(canonical_json(body)).hexdigest()


class AuditLog:
    """The log file of one coordinator; safe for threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._lock = threading.Lock()
        self._known: tuple[int, int, str] | None = None  # (file size, next seq, head hash)

    def _head(self, handle: Any) -> tuple[int, str]:
        """Next sequence number and previous hash; re-read only if another
        writer (process) appended since our last write."""
        size = handle.seek(0, 2)
        if self._known and self._known[0] == size:
            return self._known[1], self._known[2]
        handle.seek(0)
        last = _last_entry(handle)
        return (last.seq + 1, last.hash) if last else (1, GENESIS)

    def append(self, event: str, actor: str, data: dict[str, Any]) -> AuditEntry:
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        with self._lock, self.path.open("a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # other processes append too
            try:
                seq, prev = self._head(handle)
                draft = AuditEntry(
                    seq,
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                    event,
                    actor,
                    json.loads(canonical_json(data)),
                    prev,
                    "",
                )
                entry = AuditEntry(**{**asdict(draft), "hash": draft.compute_hash()})
                handle.seek(0, 2)
                handle.write(json.dumps(asdict(entry), sort_keys=True, allow_nan=False) + "\n")
                handle.flush()
                self._known = (handle.tell(), entry.seq + 1, entry.hash)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return entry

    def entries(self) -> list[AuditEntry]:
        return list(read_entries(self.path))

    def verify(self) -> str:
        return verify_chain(self.entries())


def _last_entry(handle: Any) -> AuditEntry | None:
    last_line = None
    for line in handle:
        if line.strip():
            last_line = line
    return _parse(last_line, 0) if last_line else None


def _parse(line: str, lineno: int) -> AuditEntry:
    try:
        return AuditEntry(**json.loads(line))
    except (json.JSONDecodeError, TypeError) as exc:
        raise AuditChainError(lineno, "not a valid audit entry") from exc


def read_entries(path: str | Path) -> Iterator[AuditEntry]:
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                yield _parse(line, lineno)


def verify_chain(entries: Iterable[AuditEntry]) -> str:
    """Return the head hash of an intact chain; raise AuditChainError at the first break."""
    prev = GENESIS
    expected_seq = 1
    for entry in entries:
        if entry.seq != expected_seq:
            raise AuditChainError(entry.seq, f"expected entry {expected_seq}")
        if entry.prev != prev:
            raise AuditChainError(entry.seq, "does not follow the previous entry")
        if entry.compute_hash() != entry.hash:
            raise AuditChainError(entry.seq, "content does not match its hash")
        prev = entry.hash
        expected_seq += 1
    return prev
