"""Backups of the service database that are consistent while the service runs.

- SQLite: the online backup API (``sqlite3.Connection.backup`` in one step)
  copies a snapshot under a read transaction, so writers in WAL mode keep
  going and the copy is a state the database was really in — unlike copying
  ``cas.db``, which misses everything still in ``cas.db-wal``.
- PostgreSQL: ``pg_dump --format=custom`` (one repeatable-read snapshot);
  restored with ``pg_restore --clean --if-exists --single-transaction``.

Either way a backup holds sealed secrets only: the master key and the answer
signing key are backed up separately (never beside the database), and
restoring the same deployment needs both (``cas restore --signing-key-pub``
checks the signing key against the public key owners pin).  Every
backup and restore ends by walking the audit chain of the result.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from sgxcloud.cas import audit
from sgxcloud.cas.files import new_private_file
from sgxcloud.cas.store import Database
from sgxcloud.cas.store.errors import BackupError as BackupError

SQLITE_MAGIC = b"SQLite format 3\0"
PG_DUMP_MAGIC = b"PGDMP"
PG_SEARCH = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14")]


@dataclass(frozen=True)
class BackupReport:
    path: Path
    backend: str
    size: int
    audit: audit.ChainReport | None  # None when the copy cannot be opened here (pg_dump)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "backend": self.backend,
            "size": self.size,
            "audit": self.audit.to_dict() if self.audit is not None else None,
        }


def backup(database_url: str, destination: Path) -> BackupReport:
    """Write a consistent copy of the database at ``database_url`` to ``destination``."""
    if destination.exists():
        raise BackupError(f"{destination} exists; refusing to replace it")
    backend = make_url(database_url).get_backend_name()
    partial = destination.with_name(destination.name + ".partial")
    try:
        _private(partial)  # 0600 before the first byte: pg_dump and SQLite keep its mode
        if backend == "sqlite":
            _sqlite_copy(_sqlite_path(database_url), partial)
            report = _chain_of(f"sqlite:///{partial}")
        elif backend == "postgresql":
            _run(
                _pg_tool("pg_dump"),
                "--format=custom",
                "--no-owner",
                f"--file={partial}",
                url=database_url,
            )
            report = None
        else:
            raise BackupError(f"no backup method for {backend!r} databases")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return BackupReport(destination, backend, destination.stat().st_size, report)


def restore(source: Path, database_url: str, *, replace: bool = False) -> BackupReport:
    """Load backup ``source`` into ``database_url`` (the service must be stopped)."""
    try:
        head = source.read_bytes()[:16]
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror}") from exc
    backend = make_url(database_url).get_backend_name()
    if head.startswith(SQLITE_MAGIC):
        if backend != "sqlite":
            raise BackupError(f"{source} is a SQLite backup; database_url is {backend}")
        target = _sqlite_path(database_url)
        if target.exists() and not replace:
            raise BackupError(f"{target} exists; stop the service and pass --replace")
        partial = target.with_name(target.name + ".restoring")
        try:
            _private(partial)
            _sqlite_copy(source, partial)
            for suffix in ("-wal", "-shm"):  # a stale WAL would replay onto the restored file
                Path(str(target) + suffix).unlink(missing_ok=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    elif head.startswith(PG_DUMP_MAGIC):
        if backend != "postgresql":
            raise BackupError(f"{source} is a PostgreSQL dump; database_url is {backend}")
        clean = ["--clean", "--if-exists"] if replace else []
        _run(
            _pg_tool("pg_restore"),
            *clean,
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            str(source),
            url=database_url,
            url_option="--dbname",
        )
    else:
        raise BackupError(f"{source} is neither a SQLite backup nor a pg_dump custom archive")
    return BackupReport(source, backend, source.stat().st_size, _chain_of(database_url))


def _chain_of(url: str) -> audit.ChainReport:
    database = Database.open(url, migrate=False)
    try:
        return audit.verify_chain(database)
    finally:
        database.close()


def _sqlite_path(url: str) -> Path:
    path = make_url(url).database or ""
    if path in ("", ":memory:") or path.startswith("file:"):
        raise BackupError(f"cannot back up the SQLite database {path or '(none)'}")
    return Path(path)


def _private(path: Path) -> None:
    try:
        new_private_file(path)
    except OSError as exc:
        raise BackupError(f"cannot create {path}: {exc.strerror}") from exc


def _sqlite_copy(source: Path, destination: Path) -> None:
    if not source.exists():
        raise BackupError(f"no database file {source}")
    try:
        with sqlite3.connect(source, timeout=30) as src, sqlite3.connect(destination) as dst:
            src.backup(dst)  # one step: a single consistent snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # a self-contained file, no -wal
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup failed: {exc}") from exc


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in PG_SEARCH:
        if (directory / name).exists():
            return str(directory / name)
    raise BackupError(f"{name} not found: install the PostgreSQL client (postgresql-client)")


def _run(tool: str, *args: str, url: str, url_option: str = "--dbname") -> None:
    """Run a PostgreSQL tool; the password goes through PGPASSWORD, never argv."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    libpq = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    try:
        done = subprocess.run(
            [tool, *args, f"{url_option}={libpq}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    except OSError as exc:
        raise BackupError(f"cannot run {tool}: {exc.strerror}") from exc
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["failed"])[0]
        raise BackupError(f"{Path(tool).name}: {first}")
