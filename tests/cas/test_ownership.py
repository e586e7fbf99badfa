"""Issue 9 finding 1: nobody gains access through a party that did not sign.

Over the real HTTPS service on loopback, as an attacker would try it: listing
a victim's *public* owner id as co-owner of a squatted importer (or
exporter) policy, and one policy's ``allow_simulated`` reaching another
policy's secret.  Then the consent mechanism that replaces "the creator's word
alone": each listed owner signs, consents are bound to the service, the
policy name and hash, expire, and are spent once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from sqlalchemy import text as sql

from sgxcloud.cas import client, secrets
from sgxcloud.cas.errors import AccessDenied, NotFound, PolicyError
from sgxcloud.cas.policy import load_policy, policy_hash, public_key_id
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.server import background_https, make_loopback_tls
from sgxcloud.cas.store import Database, db

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]


class Cas:
    """A CAS over HTTPS on loopback and owner clients for it."""

    def __init__(self, url: str, ca_file: Path, service: Any) -> None:
        self.url, self.ca_file, self.service = url, ca_file, service

    def owner(self, key: Any) -> client.OwnerClient:
        return client.OwnerClient(self.url, key, ca_file=self.ca_file)

    def consent(self, key: Any, text: str, *, url: str | None = None, **options: Any) -> dict:
        """A co-owner's consent for this CAS (its deployment id; its URL unless ``url``)."""
        return client.consent(
            key, url or self.url, text, deployment=self.service.deployment_id, **options
        )

    def apply(self, key: Any, text: str, consents: list[dict] | None = None) -> dict:
        with self.owner(key) as owner:
            return owner.apply(text, consents) if consents else owner.apply(text)

    def fetch(self, policy: str, tmp_path: Path) -> client.FetchedConfiguration:
        """What an enclave with *simulated* evidence receives (no SGX needed)."""
        return client.fetch_configuration(
            self.url,
            policy=policy,
            service="web",
            ca_file=self.ca_file,
            root=tmp_path,
            simulate=pg.simulated_identity(),
        )


@pytest.fixture
def cas(tmp_path: Path):  # type: ignore[no-untyped-def]
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    tls = make_loopback_tls(tmp_path / "tls")
    with background_https(create_app(service), tls) as url:
        yield Cas(url, tls.ca_cert, service)
    service.stop()


def _id(key: Any) -> str:
    return public_key_id(pg.public_pem(key))


def _edit(text: str, change) -> str:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(text)
    change(document)
    return yaml.safe_dump(document, sort_keys=False)


def _exporter(owner: Any, *, to_policy: str, to_owner: str, simulated: bool = False) -> str:
    """'db': a secret 'pw' offered to (to_policy, to_owner); hardware-only unless told."""

    def change(document: dict) -> None:
        grant = {"policy": to_policy, "owner": to_owner}
        document["secrets"]["pw"] = {"kind": "random", "size": 16, "export_to": [grant]}

    return _edit(pg.policy_text(owner, name="db", allow_simulated=simulated), change)


def _importer(owners: Any, *, from_owner: str, name: str = "shop") -> str:
    """'shop': imports db's 'pw' into $PW and accepts simulated evidence."""

    def change(document: dict) -> None:
        source = {"policy": "db", "owner": from_owner, "secret": "pw"}
        document["secrets"]["pw"] = {"kind": "random", "import_from": source}
        document["services"]["web"]["environment"]["PW"] = "{{secret:pw}}"

    return _edit(pg.policy_text(owners, name=name, allow_simulated=True), change)


# -- the attacks of the finding -------------------------------------------------------


def test_squatted_importer_listing_the_victims_public_id_gets_nothing(
    cas: Cas, tmp_path: Path
) -> None:
    """Mallory names Alice's public id beside her own in the 'shop' db exports to."""
    dba, alice, mallory = pg.owner_key(), pg.owner_key(), pg.owner_key()
    cas.apply(dba, _exporter(dba, to_policy="shop", to_owner=_id(alice)))
    squat = _importer([mallory, alice], from_owner=_id(dba))
    with pytest.raises(AccessDenied, match="missing consent of owner1"):
        cas.apply(mallory, squat)
    # Nothing was stored: no enclave, simulated or not, receives db's secret.
    with pytest.raises(client.AttestationRefused):
        cas.fetch("shop", tmp_path)
    # Alice's real 'shop' (she signs it herself) is still hers to create.
    cas.apply(alice, _importer(alice, from_owner=_id(dba)))


