"""The private keys a policy asks for cost bounded CPU and never hold the database's
write lock (red team rt8 finding 1: one policy of 1,500 RSA-3072 keys, applied by a
key made on the spot, stopped every attestation on SQLite for 4 minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sgxcloud.cas import secrets
from sgxcloud.cas.errors import AccessDenied, PolicyError
from sgxcloud.cas.policy import load_policy
from sgxcloud.cas.policy.validate import MAX_PRIVATE_KEYS, MAX_RSA_KEYS, MAX_SECRETS
from sgxcloud.cas.service import materials

try:
    from tests.cas import measure
    from tests.cas import postgres as pg
except ImportError:  # pragma: no cover - run from tests/cas
    import measure  # type: ignore[no-redef]
    import postgres as pg  # type: ignore[no-redef]


def _with_secrets(
    owner: Any, extra: dict[str, Any], name: str = "shop", predecessor: str | None = None
) -> str:
    document = yaml.safe_load(pg.policy_text(owner, name=name, predecessor=predecessor))
    document.setdefault("secrets", {}).update(extra)
    return yaml.safe_dump(document, sort_keys=False)


def _keys(count: int, algorithm: str, prefix: str = "k") -> dict[str, Any]:
    return {f"{prefix}{i}": {"kind": "private-key", "algorithm": algorithm} for i in range(count)}


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as refused:
        load_policy(text)
    return [(p.field, p.message) for p in refused.value.problems]


def test_a_policy_may_ask_for_a_bounded_number_of_generated_keys() -> None:
    owner = pg.owner_key()
    # The base policy has one key of its own (tls_key, EC) and 5 secrets in all.
    load_policy(
        _with_secrets(
            owner,
            {
                **_keys(MAX_PRIVATE_KEYS - MAX_RSA_KEYS - 1, "ec-p256"),
                **_keys(MAX_RSA_KEYS, "rsa-3072", "r"),
            },
        )
    )
    too_many = _problems(_with_secrets(owner, _keys(MAX_PRIVATE_KEYS, "ed25519")))
    assert any(f == "secrets" and "private keys" in m for f, m in too_many)
    too_much_rsa = _problems(_with_secrets(owner, _keys(MAX_RSA_KEYS + 1, "rsa-3072")))
    assert any(f == "secrets" and "RSA" in m for f, m in too_much_rsa)
    randoms = {f"s{i}": {"kind": "random", "size": 16} for i in range(MAX_SECRETS - 4)}
    assert any(
        f == "secrets" and f"at most {MAX_SECRETS}" in m
        for f, m in _problems(_with_secrets(owner, randoms))
    )
    # The red team's policy: 1,500 RSA-3072 keys in 82 KB.
    assert _problems(_with_secrets(owner, _keys(1500, "rsa-3072")))


@pytest.fixture
def made_keys(monkeypatch):  # type: ignore[no-untyped-def]
    """Each private key the service makes, and whether a transaction was open then."""
    seen: list[bool] = []
    inside = measure.track_transactions(monkeypatch)
    real_make = secrets.private_key_secret

    def make(algorithm: str = "ec-p256"):  # type: ignore[no-untyped-def]
        seen.append(inside())
        return real_make(algorithm)

    monkeypatch.setattr(secrets, "private_key_secret", make)
    return seen


def test_keys_are_made_before_the_transaction_that_stores_them(
    database_url: str, made_keys: list[bool]
) -> None:
    service = pg.make_service(database_url)
    try:
        owner = pg.owner_key()
        text = _with_secrets(owner, {**_keys(3, "ec-p256"), **_keys(1, "rsa-3072", "r")})
        first = service.apply_policy(_owner_id(owner), text, pg.CLOCK)
        assert {"k0", "k1", "k2", "r0", "tls_key"} <= set(first.generated_secrets)
        assert made_keys == [False] * 5  # none inside a transaction
        stored = service.database.run(lambda repo: repo.get_secrets("shop"))
        assert {"k0", "k1", "k2", "r0"} <= set(stored)
        # An update keeps unchanged keys and makes only the new one, outside too.
        made_keys.clear()
        update = _with_secrets(
            owner,
            {
                **_keys(3, "ec-p256"),
                **_keys(1, "rsa-3072", "r"),
                "extra": {"kind": "private-key", "algorithm": "ed25519"},
            },
            predecessor=first.policy_hash,
        )
        second = service.apply_policy(_owner_id(owner), update, pg.CLOCK)
        assert second.generated_secrets == ["extra"] and made_keys == [False]
        after = service.database.run(lambda repo: repo.get_secrets("shop"))
        assert after["k0"].ciphertext == stored["k0"].ciphertext  # kept, not made again
    finally:
        service.stop()


def test_a_stranger_updating_anothers_policy_costs_no_key(
    tmp_path: Path, made_keys: list[bool]
) -> None:
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    try:
        owner, stranger = pg.owner_key(), pg.owner_key()
        service.apply_policy(_owner_id(owner), _with_secrets(owner, {}), pg.CLOCK)
        made_keys.clear()
        squat = _with_secrets(stranger, _keys(MAX_RSA_KEYS, "rsa-3072"))
        with pytest.raises(AccessDenied):
            service.apply_policy(_owner_id(stranger), squat, pg.CLOCK)
        assert made_keys == []
    finally:
        service.stop()


def _owner_id(key: Any) -> str:
    from sgxcloud.cas.policy.access import public_key_id

    return public_key_id(pg.public_pem(key))


def test_reconcile_uses_the_keys_made_before_it() -> None:
    owner = pg.owner_key()
    policy = load_policy(_with_secrets(owner, _keys(2, "ec-p256")))
    made = materials.keys_to_generate(policy, {})
    assert set(made) == {"k0", "k1", "tls_key"}
    assert all(value.kind == "private-key" for _digest, value in made.values())


database_url = pg.database_url  # SQLite, then a real PostgreSQL
