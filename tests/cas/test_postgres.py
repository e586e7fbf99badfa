"""PostgreSQL specifics: a real server restart keeps everything; appends really serialise."""

from __future__ import annotations

import threading
import time

import pytest

from sgxcloud.cas import audit, secrets
from sgxcloud.cas.policy import public_key_id
from sgxcloud.cli.main import main as cli_main

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

NOW = pg.CLOCK


@pytest.fixture
def pg_url() -> str:
    return pg.fresh_database(pg.server())


def test_server_restart_keeps_policies_secrets_and_audit(pg_url: str) -> None:
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    service = pg.make_service(pg_url, keyring)
    owner = pg.owner_key()
    owner_id = public_key_id(pg.public_pem(owner))
    service.apply_policy(owner_id, pg.policy_text(owner), NOW)
    before = service.read_policy(owner_id, "shop")
    head = audit.verify_chain(service.database).head_hash
    service.stop()
    pg.server().restart()
    reopened = pg.make_service(pg_url, keyring)
    after = reopened.read_policy(owner_id, "shop")
    assert (after.policy_hash, after.secrets, after.ca_certificate_pem) == (
        before.policy_hash,
        before.secrets,
        before.ca_certificate_pem,
    )
    report = audit.verify_chain(reopened.database)
    assert report.ok and report.head_hash == head
    reopened.stop()


def test_a_running_service_rides_out_a_database_restart(pg_url: str) -> None:
    """Pooled connections break when PostgreSQL restarts; the next requests still succeed.

    The pool neither pings nor resets connections (round trips are most of an
    attestation's database cost): a broken connection fails its transaction,
    which is replayed on a fresh one, reads included.
    """
    try:
        from tests.cas.test_concurrency import _attest_once
    except ImportError:
        from test_concurrency import _attest_once  # type: ignore[no-redef]

    service = pg.make_service(pg_url)
    owner = pg.owner_key()
    owner_id = public_key_id(pg.public_pem(owner))
    service.apply_policy(owner_id, pg.policy_text(owner), NOW)
    before = _attest_once(service, NOW).argv[2]
    pg.server().restart()  # every pooled connection is now broken
    assert service.read_policy(owner_id, "shop").name == "shop"
    assert _attest_once(service, NOW + 1).argv[2] == before
    # The attestation first: its statements run on the driver's own cursor
    # (Repository._hot), which must invalidate a broken connection itself.
    pg.server().restart()
    assert _attest_once(service, NOW + 2).argv[2] == before
    pg.server().restart()
    assert len(service.audit_entries(owner_id)) == 4
    pg.server().restart()
    assert audit.verify_chain(service.database).ok
    assert service.readiness_problem() is None
    service.stop()


def test_audit_append_waits_for_the_chain_head_lock(pg_url: str) -> None:
    """While one transaction holds the head row, another append blocks instead of forking."""
    service = pg.make_service(pg_url)
    database = service.database
    held = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with database.transaction() as repo:
            audit.append(
                repo, kind="test", subject="a", actor="x", outcome="ok", detail={}, now=NOW
            )
            held.set()
            release.wait(10)
            order.append("first commits")

    def second() -> None:
        held.wait(10)
        with database.transaction() as repo:
            audit.append(
                repo, kind="test", subject="b", actor="x", outcome="ok", detail={}, now=NOW
            )
        order.append("second commits")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    held.wait(10)
    time.sleep(0.5)  # give the second append every chance to (wrongly) go ahead
    order.append("released")
    release.set()
    for t in threads:
        t.join(20)
    assert order == ["released", "first commits", "second commits"]
    assert [e.subject for e in audit.entries(database)] == ["a", "b"]
    assert audit.verify_chain(database).ok
    service.stop()


def test_audit_cli_reads_postgres(pg_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    service = pg.make_service(pg_url)
    owner = pg.owner_key()
    service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), NOW)
    service.stop()
    assert cli_main(["audit", "verify", "--database-url", pg_url, "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert cli_main(["audit", "show", "--database-url", pg_url]) == 0
    assert "policy.apply" in capsys.readouterr().out
