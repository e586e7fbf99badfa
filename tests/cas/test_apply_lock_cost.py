"""Applying a policy does its costly work before its transaction, which only compares
and writes (red team rt9 finding 1: an update re-issuing 255 certificates held SQLite's
writer lock, and so every attestation, ~0.3 s of CPU: issuance, sealing and one merge
per secret inside the transaction; a victim's attestation p90 25 ms -> 909 ms)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from sqlalchemy import event

from sgxcloud.cas import secrets
from sgxcloud.cas.policy.access import public_key_id

try:
    from tests.cas import measure
    from tests.cas import postgres as pg
except ImportError:  # pragma: no cover - run from tests/cas
    import measure  # type: ignore[no-redef]
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url  # SQLite, then a real PostgreSQL


def _certificates(owner: Any, count: int, days: int, predecessor: str | None = None) -> str:
    document = yaml.safe_load(pg.policy_text(owner, predecessor=predecessor))
    document["secrets"].update(
        {
            f"c{i:03d}": {
                "kind": "x509",
                "key": "tls_key",
                "subject": f"CN=c{i}",
                "validity_days": days,
                "sans": [f"h{j}.shop.example" for j in range(5)],
            }
            for i in range(count)
        }
    )
    return yaml.safe_dump(document, sort_keys=False)


@pytest.fixture
def costly(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Each certificate issued and value sealed, and whether a transaction was open then."""
    seen: list[tuple[str, bool]] = []
    inside = measure.track_transactions(monkeypatch)
    real_issue, real_seal = secrets.issue_certificate, secrets.seal

    def issue(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(("issue", inside()))
        return real_issue(*args, **kwargs)

    def seal(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(("seal", inside()))
        return real_seal(*args, **kwargs)

    monkeypatch.setattr(secrets, "issue_certificate", issue)
    monkeypatch.setattr(secrets, "seal", seal)
    return seen


def test_certificates_are_issued_and_sealed_before_the_transaction(
    database_url: str, costly: list[tuple[str, bool]]
) -> None:
    service = pg.make_service(database_url)
    try:
        owner = pg.owner_key()
        who = public_key_id(pg.public_pem(owner))
        first = service.apply_policy(who, _certificates(owner, 20, 30), pg.CLOCK)
        assert {"c000", "c019", "tls_cert"} <= set(first.generated_secrets)
        assert costly and not any(inside for _, inside in costly)
        before = service.database.run(lambda repo: repo.get_secrets("shop"))
        costly.clear()
        # Every certificate re-issued (validity changed), nothing else.
        update = _certificates(owner, 20, 31, predecessor=first.policy_hash)
        second = service.apply_policy(who, update, pg.CLOCK + 60)
        assert sorted(second.generated_secrets) == [f"c{i:03d}" for i in range(20)]
        assert ("issue", False) in costly and not any(inside for _, inside in costly)
        after = service.database.run(lambda repo: repo.get_secrets("shop"))
        assert set(after) == set(before)
        assert after["c000"].ciphertext != before["c000"].ciphertext
        assert after["c000"].created_at == pg.CLOCK + 60
        assert after["tls_key"].ciphertext == before["tls_key"].ciphertext  # kept
        # The stored rows open to the new certificates, for the policy's own key.
        view = service.read_policy(who, "shop")
        assert {s["name"] for s in view.secrets} >= {"c000", "tls_cert"}
    finally:
        service.stop()


def test_an_update_writes_its_secrets_in_a_few_statements(database_url: str) -> None:
    """The apply's statements do not grow with the secrets it rewrites."""
    service = pg.make_service(database_url)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(service.database.engine, "before_cursor_execute", count)
    try:
        counts = []
        for name, size in (("few", 4), ("many", 120)):
            owner = pg.owner_key()
            who = public_key_id(pg.public_pem(owner))
            text = _certificates(owner, size, 30).replace("name: shop", f"name: {name}", 1)
            first = service.apply_policy(who, text, pg.CLOCK)
            update = _certificates(owner, size, 31, predecessor=first.policy_hash)
            update = update.replace("name: shop", f"name: {name}", 1)
            statements.clear()
            service.apply_policy(who, update, pg.CLOCK)
            counts.append(len(statements))
        assert counts[1] == counts[0], counts  # not one round trip per secret
    finally:
        event.remove(service.database.engine, "before_cursor_execute", count)
        service.stop()


def test_a_concurrent_change_of_the_rows_is_not_overwritten(database_url: str) -> None:
    """Values prepared for rows that changed before the transaction are not written:
    the transaction reconciles against what it reads (as before)."""
    from sgxcloud.cas.service import materials

    service = pg.make_service(database_url)
    try:
        owner = pg.owner_key()
        who = public_key_id(pg.public_pem(owner))
        first = service.apply_policy(who, _certificates(owner, 2, 30), pg.CLOCK)
        stale = materials.prepare_secrets(
            service.keyring,
            service._parsed(service.database.run(lambda repo: repo.get_policy("shop"))),
            {},  # as if nothing were stored: would replace the CA and every key
            pg.CLOCK,
        )
        from sgxcloud.cas.policy import load_policy

        policy = load_policy(_certificates(owner, 2, 30))
        assert not service.database.run(lambda repo: materials.write_prepared(repo, policy, stale))
        rows = service.database.run(lambda repo: repo.get_secrets("shop"))
        assert rows[materials.CA_ROW].spec_hash == "ca"
        assert first.generated_secrets and "c000" in rows
    finally:
        service.stop()