def test_squatted_exporter_listing_the_pinned_owner_feeds_no_secret(cas: Cas) -> None:
    """Mallory creates 'db' first, listing the dba's public id, to feed 'shop' a known secret."""
    dba, alice, mallory = pg.owner_key(), pg.owner_key(), pg.owner_key()
    squat = _exporter([mallory, dba], to_policy="shop", to_owner=_id(alice), simulated=True)
    with pytest.raises(AccessDenied, match="missing consent of owner1"):
        cas.apply(mallory, squat)
    # Mallory's 'db' alone (signed by her) is not the 'db' Alice pins by the dba's id.
    cas.apply(mallory, _exporter(mallory, to_policy="shop", to_owner=_id(alice), simulated=True))
    with pytest.raises(PolicyError, match=r"no policy 'db' owned by .* offers a secret 'pw'"):
        cas.apply(alice, _importer(alice, from_owner=_id(dba)))


def test_importers_simulation_setting_never_releases_a_hardware_only_secret(
    cas: Cas, tmp_path: Path
) -> None:
    """Even one owner signing both sides: the secret keeps its exporter's evidence floor."""
    alice = pg.owner_key()
    cas.apply(alice, _exporter(alice, to_policy="shop", to_owner=_id(alice)))
    cas.apply(alice, _importer(alice, from_owner=_id(alice)))
    with pytest.raises(client.AttestationRefused) as refused:
        cas.fetch("shop", tmp_path)
    with cas.owner(alice) as owner:
        entry = owner.audit_entry(refused.value.audit_ref)
    assert entry is not None and entry["outcome"] == "rejected"
    reasons = " ".join(entry["detail"]["reasons"])
    assert "comes from policy 'db'" in reasons and "hardware evidence only" in reasons


def test_an_exporter_that_accepts_simulated_evidence_shares_with_a_simulated_importer(
    cas: Cas, tmp_path: Path
) -> None:
    alice = pg.owner_key()
    cas.apply(alice, _exporter(alice, to_policy="shop", to_owner=_id(alice), simulated=True))
    cas.apply(alice, _importer(alice, from_owner=_id(alice)))
    assert len(bytes.fromhex(cas.fetch("shop", tmp_path).configuration.env["PW"])) == 16


def _exporter_with_dev(owner: Any, *, to_owner: str, prod_uses_pw: bool) -> str:
    """'db': hardware-only 'web' (using 'pw' if told) beside a simulated 'dev' not using it."""

    def change(document: dict) -> None:
        grant = {"policy": "shop", "owner": to_owner}
        document["secrets"]["pw"] = {"kind": "random", "size": 16, "export_to": [grant]}
        document["secrets"]["dev_pw"] = {"kind": "random", "size": 16}
        if prod_uses_pw:
            document["services"]["web"]["environment"]["PW"] = "{{secret:pw}}"
        document["services"]["dev"] = {
            "identities": [{"mrenclave": "cc" * 32}],
            "allow_simulated": True,
            "allow_debug": True,
            "environment": {"PW": "{{secret:dev_pw}}"},
        }

    return _edit(pg.policy_text(owner, name="db", allow_simulated=False), change)


@pytest.mark.parametrize("prod_uses_pw", [True, False], ids=["used-by-prod", "unused"])
def test_a_simulated_service_of_the_exporter_lowers_no_floor_of_a_secret_it_does_not_use(
    cas: Cas, tmp_path: Path, prod_uses_pw: bool
) -> None:
    """The floor is the strictest service using the secret (all services if none does)."""
    alice = pg.owner_key()
    cas.apply(alice, _exporter_with_dev(alice, to_owner=_id(alice), prod_uses_pw=prod_uses_pw))
    cas.apply(alice, _importer(alice, from_owner=_id(alice)))
    with pytest.raises(client.AttestationRefused) as refused:
        cas.fetch("shop", tmp_path)
    with cas.owner(alice) as owner:
        entry = owner.audit_entry(refused.value.audit_ref)
    assert entry is not None and entry["outcome"] == "rejected"
    assert "hardware evidence only" in " ".join(entry["detail"]["reasons"])


# -- consent: how co-owners are listed now ------------------------------------------------


