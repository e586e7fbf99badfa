"""Database access for the service: one :class:`Repository` per transaction.

The service layer never writes SQL; it opens ``Database.transaction()`` and
calls these methods.  Every read-modify-write takes a row lock first
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions already hold
the database write lock from ``BEGIN IMMEDIATE``), so concurrent requests
serialise instead of overwriting each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, union_all, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from sgxcloud.cas.store import db
from sgxcloud.cas.store.errors import DuplicateRow as DuplicateRow
from sgxcloud.cas.store.errors import StoreError
from sgxcloud.cas.store.models import (
    AuditCheckpointRow,
    AuditEntryRow,
    AuditHeadRow,
    AuditSweepRow,
    DeploymentRow,
    NonceRow,
    PolicyAccessRow,
    PolicyRow,
    PolicyVersionRow,
    SecretRow,
    SpentSignatureRow,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

# PostgreSQL SQLSTATEs that mean "try the whole transaction again".
_RETRYABLE_PG = {"40001", "40P01"}
_MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class StoredPolicy:
    name: str
    version: int
    policy_hash: str
    text: str
    owners: tuple[str, ...]
    updated_at: int
    updated_by: str
    # principal ids of the readers the text lists who consented to it (earlier or with
    # this version): only these get the policy in their audit view (only written;
    # reads leave it empty; red team rt7 finding 4/5)
    readers: tuple[str, ...] = ()
    # the validated document as ``sgxcloud.cas.policy.load.compiled_form`` wrote it when
    # the policy was applied (None for rows applied before migration 0008)
    compiled: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class AuditHead:
    """Where the audit chain ends: the next entry gets ``seq + 1`` and links ``entry_hash``."""

    seq: int
    entry_hash: str


@dataclass(frozen=True)
class SealedSecret:
    policy: str
    name: str
    kind: str
    master_key_id: str
    wrapped_key: bytes
    ciphertext: bytes
    spec_hash: str
    created_at: int


# Replicas share one database but not one clock.  A used request, consent or nonce
# is remembered this long past its own expiry, so a replica whose clock is behind
# the purging one's (by up to this much) still finds it and refuses a replay.
# Replicas' clocks must agree within this margin (docs/cas/operator-guide.md).
REPLICA_CLOCK_MARGIN = 3600


class Database:
    """The service's database: engine, schema, and transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite has one writer at a time and every transaction here takes the
        # write lock at BEGIN: writers (threads, and other processes such as
        # the workers of one 'cas serve') queue on db.writer_lock instead of
        # SQLite's polling busy handler, which made the latency tail.
        self._local_writer = db.writer_lock(engine)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Database:
        """Connect to ``url`` and, unless told not to, migrate it to the newest schema.

        Without migration (read-only tools such as ``sgxcloud audit``) a
        SQLite file must already exist: SQLite would otherwise create an empty
        one, leaving a stray file behind a mistyped path.
        """
        if not migrate:
            missing = db.missing_sqlite_file(url)
            if missing is not None:
                raise StoreError(f"no database file {missing}: check database_url")
        for message in db.secure_sqlite_files(url, create=migrate):
            log.warning("%s", message)
        engine = db.make_engine(url)
        try:
            if migrate:
                db.upgrade(engine)
            elif not db.schema_is_current(engine):
                raise StoreError("database schema is not current: run the service once to migrate")
        except OperationalError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the database: {_reason(exc)}") from exc
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()
        if isinstance(self._local_writer, db.SqliteWriterLock):
            self._local_writer.close()

    def ping(self) -> None:
        """One round trip to the database; StoreError if it does not answer."""
        # A raw connection: no transaction, so no SQLite write lock for a probe.
        try:
            raw = self.engine.raw_connection()
        except DBAPIError as exc:
            raise StoreError(f"database unreachable: {_reason(exc)}") from exc
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
        except Exception as exc:  # the driver's own error class, whatever the backend
            raw.invalidate()  # never back to the pool: it may be broken
            raise StoreError(f"database unreachable: {type(exc).__name__}") from exc
        else:
            raw.rollback()  # the pool does not reset connections (see db.make_engine)
        raw.close()

    @contextmanager
    def transaction(self) -> Iterator[Repository]:
        """One transaction: committed on success, rolled back on any exception."""
        # A Core connection; the ORM session only comes when a method needs it
        # (the attestation path does not): making one per request cost more
        # than the statements it ran.
        with contextlib.ExitStack() as stack:
            if self._local_writer is not None:
                stack.enter_context(self._local_writer)
            connection = stack.enter_context(self.engine.begin())
            repo = Repository(connection)
            try:
                yield repo
                repo.flush()
            finally:
                repo.close()

    def run(self, work: Callable[[Repository], T]) -> T:
        """Run ``work`` in a transaction, retrying it when the database says to.

        Deadlocks and serialisation failures on PostgreSQL, and a busy SQLite
        database, are transient: the whole transaction is replayed.
        """
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self.transaction() as repo:
                    return work(repo)
            except DBAPIError as exc:
                if attempt == _MAX_ATTEMPTS or not _is_transient(exc):
                    if isinstance(exc, OperationalError) or exc.connection_invalidated:
                        raise StoreError(f"database error: {_reason(exc)}") from exc
                    raise
            time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def _is_transient(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        # The connection broke (e.g. the database restarted) and the pool has
        # dropped it and its siblings.  Replaying is safe even if the break hid
        # a commit: nonces, request ids and chain positions are unique keys,
        # so the replay fails instead of acting twice.
        return True
    code = getattr(exc.orig, "sqlstate", None)
    if code in _RETRYABLE_PG:
        return True
    return "database is locked" in str(exc.orig)


def _reason(exc: DBAPIError) -> str:
    # The driver's first line names the problem without echoing parameters.
    return str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__


class Repository:
    """Queries and updates within one transaction."""

    def __init__(self, connection: Connection) -> None:
        # Core statements on the hot path (attestation) skip the ORM's
        # per-statement work; ORM queries run in the same transaction.
        self._connection = connection
        self._dialect = connection.dialect.name
        self._session: Session | None = None
        self._driver: object | None = None

    @property
    def session(self) -> Session:
        """An ORM session joined to this transaction (made on first use)."""
        if self._session is None:
            # Joined to the connection's transaction, which the Database
            # commits or rolls back; the session itself never commits.
            self._session = Session(bind=self._connection, expire_on_commit=False)
        return self._session

    def flush(self) -> None:
        if self._session is not None:
            self._session.flush()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the deployment ----------------------------------------------------------

    def deployment_id(self) -> str:
        """This deployment's id (made once with the database, migration 0003).

        Owners' signatures name it; replicas sharing the database share it.
        """
        found = self._connection.execute(
            select(DeploymentRow.deployment_id).where(DeploymentRow.id == 1)
        ).scalar()
        if found is None:
            raise StoreError("the database names no deployment (its 'deployment' row is missing)")
        return found

    def renew_deployment_id(self) -> str:
        """A new random deployment id (for a copy becoming a deployment of its own)."""
        fresh = os.urandom(16).hex()
        done = self._connection.execute(
            update(DeploymentRow).where(DeploymentRow.id == 1).values(deployment_id=fresh)
        )
        if done.rowcount != 1:
            raise StoreError("the database names no deployment (its 'deployment' row is missing)")
        return fresh

    # -- nonces --------------------------------------------------------------

    def spend_nonce(self, nonce: str, *, expires_at: int, now: int) -> bool:
        """Record ``nonce`` as used; False if it already was (by any replica).

        An insert that does nothing on conflict: the primary key decides, so
        of two concurrent spends exactly one commits a row.
        """
        # Core on the table, with RETURNING: the ORM's bulk path reports no rowcount on
        # PostgreSQL, and a returned row is the one unambiguous "inserted" on both.
        values = {"nonce": nonce, "issued_at": now, "expires_at": expires_at, "used_at": now}
        return self._hot(_SPEND_NONCE, values) is not None

    def purge_nonces(self, before: int) -> int:
        """Forget spent nonces that expired before ``before`` (they can no longer check).

        Callers pass ``before`` at least ``REPLICA_CLOCK_MARGIN`` in the past, for
        the same reason as ``spend_signature``.
        """
        result = self.session.execute(delete(NonceRow).where(NonceRow.expires_at < before))
        return result.rowcount

    # -- owners' signed statements ----------------------------------------------

    def spend_signature(self, spend_id: str, *, expires_at: int, now: int) -> bool:
        """Record ``spend_id`` as used; False if it already was (by any replica).

        The same insert-or-nothing as ``spend_nonce``: the primary key decides,
        and a duplicate leaves the surrounding transaction usable.
        """
        table = SpentSignatureRow.__table__
        # Not at ``expires_at`` by this replica's clock: a replica whose clock is
        # behind would still accept the request, and find no record of it.
        self.session.execute(delete(table).where(table.c.expires_at < now - REPLICA_CLOCK_MARGIN))
        values = {"id": spend_id, "expires_at": expires_at}
        return self._connection.execute(_SPEND_SIGNATURE, values).first() is not None

    # -- policies ------------------------------------------------------------

    def policy_version(self, name: str) -> tuple[int, str] | None:
        """The current (version, hash) of policy ``name``, or None: one narrow read.

        A version number is never reused for a name (deletions are versions
        too), so with the hash it names one policy text and one generation of
        its secrets: callers may reuse what they loaded for the same pair.
        """
        row = self._hot(_POLICY_VERSION, {"name": name})
        return None if row is None else (row[0], row[1])

    def get_policy(self, name: str, *, lock: bool = False) -> StoredPolicy | None:
        query = select(PolicyRow).where(PolicyRow.name == name)
        if lock:
            query = query.with_for_update()
        row = self.session.scalars(query).one_or_none()
        return None if row is None else _policy(row)

    def list_policies(self) -> list[StoredPolicy]:
        rows = self.session.scalars(select(PolicyRow).order_by(PolicyRow.name))
        return [_policy(row) for row in rows]

    def policy_names(self) -> list[str]:
        """The names of all live policies (names only: one index scan)."""
        return list(self.session.scalars(select(PolicyRow.name)))

    def count_policies(self) -> int:
        return self.session.scalar(select(func.count()).select_from(PolicyRow)) or 0

    def policies_readable_by(self, principal: str) -> set[str]:
        """Current policies ``principal`` owns (signed) or reads with consent: one index range."""
        query = select(PolicyAccessRow.policy).where(PolicyAccessRow.principal == principal)
        return set(self.session.scalars(query))

    def has_audit_scope(self, principal: str) -> bool:
        """Whether ``principal`` owns or reads (with consent) any current policy."""
        query = select(PolicyAccessRow.policy).where(PolicyAccessRow.principal == principal)
        return self.session.scalars(query.limit(1)).first() is not None

    def access_of(self, policy: str) -> set[str]:
        """Who has ``policy`` in their audit view: its signed owners and consenting readers."""
        query = select(PolicyAccessRow.principal).where(PolicyAccessRow.policy == policy)
        return set(self.session.scalars(query))

    def audit_sweep(self, principal: str) -> tuple[int, int, str] | None:
        """(round, seq, tag): where ``principal``'s re-check of its older entries stopped."""
        row = self.session.get(AuditSweepRow, principal)
        return None if row is None else (row.round, row.seq, row.tag)

    def set_audit_sweep(self, principal: str, round_: int, seq: int, tag: str) -> None:
        row = self.session.get(AuditSweepRow, principal)
        if row is None:
            self.session.add(AuditSweepRow(principal=principal, round=round_, seq=seq, tag=tag))
        else:
            row.round, row.seq, row.tag = round_, seq, tag
        try:
            self.session.flush()
        except IntegrityError as exc:
            raise DuplicateRow(f"audit sweep of {principal}") from exc

    def policies_longer_than(self, characters: int) -> list[str]:
        """Names of the current policies whose text has more than ``characters`` characters."""
        query = select(PolicyRow.name).where(func.length(PolicyRow.text) > characters)
        return sorted(self.session.scalars(query))

    def owns_a_policy(self, principal: str) -> bool:
        """Whether ``principal`` is a signed owner of some current policy (not just a reader).

        Reads the owners of the policies ``principal`` has access rows for, not the policy texts.
        """
        query = (
            select(PolicyRow.owners)
            .join(PolicyAccessRow, PolicyAccessRow.policy == PolicyRow.name)
            .where(PolicyAccessRow.principal == principal)
        )
        return any(principal in json.loads(owners) for owners in self.session.scalars(query))

    def _set_access(self, policy: StoredPolicy | None, name: str) -> None:
        self.session.execute(delete(PolicyAccessRow).where(PolicyAccessRow.policy == name))
        if policy is not None:
            principals = sorted({*policy.owners, *policy.readers})
            self.session.add_all(PolicyAccessRow(principal=p, policy=name) for p in principals)
            self.session.flush()

    def create_policy(self, policy: StoredPolicy) -> None:
        """Insert a new policy; a concurrent creation of the same name fails here."""
        self.session.add(
            PolicyRow(
                name=policy.name,
                version=policy.version,
                policy_hash=policy.policy_hash,
                text=policy.text,
                owners=json.dumps(list(policy.owners)),
                updated_at=policy.updated_at,
                updated_by=policy.updated_by,
                compiled=policy.compiled,
            )
        )
        try:
            self.session.flush()
        except IntegrityError as exc:
            raise DuplicateRow(policy.name) from exc
        self._set_access(policy, policy.name)
        self._record_version(policy, predecessor=None, deleted=False)

    def set_compiled(self, name: str, version: int, policy_hash: str, compiled: str) -> None:
        """Store the validated form of ``name`` at (``version``, ``policy_hash``), if current."""
        self.session.execute(
            update(PolicyRow)
            .where(
                PolicyRow.name == name,
                PolicyRow.version == version,
                PolicyRow.policy_hash == policy_hash,
            )
            .values(compiled=compiled)
        )

    def replace_policy(self, policy: StoredPolicy, predecessor: str) -> bool:
        """Swap in ``policy`` only if the stored hash is still ``predecessor``.

        The ``WHERE`` on the old hash makes this a compare-and-swap even
        without the row lock the caller already holds.
        """
        result = self.session.execute(
            update(PolicyRow)
            .where(PolicyRow.name == policy.name, PolicyRow.policy_hash == predecessor)
            .values(
                version=policy.version,
                policy_hash=policy.policy_hash,
                text=policy.text,
                owners=json.dumps(list(policy.owners)),
                updated_at=policy.updated_at,
                updated_by=policy.updated_by,
                compiled=policy.compiled,
            )
        )
        if result.rowcount != 1:
            return False
        self._set_access(policy, policy.name)
        self._record_version(policy, predecessor=predecessor, deleted=False)
        return True

    def delete_policy(self, current: StoredPolicy, *, at: int, by: str) -> bool:
        result = self.session.execute(
            delete(PolicyRow).where(
                PolicyRow.name == current.name, PolicyRow.policy_hash == current.policy_hash
            )
        )
        if result.rowcount != 1:
            return False
        self.session.execute(delete(SecretRow).where(SecretRow.policy == current.name))
        self._set_access(None, current.name)
        tombstone = StoredPolicy(
            current.name, current.version + 1, current.policy_hash, "", (), at, by
        )
        self._record_version(tombstone, predecessor=current.policy_hash, deleted=True)
        return True

    def policy_history(self, name: str) -> list[PolicyVersionRow]:
        query = (
            select(PolicyVersionRow)
            .where(PolicyVersionRow.name == name)
            .order_by(PolicyVersionRow.version)
        )
        return list(self.session.scalars(query))

    def last_version(self, name: str) -> int:
        history = self.policy_history(name)
        return history[-1].version if history else 0

    def _record_version(self, policy: StoredPolicy, *, predecessor: str | None, deleted: bool):
        self.session.add(
            PolicyVersionRow(
                name=policy.name,
                version=policy.version,
                policy_hash=policy.policy_hash,
                predecessor_hash=predecessor,
                text=policy.text,
                deleted=deleted,
                applied_at=policy.updated_at,
                applied_by=policy.updated_by,
            )
        )
        try:
            self.session.flush()
        except IntegrityError as exc:
            raise DuplicateRow(f"{policy.name} version {policy.version}") from exc

    # -- secrets -------------------------------------------------------------

    def get_secrets(self, policy: str) -> dict[str, SealedSecret]:
        rows = self.session.scalars(select(SecretRow).where(SecretRow.policy == policy))
        return {row.name: _secret(row) for row in rows}

    def put_secret(self, secret: SealedSecret) -> None:
        """Insert or replace one sealed secret."""
        self.session.merge(
            SecretRow(
                policy=secret.policy,
                name=secret.name,
                kind=secret.kind,
                master_key_id=secret.master_key_id,
                wrapped_key=secret.wrapped_key,
                ciphertext=secret.ciphertext,
                spec_hash=secret.spec_hash,
                created_at=secret.created_at,
            )
        )
        self.session.flush()

    def put_secrets(self, policy: str, rows: list[SealedSecret]) -> None:
        """Insert or replace ``policy``'s ``rows``: one DELETE and one multi-row INSERT,
        however many (not a SELECT and an UPDATE each, as ``put_secret``'s merge)."""
        if not rows:
            return
        names = sorted({row.name for row in rows})
        self.session.flush()
        self.session.execute(
            delete(SecretRow)
            .where(SecretRow.policy == policy, SecretRow.name.in_(names))
            .execution_options(synchronize_session=False)
        )
        for stale in [  # row objects read earlier for the names rewritten here
            obj
            for obj in self.session.identity_map.values()
            if isinstance(obj, SecretRow) and obj.policy == policy and obj.name in names
        ]:
            self.session.expunge(stale)
        self.session.execute(
            insert(SecretRow),
            [
                {
                    "policy": row.policy,
                    "name": row.name,
                    "kind": row.kind,
                    "master_key_id": row.master_key_id,
                    "wrapped_key": row.wrapped_key,
                    "ciphertext": row.ciphertext,
                    "spec_hash": row.spec_hash,
                    "created_at": row.created_at,
                }
                for row in rows
            ],
        )

    def delete_secrets(self, policy: str, keep: set[str]) -> None:
        query = delete(SecretRow).where(SecretRow.policy == policy)
        if keep:
            query = query.where(SecretRow.name.not_in(sorted(keep)))
        self.session.execute(query)

    def master_key_ids(self) -> set[str]:
        """Ids of the master keys that sealed the stored secrets."""
        return set(self.session.scalars(select(SecretRow.master_key_id).distinct()))

    def all_secrets(self) -> list[SealedSecret]:
        return [_secret(row) for row in self.session.scalars(select(SecretRow))]

    # -- audit ---------------------------------------------------------------

    def lock_audit_head(self) -> AuditHead:
        """The chain head, locked until commit: appends happen one at a time."""
        row = self._hot(_LOCK_AUDIT_HEAD, {})
        if row is None:
            raise StoreError("the audit chain head is missing: the database was not migrated")
        return AuditHead(row[0], row[1])

    def audit_head(self) -> AuditHeadRow | None:
        return self.session.get(AuditHeadRow, 1)

    def audit_checkpoint(self) -> tuple[int, str, str] | None:
        """(seq, entry_hash, tag) of the verified position kept in the database, if any."""
        row = self.session.get(AuditCheckpointRow, 1)
        return None if row is None else (row.seq, row.entry_hash, row.tag)

    def advance_audit_checkpoint(self, seq: int, entry_hash: str, tag: str) -> None:
        """Keep a later verified position; an earlier one than stored changes nothing."""
        self.session.execute(
            update(AuditCheckpointRow)
            .where(AuditCheckpointRow.id == 1, AuditCheckpointRow.seq < seq)
            .values(seq=seq, entry_hash=entry_hash, tag=tag)
        )

    def last_audit_seq(self) -> int:
        """The highest entry number stored (0 for none): one index lookup."""
        return self.session.scalar(select(func.max(AuditEntryRow.seq))) or 0

    def add_audit_entry(self, entry: dict[str, object]) -> None:
        """Insert one chain entry (all columns of ``audit_log``) and move the head to it.

        Core statements, not the ORM unit of work (a flush per attestation
        cost more than the statements); the head row was locked by
        :meth:`lock_audit_head` in this transaction.
        """
        try:
            # On PostgreSQL one statement does both (one round trip, not two:
            # they are spent holding the chain head, which every replica's
            # attestations wait for).
            self._hot(_APPEND_AUDIT_ENTRY, entry)
        except IntegrityError as exc:
            raise DuplicateRow(f"audit entry {entry['seq']}") from exc
        if self._dialect == "sqlite":
            self._hot(_MOVE_AUDIT_HEAD, {"seq": entry["seq"], "entry_hash": entry["entry_hash"]})

    def _hot(self, statement: dict[str, str], values: dict[str, object]) -> tuple | None:
        """Run one statement of the attestation path on the driver's cursor; its first row.

        Inside this transaction, but without SQLAlchemy's per-statement work
        (execution context, result wrapping, events), which cost ~3x what
        SQLite spends running the statements.  Driver errors become
        SQLAlchemy's (``IntegrityError``, ``OperationalError``...), and a
        broken connection is invalidated, as ``Connection.execute`` would, so
        ``Database.run`` replays exactly as for every other statement.
        """
        sql = statement[self._dialect]
        if self._driver is None:
            self._driver = self._connection.connection.driver_connection
        try:
            cursor = self._driver.execute(sql, values)  # type: ignore[attr-defined]
            return cursor.fetchone() if cursor.description is not None else None
        except self._connection.dialect.loaded_dbapi.Error as exc:
            raise self._translated(exc, sql, values) from exc

    def _translated(self, exc: Exception, sql: str, values: dict[str, object]) -> DBAPIError:
        dialect = self._connection.dialect
        dbapi = self._connection.connection.dbapi_connection
        disconnected = dialect.is_disconnect(exc, dbapi, None)
        if disconnected:
            self._connection.invalidate(exc)
        # Parameters hidden: error text and logs never carry what was bound.
        return DBAPIError.instance(
            sql,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=disconnected,
            dialect=dialect,
        )

    def audit_entries(
        self, *, after: int = 0, limit: int | None = None, policies: Iterable[str] | None = None
    ) -> list[AuditEntryRow]:
        """Entries after ``after``; with ``policies``, only those about them (filtered in SQL).

        A policy's entries have the subject ``name`` (its changes) or
        ``name/service`` (attestations).  They are found as index ranges over
        (subject, seq) — the names by equality, each ``name/`` prefix as the
        bytewise range up to ``name0`` ('0' follows '/') — one sub-select each,
        so the cost follows the caller's entries, not the whole log (an OR of
        the same ranges lets SQLite's planner fall back to scanning every entry
        after ``after`` once there are a few policies).  No LIKE: '_' and '%'
        in a name are plain.
        """
        query = select(AuditEntryRow).where(AuditEntryRow.seq > after).order_by(AuditEntryRow.seq)
        if policies is None:
            return list(self.session.scalars(query.limit(limit) if limit is not None else query))
        names = sorted(policies)
        found: list[AuditEntryRow] = []
        for start in range(0, len(names), _NAMES_PER_QUERY):  # SQLite caps compound selects
            about = self._seqs_about(names[start : start + _NAMES_PER_QUERY], after)
            chunk = query.where(AuditEntryRow.seq.in_(about))
            found.extend(self.session.scalars(chunk.limit(limit) if limit is not None else chunk))
        found.sort(key=lambda row: row.seq)
        return found[:limit] if limit is not None else found

    def audit_entries_for(
        self,
        principal: str,
        *,
        after: int = 0,
        before: int | None = None,
        limit: int,
        latest: bool = False,
    ) -> list[AuditEntryRow]:
        """Entries about the policies in ``principal``'s audit view, oldest first.

        Those with ``after < seq < before``: the first ``limit`` of them, or
        with ``latest`` the last ``limit``.  One fixed statement joining the
        caller's ``policy_access`` rows with the (subject, seq) index ranges
        (a policy's changes by equality, its attestations ``name/...`` as the
        range up to ``name0``), so building it costs the same whatever the
        caller reads (the per-name sub-selects it replaces cost ~100 µs of
        Python per policy: red team rt7 finding 5); the database does one
        index probe per policy and sorts the matching positions.
        """
        values = {
            "principal": principal,
            "after": after,
            "before": before if before is not None else 2**62,
            "limit": limit,
        }
        sql = _SEQS_FOR[self._dialect][1 if latest else 0]
        seqs = list(self.session.scalars(text(sql), values))
        rows = self.audit_entries_at(seqs)
        rows.sort(key=lambda row: row.seq)
        return rows

    def count_audit_entries_for(self, principal: str, *, after: int, before: int, cap: int) -> int:
        """How many entries :meth:`audit_entries_for` has between ``after`` and ``before``,
        counted up to ``cap`` (the same index ranges, unsorted)."""
        values = {"principal": principal, "after": after, "before": before, "limit": cap}
        return int(self.session.scalar(text(_COUNT_FOR[self._dialect]), values) or 0)

    def audit_entries_at(self, seqs: Iterable[int]) -> list[AuditEntryRow]:
        """The entries at these positions (those that exist), by primary key."""
        wanted = sorted(set(seqs))
        found: list[AuditEntryRow] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            found.extend(
                self.session.scalars(select(AuditEntryRow).where(AuditEntryRow.seq.in_(chunk)))
            )
        return found

    def _seqs_about(self, names: list[str], after: int) -> Any:
        subject: Any = AuditEntryRow.subject
        if self._dialect == "postgresql":
            subject = subject.collate("C")  # as the index (migration 0006): bytewise
        seq = AuditEntryRow.seq
        return union_all(
            select(seq).where(subject.in_(names), seq > after),
            *(
                select(seq).where(subject >= name + "/", subject < name + "0", seq > after)
                for name in names
            ),
        )


_NAMES_PER_QUERY = 200


_SEQS_FOR_SQLITE = (
    # One loop over the caller's policy_access rows with an index range of audit_log
    # per row, each half: CROSS JOIN keeps that order and the unary + keeps the
    # prefix half off the primary key (given a position bound, SQLite's planner walked
    # every entry in it and probed each of the caller's policies: ~0.7 s at 6,830
    # entries and 2,000 policies).  The plans are checked in the tests.
    "SELECT a.seq AS seq FROM policy_access p CROSS JOIN audit_log a "
    "ON a.subject = p.policy "
    "AND a.seq > :after AND a.seq < :before WHERE p.principal = :principal "
    "UNION ALL "
    "SELECT a.seq AS seq FROM policy_access p CROSS JOIN audit_log a "
    "ON a.subject >= (p.policy || '/') AND a.subject < (p.policy || '0') "
    "AND +a.seq > :after AND +a.seq < :before WHERE p.principal = :principal "
    "ORDER BY seq @ORDER LIMIT :limit"
)
_SEQS_FOR_POSTGRESQL = (
    # PostgreSQL would plan the range half as a join over all of audit_log once the
    # caller has many policies; a LATERAL sub-select (OFFSET 0: not flattened) is one
    # index range per policy on the bytewise index (migration 0006); "+ 0" keeps the
    # prefix half off the primary key, as the unary + does on SQLite.
    "SELECT s.seq AS seq FROM policy_access p CROSS JOIN LATERAL ("
    'SELECT a.seq FROM audit_log a WHERE a.subject COLLATE "C" = p.policy COLLATE "C" '
    "AND a.seq > :after AND a.seq < :before OFFSET 0) s "
    "WHERE p.principal = :principal "
    "UNION ALL "
    "SELECT s.seq AS seq FROM policy_access p CROSS JOIN LATERAL ("
    "SELECT a.seq FROM audit_log a "
    'WHERE a.subject COLLATE "C" >= (p.policy || \'/\') COLLATE "C" '
    'AND a.subject COLLATE "C" < (p.policy || \'0\') COLLATE "C" '
    "AND a.seq + 0 > :after AND a.seq + 0 < :before OFFSET 0) s "
    "WHERE p.principal = :principal "
    "ORDER BY seq @ORDER LIMIT :limit"
)

# (first, latest) for each dialect
_SEQS_FOR = {
    "sqlite": tuple(_SEQS_FOR_SQLITE.replace("@ORDER", o) for o in ("ASC", "DESC")),
    "postgresql": tuple(_SEQS_FOR_POSTGRESQL.replace("@ORDER", o) for o in ("ASC", "DESC")),
}


# A principal's entries between two positions, counted (no sort) up to :limit.  Built
# from the constant statements above only.
_COUNT_FOR = {
    dialect: "SELECT count(*) FROM ("  # noqa: S608
    + sql.replace(" ORDER BY seq @ORDER", "")
    + ") AS counted"
    for dialect, sql in (("sqlite", _SEQS_FOR_SQLITE), ("postgresql", _SEQS_FOR_POSTGRESQL))
}


# Statements of the attestation path, as SQL for each dialect's driver (run by
# Repository._hot on the driver's cursor).  The same text suits SQLite
# (>= 3.35) and PostgreSQL; only the parameter style differs.
def _for_drivers(sql: str, *, postgresql: str | None = None) -> dict[str, str]:
    pg = postgresql if postgresql is not None else sql
    return {"sqlite": sql, "postgresql": re.sub(r":(\w+)", r"%(\1)s", pg)}


_SPEND_NONCE = _for_drivers(
    "INSERT INTO nonces (nonce, issued_at, expires_at, used_at) "
    "VALUES (:nonce, :issued_at, :expires_at, :used_at) "
    "ON CONFLICT (nonce) DO NOTHING RETURNING nonce"
)
_SPEND_SIGNATURE = text(
    "INSERT INTO spent_signatures (id, expires_at) VALUES (:id, :expires_at) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_POLICY_VERSION = _for_drivers("SELECT version, policy_hash FROM policies WHERE name = :name")
_LOCK_AUDIT_HEAD = _for_drivers(
    # SQLite: the transaction already holds the database write lock.
    "SELECT seq, entry_hash FROM audit_head WHERE id = 1",
    postgresql="SELECT seq, entry_hash FROM audit_head WHERE id = 1 FOR UPDATE",
)
_INSERT_AUDIT_ENTRY = (
    "INSERT INTO audit_log "
    "(seq, at, kind, subject, actor, outcome, detail, prev_hash, entry_hash) VALUES "
    "(:seq, :at, :kind, :subject, :actor, :outcome, :detail, :prev_hash, :entry_hash)"
)
_APPEND_AUDIT_ENTRY = _for_drivers(
    _INSERT_AUDIT_ENTRY,
    postgresql=(
        "WITH entry AS (INSERT INTO audit_log "
        "(seq, at, kind, subject, actor, outcome, detail, prev_hash, entry_hash) VALUES "
        "(:seq, :at, :kind, :subject, :actor, :outcome, :detail, :prev_hash, :entry_hash) "
        "RETURNING seq, entry_hash) "
        "UPDATE audit_head SET seq = entry.seq, entry_hash = entry.entry_hash "
        "FROM entry WHERE audit_head.id = 1"
    ),
)
_MOVE_AUDIT_HEAD = _for_drivers(
    "UPDATE audit_head SET seq = :seq, entry_hash = :entry_hash WHERE id = 1"
)


def _policy(row: PolicyRow) -> StoredPolicy:
    return StoredPolicy(
        name=row.name,
        version=row.version,
        policy_hash=row.policy_hash,
        text=row.text,
        owners=tuple(json.loads(row.owners)),
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        compiled=row.compiled,
    )


def _secret(row: SecretRow) -> SealedSecret:
    return SealedSecret(
        policy=row.policy,
        name=row.name,
        kind=row.kind,
        master_key_id=row.master_key_id,
        wrapped_key=row.wrapped_key,
        ciphertext=row.ciphertext,
        spec_hash=row.spec_hash,
        created_at=row.created_at,
    )
