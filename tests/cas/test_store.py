"""Storage: migrations, nonces, compare-and-swap policy updates, restart (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from sgxcloud.cas.store import Database, DuplicateRow, StoredPolicy, StoreError
from sgxcloud.cas.store import db as store_db

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url


def _policy(name: str, version: int, digest: str) -> StoredPolicy:
    return StoredPolicy(name, version, digest, f"name: {name}\n", ("owner-a",), 1000, "owner-a")


def test_migration_creates_schema_and_is_idempotent(database_url: str) -> None:
    database = Database.open(database_url)
    store_db.upgrade(database.engine)  # second run changes nothing
    tables = set(inspect(database.engine).get_table_names())
    assert {"policies", "policy_versions", "secrets", "nonces", "audit_log", "audit_head"} <= tables
    assert store_db.schema_is_current(database.engine)
    with database.transaction() as repo:
        head = repo.audit_head()
        assert head is not None and head.seq == 0
    database.close()


def test_unmigrated_database_is_refused_without_migrate(tmp_path) -> None:
    (tmp_path / "empty.db").touch()  # an existing file without the schema
    with pytest.raises(StoreError, match="not current"):
        Database.open(f"sqlite:///{tmp_path / 'empty.db'}", migrate=False)
    with pytest.raises(StoreError, match="no database file"):
        Database.open(f"sqlite:///{tmp_path / 'absent.db'}", migrate=False)
    assert not (tmp_path / "absent.db").exists()


def test_unsupported_url_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="unsupported database"):
        Database.open("mysql://localhost/x")
    with pytest.raises(StoreError, match="not valid"):
        Database.open("::::")


def test_a_nonce_is_spent_once_and_forgotten_after_expiry(database_url: str) -> None:
    database = Database.open(database_url)
    with database.transaction() as repo:
        assert repo.spend_nonce("aa" * 32, expires_at=160, now=150)
        assert not repo.spend_nonce("aa" * 32, expires_at=160, now=150)  # same transaction
    with database.transaction() as repo:
        assert not repo.spend_nonce("aa" * 32, expires_at=160, now=151)  # replay
        assert repo.spend_nonce("bb" * 32, expires_at=170, now=151)
        assert repo.purge_nonces(before=161) == 1
        assert repo.purge_nonces(before=171) == 1
    database.close()


def test_policy_replace_is_compare_and_swap(database_url: str) -> None:
    database = Database.open(database_url)
    with database.transaction() as repo:
        repo.create_policy(_policy("p", 1, "h1"))
    with pytest.raises(DuplicateRow), database.transaction() as repo:
        repo.create_policy(_policy("p", 1, "hx"))
    with database.transaction() as repo:
        assert repo.replace_policy(_policy("p", 2, "h2"), predecessor="h1")
    with database.transaction() as repo:
        assert not repo.replace_policy(_policy("p", 3, "h3"), predecessor="h1")  # stale
        current = repo.get_policy("p")
        assert current is not None and (current.version, current.policy_hash) == (2, "h2")
        assert [v.policy_hash for v in repo.policy_history("p")] == ["h1", "h2"]
    with database.transaction() as repo:
        assert repo.delete_policy(current, at=2000, by="owner-a")
    with database.transaction() as repo:
        assert repo.get_policy("p") is None
        history = repo.policy_history("p")
        assert [v.deleted for v in history] == [False, False, True]
    database.close()


def test_restart_keeps_everything(database_url: str) -> None:
    database = Database.open(database_url)
    with database.transaction() as repo:
        repo.create_policy(_policy("kept", 1, "k1"))
        repo.spend_nonce("dd" * 32, expires_at=99, now=1)
    database.close()
    reopened = Database.open(database_url)
    with reopened.transaction() as repo:
        policy = repo.get_policy("kept")
        assert policy is not None and policy.owners == ("owner-a",)
        assert not repo.spend_nonce("dd" * 32, expires_at=99, now=50)  # still spent
    reopened.close()