def test_co_owner_is_listed_with_a_consent_bound_to_service_policy_and_hash(
    cas: Cas, tmp_path: Path
) -> None:
    alice, bob = pg.owner_key(), pg.owner_key()
    text = pg.policy_text([alice, bob])
    now = int(time.time())
    other = pg.policy_text([alice, bob], description="another version")
    for wrong in (
        cas.consent(bob, other, now=now),  # another hash
        cas.consent(bob, text, now=now, url="https://cas.elsewhere:8443"),  # another service
        cas.consent(bob, text, now=now - 2 * 86400, valid_for=3600),  # expired
        cas.consent(bob, text, now=now, valid_for=8 * 86400),  # too long
        cas.consent(pg.owner_key(), text, now=now),  # not an owner listed
    ):
        with pytest.raises(AccessDenied):
            cas.apply(alice, text, [wrong])
    forged = cas.consent(bob, text, now=now)
    forged["expires_at"] += 60  # the signature covers the expiry
    with pytest.raises(AccessDenied, match="does not verify"):
        cas.apply(alice, text, [forged])

    consent = cas.consent(bob, text, now=now)
    created = cas.apply(alice, text, [consent])
    assert created["created"]
    with cas.owner(bob) as owner:  # Bob signed: he is an owner in full
        assert owner.show("shop")["version"] == 1
        owner.delete("shop", created["policy_hash"])
    # The same consent cannot bring Bob back into a re-created policy: spent.
    with pytest.raises(AccessDenied, match="already used"):
        cas.apply(alice, text, [consent])
    fresh = cas.consent(bob, text, now=now + 1)
    assert cas.apply(alice, text, [fresh])["created"]


def test_an_update_needs_the_consent_of_each_owner_it_adds_only(cas: Cas) -> None:
    alice, bob, carol = pg.owner_key(), pg.owner_key(), pg.owner_key()
    v1 = pg.policy_text(alice)
    cas.apply(alice, v1)
    v2 = pg.policy_text([alice, bob], predecessor=policy_hash(v1))
    with pytest.raises(AccessDenied, match="missing consent of owner1"):
        cas.apply(alice, v2)
    now = int(time.time())
    cas.apply(alice, v2, [cas.consent(bob, v2, now=now)])
    # Bob, now a signed owner, updates without anyone's consent; so may Alice.
    v3 = pg.policy_text([alice, bob], predecessor=policy_hash(v2), description="v3")
    cas.apply(bob, v3)
    v4 = pg.policy_text([alice, bob, carol], predecessor=policy_hash(v3))
    with pytest.raises(AccessDenied, match="missing consent of owner2"):
        cas.apply(bob, v4)
    cas.apply(bob, v4, [cas.consent(carol, v4, now=now)])
    with cas.owner(carol) as owner:
        assert owner.show("shop")["version"] == 4


# -- policies stored before consents existed ------------------------------------------------


def test_migration_keeps_only_the_owner_who_signed_a_stored_policy(tmp_path: Path) -> None:
    """A policy stored by the old code lists owners on its creator's word: they lose access."""
    url = f"sqlite:///{tmp_path / 'cas.db'}"
    mallory, alice = pg.owner_key(), pg.owner_key()
    text = pg.policy_text([mallory, alice])
    owners = [_id(mallory), _id(alice)]
    # Write it as the old code did: store it, then take the schema back to 0001
    # (whose rows list every owner named, signed or not).
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    service = pg.make_service(url, keyring)
    service.apply_policy(owners[0], text, pg.CLOCK, pg.consents(text, alice))
    service.stop()
    engine = db.make_engine(url)
    command.downgrade(db.alembic_config(engine), "0001")
    with engine.begin() as connection:
        assert json.loads(connection.execute(sql("SELECT owners FROM policies")).scalar()) == owners
    engine.dispose()
    database = Database.open(url)
    with database.transaction() as repo:
        stored = repo.get_policy("shop")
    database.close()
    assert stored is not None and stored.owners == (_id(mallory),)
    assert load_policy(stored.text).owner_ids == frozenset(owners)  # the text is unchanged
    service = pg.make_service(url, keyring)
    try:
        assert service.read_policy(owners[0], "shop").version == 1
        with pytest.raises(NotFound):  # a stranger's answer: as if there were none
            service.read_policy(owners[1], "shop")
        update = pg.policy_text([mallory, alice], predecessor=policy_hash(text), description="2")
        with pytest.raises(AccessDenied, match="missing consent of owner1"):
            service.apply_policy(owners[0], update, pg.CLOCK)
        service.apply_policy(owners[0], update, pg.CLOCK, pg.consents(update, alice))
        assert service.read_policy(owners[1], "shop").version == 2
    finally:
        service.stop()


def test_public_urls_are_the_origins_signatures_may_name() -> None:
    from sgxcloud.cas.config import ConfigError, load_settings

    settings = load_settings(
        None, environ={"SGXCLOUD_CAS_PUBLIC_URLS": "https://CAS.example, https://cas.example:8443/"}
    )
    assert settings.audiences() == ("https://cas.example:443", "https://cas.example:8443")
    derived = load_settings(None, environ={}).audiences()
    assert "https://127.0.0.1:8443" in derived and "https://localhost:8443" in derived
    with pytest.raises(ConfigError, match="public_urls"):
        load_settings(None, environ={"SGXCLOUD_CAS_PUBLIC_URLS": "ftp://cas.example"})
