"""A replica reuses the policies it loaded only while they are current in the database.

Attestations keep each policy they read (parsed, its sealed rows, the values
opened from them) and check its (version, hash) in their own transaction.
These tests change policies through ANOTHER replica sharing the database, so
nothing but that check can tell the first replica its copy is stale.
"""

from __future__ import annotations

import pytest
import yaml

from sgxcloud.cas import secrets
from sgxcloud.cas.policy import policy_hash, public_key_id
from sgxcloud.cas.service.core import AttestationRejected

try:
    from tests.cas import postgres as pg
    from tests.cas.test_concurrency import _attest_once
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]
    from test_concurrency import _attest_once  # type: ignore[no-redef]

database_url = pg.database_url
NOW = pg.CLOCK


@pytest.fixture
def replicas(database_url: str):  # type: ignore[no-untyped-def]
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    pair = [pg.make_service(database_url, keyring) for _ in range(2)]
    yield pair
    for service in pair:
        service.stop()


def test_deleted_and_recreated_policy_serves_its_new_secrets(replicas) -> None:  # type: ignore[no-untyped-def]
    serving, managing = replicas
    owner = pg.owner_key()
    who = public_key_id(pg.public_pem(owner))
    text = pg.policy_text(owner)
    managing.apply_policy(who, text, NOW)
    before = _attest_once(serving, NOW).argv[2]
    assert _attest_once(serving, NOW).argv[2] == before  # served again from what it loaded
    # Same text again after a deletion (the serving replica saw neither):
    # same hash, but a new version and new secrets.
    managing.delete_policy(who, "shop", policy_hash(text), NOW + 1)
    managing.apply_policy(who, text, NOW + 2)
    after = _attest_once(serving, NOW + 2).argv[2]
    assert after != before
    managing.delete_policy(who, "shop", policy_hash(text), NOW + 3)
    with pytest.raises(AttestationRejected, match="no policy named"):
        _attest_once(serving, NOW + 3)


def test_an_update_on_another_replica_applies_to_the_next_attestation(replicas) -> None:  # type: ignore[no-untyped-def]
    serving, managing = replicas
    owner = pg.owner_key()
    who = public_key_id(pg.public_pem(owner))
    text = pg.policy_text(owner)
    managing.apply_policy(who, text, NOW)
    _attest_once(serving, NOW)
    # The owners move the service to another enclave: this one is now refused.
    moved = pg.policy_text(owner, mrenclave="ef" * 32, predecessor=policy_hash(text))
    managing.apply_policy(who, moved, NOW + 1)
    with pytest.raises(AttestationRejected) as refused:
        _attest_once(serving, NOW + 1)
    assert any("mrenclave" in reason.lower() for reason in refused.value.reasons)


def test_a_withdrawn_export_stops_at_once_on_every_replica(replicas) -> None:  # type: ignore[no-untyped-def]
    serving, managing = replicas
    owner = pg.owner_key()
    who = public_key_id(pg.public_pem(owner))

    def shop(offer: list[str], predecessor: str | None = None) -> str:
        document = yaml.safe_load(pg.policy_text(owner, predecessor=predecessor))
        document["secrets"]["shared"] = {
            "kind": "random", "size": 16,
            "export_to": [{"policy": name, "owner": who} for name in offer],
        }  # fmt: skip
        return yaml.safe_dump(document)

    document = yaml.safe_load(pg.policy_text(owner, name="consumer"))
    document["secrets"]["shared"] = {
        "kind": "random",
        "import_from": {"policy": "shop", "owner": who, "secret": "shared"},
    }
    document["services"]["web"]["environment"]["SHARED"] = "{{secret:shared}}"
    consumer = yaml.safe_dump(document)
    offered = shop(["consumer"])
    managing.apply_policy(who, offered, NOW)
    managing.apply_policy(who, consumer, NOW)
    shared = _attest_once(serving, NOW, "consumer").env["SHARED"]
    assert len(bytes.fromhex(shared)) == 16
    # Only the exporter changes (the importer's version stays): still refused at once.
    managing.apply_policy(who, shop(["someone-else"], policy_hash(offered)), NOW + 1)
    with pytest.raises(AttestationRejected) as refused:
        _attest_once(serving, NOW + 1, "consumer")
    assert refused.value.code == "secrets" and "no longer exported" in refused.value.reasons[0]
