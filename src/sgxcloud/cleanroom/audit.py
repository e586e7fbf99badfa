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
PAGE_BYTES = 1 << 20
"""About how many bytes of entries one page of the log holds at most (always at least
one entry): what a reader of ``GET /v1/audit`` makes the coordinator hold, whatever
the size of the log (the CAS bounds its audit pages the same way, red team rt9 F6)."""
AUDIT_MORE_HEADER = "X-Audit-More-After"
"""On a ``GET /v1/audit`` page with entries after it: the ``after`` of the next page
(the seq of the page's last entry; the CAS's header of the same name carries a ref)."""
PAGE_ENTRIES = 1000
"""Most entries a page holds."""
_INDEX_EVERY = 256
"""The log remembers the byte offset of every this-many-th entry it has read, so a
page far into a long log starts with a seek and at most this many skipped lines."""
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
        # _offsets[i]: byte offset of entry number i * _INDEX_EVERY + 1 (entries counted
        # from 1 in file order, blank lines skipped), as far as pages have read
        self._offsets: list[int] = [0]
        self._index_lock = threading.Lock()  # _offsets only: appends never wait for a read

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

    def page(
        self, after: int = 0, limit: int = PAGE_ENTRIES, max_bytes: int = PAGE_BYTES
    ) -> tuple[list[AuditEntry], bool]:
        """Entries ``after + 1`` onwards (counted from 1 in file order: their ``seq``
        in an intact log), at most ``limit`` of them and about ``max_bytes`` of their
        lines (at least one entry); and whether the page stopped at either bound with
        entries left after it.  See :meth:`page_lines`."""
        lines, more = self.page_lines(after, limit, max_bytes)
        return [_parse(line.decode("utf-8"), after + i) for i, line in enumerate(lines, 1)], more

    def page_lines(
        self, after: int = 0, limit: int = PAGE_ENTRIES, max_bytes: int = PAGE_BYTES
    ) -> tuple[list[bytes], bool]:
        """The lines of :meth:`page`'s entries as stored (each one JSON object, newline
        stripped), for an answer that need not parse or re-serialise them.

        Memory and work do not grow with the log's length: the read starts from a
        remembered offset at most ``_INDEX_EVERY`` entries back.  It takes no lock a
        writer waits for: the log is append-only, so the read stops at the length the
        file had when it began (entries committed by then) and never reads a line
        still being written (no newline yet).  Only the offset index is shared, under
        its own short lock.
        """
        with self._index_lock:
            offsets = self._offsets
            slot = min(max(after, 0) // _INDEX_EVERY, len(offsets) - 1)
            start = offsets[slot]
        with self.path.open("rb") as handle:
            size = handle.seek(0, 2)
            if start > size:  # the file was replaced by a shorter one
                with self._index_lock:
                    self._offsets = [0]
                slot, start = 0, 0
            number = slot * _INDEX_EVERY  # entries before the offset we seek to
            handle.seek(start)
            found: list[tuple[int, int]] = []  # (slot, offset) met on the way
            page: list[bytes] = []
            used = 0
            more = False
            at = start
            while at < size:
                line = handle.readline(size - at)
                if not line.endswith(b"\n"):
                    break  # a line being written (past the committed length)
                line_at, at = at, at + len(line)
                if not line.strip():
                    continue
                if number % _INDEX_EVERY == 0:
                    found.append((number // _INDEX_EVERY, line_at))
                number += 1
                if number <= after:
                    continue
                if page and (len(page) >= limit or used + len(line) > max_bytes):
                    more = True
                    break
                page.append(line.rstrip(b"\r\n"))
                used += len(line)
        with self._index_lock:
            for index, offset in found:
                if index == len(self._offsets) and offset <= size:
                    self._offsets.append(offset)
        return page, more

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


def verify_chain(entries: Iterable[AuditEntry], prev: str = GENESIS, after: int = 0) -> str:
    """Return the head hash of an intact chain; raise AuditChainError at the first break.

    ``prev`` and ``after``: the head hash and the last ``seq`` of the entries before
    these, already verified (a page of the log after the first), so checking the pages
    one after another, each from the head the previous one returned, checks exactly
    what checking the whole log at once would."""
    expected_seq = after + 1
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
