"""Engines and schema upgrades for the service database.

SQLite (the default) gets write transactions that take the database lock at
``BEGIN`` (``BEGIN IMMEDIATE``): two requests that read-then-write the same
rows then queue instead of failing half-way with "database is locked".
Writers queue on :class:`SqliteWriterLock` before that (threads and
processes alike), so SQLite's busy handler is never what they wait in.
PostgreSQL relies on row locks (``SELECT ... FOR UPDATE``) in the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from pathlib import Path
from types import TracebackType

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sgxcloud.cas.store.errors import StoreError

MIGRATIONS = "sgxcloud.cas:migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite and PostgreSQL (psycopg 3) are supported."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"database URL is not valid: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # Round trips are most of an attestation's database cost, so none are
        # spent on bookkeeping: no ping per checkout (a connection a database
        # restart broke fails its transaction, which Database.run replays on
        # a fresh one) and no ROLLBACK when a connection goes back to the pool
        # (every transaction here is ended by commit or rollback before that).
        return create_engine(
            parsed,
            pool_pre_ping=False,
            pool_reset_on_return=None,
            pool_size=10,
            max_overflow=20,
        )
    raise StoreError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that ``url`` names but that does not exist."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # make_engine reports it
    if parsed.get_backend_name() != "sqlite":
        return None
    path = parsed.database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return None
    return None if Path(path).exists() else path


def secure_sqlite_files(url: str, *, create: bool = True) -> list[str]:
    """Keep a SQLite database private to the service's user; say what was wrong.

    The file holds policies (with any literal values in them) and the sealed
    secrets, so it is created 0600 before SQLite would create it 0644 (SQLite
    gives its -wal and -shm files the database file's mode), and an existing
    file (or -wal/-shm) readable by others is tightened to 0600.  A directory
    open to others is reported, not changed (it may be shared on purpose).
    Returns one message per problem found; PostgreSQL and in-memory: none.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        return []
    path_text = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or path_text in ("", ":memory:"):
        return []
    if path_text.startswith("file:"):
        return []
    path = Path(path_text)
    messages: list[str] = []
    if create and not path.exists() and path.parent.is_dir():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            candidate.chmod(0o600)
            messages.append(
                f"{candidate} was mode {mode:04o} (readable by other users); set to 0600"
            )
    if path.parent.is_dir():
        mode = stat.S_IMODE(path.parent.stat().st_mode)
        if mode & 0o077:
            messages.append(
                f"database directory {path.parent} is mode {mode:04o}: other users can see "
                "and, if it is writable, replace its files; make it 0700"
            )
    return messages


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # Let SQLAlchemy, not pysqlite, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqliteWriterLock:
    """One SQLite writer at a time, across this process's threads and other processes.

    Every transaction of the service takes SQLite's write lock at ``BEGIN``.
    A writer that finds it taken waits in SQLite's busy handler, which polls
    with growing sleeps (up to 100 ms): with several workers on one database
    that polling, not the work, made the latency tail (p99 in seconds).
    Writers queue here instead, and a queued writer wakes the moment the lock
    is free: threads of one process on a reentrant lock, processes on
    ``flock`` of a file beside the database (``<database>.lock``, 0600).
    A process that does not take this lock (the sqlite3 shell) still meets
    the busy timeout.  Reentrant: a nested transaction waits on SQLite
    itself, as it did before.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.RLock()
        self._depth = 0  # nesting of the thread holding _threads
        self._fd: int | None = None
        self._pid = 0  # the process that opened _fd (a forked child opens its own)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # flock belongs to the open file description: a child sharing the
            # parent's would share its lock, so each process opens the file.
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> SqliteWriterLock:
        self._threads.acquire()
        if self._depth == 0:
            try:
                fcntl.flock(self._file(), fcntl.LOCK_EX)  # releases the GIL while it waits
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def writer_lock(engine: Engine) -> SqliteWriterLock | threading.RLock | None:
    """The lock writers of ``engine``'s database queue on (see :class:`SqliteWriterLock`).

    None for PostgreSQL (row locks); an in-process lock for an in-memory
    SQLite database, which no other process can open.
    """
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        return threading.RLock()
    return SqliteWriterLock(Path(f"{path}.lock"))


def alembic_config(engine: Engine) -> Config:
    """An Alembic configuration pointing at the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"database migration failed: {type(exc).__name__}") from exc


def schema_is_current(engine: Engine) -> bool:
    """Whether the database has been migrated to the newest revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if not inspect(engine).has_table("alembic_version"):
        return False
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head
