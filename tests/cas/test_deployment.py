"""The deployment id that owners' signatures bind (red team a06 part 3).

Made once with the database (migration 0003): replicas sharing the database
share it, a restart keeps it, a new database gets another; served by
``GET /v1/health``, fetched by the owner client over the pinned TLS, or
pinned by the owner.  Backup and restore keep it: ``test_backup.py``; two
deployments at one origin: ``test_owner_replay.py``; the CLI end to end:
``test_service_cli.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from alembic import command
from sqlalchemy import inspect

from sgxcloud.cas import client, secrets
from sgxcloud.cas.client import pinned_tls
from sgxcloud.cas.errors import AccessDenied
from sgxcloud.cas.policy import public_key_id
from sgxcloud.cas.service import auth
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.server import background_https, make_loopback_tls
from sgxcloud.cas.store import Database, db

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url


def _id(key) -> str:  # type: ignore[no-untyped-def]
    return public_key_id(pg.public_pem(key))


def test_migration_gives_a_database_of_the_old_schema_one_lasting_deployment_id(
    database_url: str,
) -> None:
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    owner = pg.owner_key()
    service = pg.make_service(database_url, keyring)
    service.apply_policy(_id(owner), pg.policy_text(owner), pg.CLOCK)
    service.stop()
    # The database as the previous release left it: schema 0002, no deployment id.
    engine = db.make_engine(database_url)
    command.downgrade(db.alembic_config(engine), "0002")
    assert not inspect(engine).has_table("deployment")
    engine.dispose()

    upgraded = pg.make_service(database_url, keyring)  # migrates to the head
    try:
        deployment = upgraded.deployment_id
        assert auth.is_deployment_id(deployment)
        assert upgraded.read_policy(_id(owner), "shop").version == 1  # nothing else changed
    finally:
        upgraded.stop()
    restarted = pg.make_service(database_url, keyring)  # a restart: the same id, made once
    try:
        assert restarted.deployment_id == deployment
        db.upgrade(restarted.database.engine)  # a second migration run changes nothing
        with restarted.database.transaction() as repo:
            assert repo.deployment_id() == deployment
    finally:
        restarted.stop()


def test_replicas_on_one_database_share_the_id_and_another_database_has_its_own(
    database_url: str, tmp_path: Path
) -> None:
    """Behind one public URL, a request signed with the id replica 0 serves works at replica 1."""
    public = "https://cas.example:443"
    ring = secrets.Keyring(secrets.MasterKey.generate())
    replicas = [pg.make_service(database_url, ring) for _ in range(2)]
    elsewhere = pg.make_service(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    tls = make_loopback_tls(tmp_path / "tls")
    owner = pg.owner_key()
    try:
        assert replicas[0].deployment_id == replicas[1].deployment_id
        assert elsewhere.deployment_id != replicas[0].deployment_id
        with (
            background_https(create_app(replicas[0], audiences=[public]), tls) as one,
            background_https(create_app(replicas[1], audiences=[public]), tls) as two,
        ):
            with client.OwnerClient(one, owner, ca_file=tls.ca_cert, audience=public) as first:
                served = first.deployment_id()  # GET /v1/health of replica 0
                first.apply(pg.policy_text(owner))
            assert served == replicas[0].deployment_id
            with client.OwnerClient(
                two, owner, ca_file=tls.ca_cert, audience=public, deployment=served
            ) as second:
                assert second.show("shop")["version"] == 1
            with httpx.Client(verify=pinned_tls(tls.ca_cert)) as http:
                health = http.get(f"{two}/v1/health").json()
            assert health["deployment"] == served
    finally:
        for service in (*replicas, elsewhere):
            service.stop()


@pytest.fixture
def cas(tmp_path: Path):  # type: ignore[no-untyped-def]
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    tls = make_loopback_tls(tmp_path / "tls")
    with background_https(create_app(service), tls) as url:
        yield url, tls.ca_cert, service
    service.stop()


def test_an_owner_who_pins_the_id_never_signs_for_another_deployment(cas) -> None:  # type: ignore[no-untyped-def]
    url, ca, service = cas
    owner = pg.owner_key()
    asked: list[str] = []
    http = httpx.Client(
        base_url=url,
        verify=pinned_tls(ca),
        event_hooks={"request": [lambda r: asked.append(r.url.path)]},
    )
    pinned = client.OwnerClient(
        url, owner, ca_file=ca, http_client=http, deployment=service.deployment_id
    )
    with pinned:
        pinned.apply(pg.policy_text(owner))
    assert asked == ["/v1/policies"]  # pinned: /v1/health is never asked
    other = "0" * 32
    with (
        client.OwnerClient(url, owner, ca_file=ca, deployment=other) as wrong,
        pytest.raises(AccessDenied, match=f"signed for another CAS deployment \\({other}\\)"),
    ):
        wrong.show("shop")
    with pytest.raises(client.ClientError, match="not a CAS deployment id"):
        client.OwnerClient(url, owner, ca_file=ca, deployment="cas.example")
    with pytest.raises(client.ClientError, match="not a CAS deployment id"):
        client.consent(owner, url, pg.policy_text(owner), now=int(time.time()), deployment="x")


def test_a_cas_that_names_no_deployment_is_a_clear_client_error(tmp_path: Path) -> None:
    """A new owner client against an older CAS: one clear error, nothing signed for it."""
    from fastapi import FastAPI

    older = FastAPI()
    older.state.audiences = frozenset()  # what background_https adds its URL to

    @older.get("/v1/health")
    def health() -> dict:
        return {"state": "ready", "database": "sqlite"}

    tls = make_loopback_tls(tmp_path / "tls")
    with (
        background_https(older, tls) as url,
        client.OwnerClient(url, pg.owner_key(), ca_file=tls.ca_cert) as owner,
        pytest.raises(client.ClientError, match=r"names no deployment id .* upgrade the CAS"),
    ):
        owner.show("shop")


def test_the_database_row_is_the_one_source(tmp_path: Path) -> None:
    """A database without its deployment row refuses to start rather than invent an id."""
    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'cas.db'}"
    Database.open(url).close()
    engine = db.make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM deployment"))
    engine.dispose()
    from sgxcloud.cas.store import StoreError

    with pytest.raises(StoreError, match="names no deployment"):
        pg.make_service(url)


def test_a_copy_renewed_as_a_deployment_of_its_own_refuses_the_originals_requests(
    tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A restore is the same deployment; 'cas deployment --renew' makes a copy another one."""
    import shutil

    from sgxcloud.cli.main import main as cli

    monkeypatch.delenv("SGXCLOUD_CAS_DATABASE_URL", raising=False)
    key = secrets.MasterKey.generate()
    key_file = tmp_path / "master.key"
    secrets.write_master_key(key_file, key)
    original = pg.make_service(f"sqlite:///{tmp_path / 'prod.db'}", secrets.Keyring(key))
    owner = pg.owner_key()
    original.apply_policy(_id(owner), pg.policy_text(owner), pg.CLOCK)
    prod_id = original.deployment_id
    original.stop()
    shutil.copy(tmp_path / "prod.db", tmp_path / "staging.db")
    settings = tmp_path / "staging.yaml"
    settings.write_text(
        f"database_url: sqlite:///{tmp_path / 'staging.db'}\nmaster_key_file: {key_file}\n"
    )
    assert cli(["cas", "deployment", "--config", str(settings)]) == 0
    assert capsys.readouterr().out.strip() == prod_id  # a copy: the same deployment
    assert cli(["cas", "deployment", "--config", str(settings), "--renew", "--json"]) == 0
    renewed = json.loads(capsys.readouterr().out)
    assert renewed["previous"] == prod_id and auth.is_deployment_id(renewed["deployment"])
    assert renewed["deployment"] != prod_id
    staging = pg.make_service(f"sqlite:///{tmp_path / 'staging.db'}", secrets.Keyring(key))
    tls = make_loopback_tls(tmp_path / "tls")
    try:
        assert staging.deployment_id == renewed["deployment"]
        with background_https(create_app(staging), tls) as url:
            with (
                client.OwnerClient(url, owner, ca_file=tls.ca_cert, deployment=prod_id) as old,
                pytest.raises(AccessDenied, match="another CAS deployment"),
            ):
                old.show("shop")
            with client.OwnerClient(url, owner, ca_file=tls.ca_cert) as fresh:
                assert fresh.show("shop")["version"] == 1
    finally:
        staging.stop()


def test_nonces_belong_to_one_deployment(tmp_path: Path) -> None:
    """A deployment's replicas check each other's nonces; a renewed copy (same key) does not."""
    import shutil

    from sgxcloud.cas.service.nonces import NOT_ISSUED

    keyring = secrets.Keyring(secrets.MasterKey.generate())
    first = pg.make_service(f"sqlite:///{tmp_path / 'prod.db'}", keyring)
    replica = pg.make_service(f"sqlite:///{tmp_path / 'prod.db'}", keyring)
    nonce = bytes.fromhex(first.issue_nonce(pg.CLOCK).nonce)
    assert replica._nonces.check(nonce, pg.CLOCK)[0] is None
    replica.stop()
    first.stop()
    shutil.copy(tmp_path / "prod.db", tmp_path / "staging.db")
    with Database.open(f"sqlite:///{tmp_path / 'staging.db'}").transaction() as repo:
        repo.renew_deployment_id()
    staging = pg.make_service(f"sqlite:///{tmp_path / 'staging.db'}", keyring)
    try:
        assert staging.deployment_id != first.deployment_id
        assert staging._nonces.check(nonce, pg.CLOCK)[0] == NOT_ISSUED
    finally:
        staging.stop()


def test_migration_0004_indexes_who_reads_each_existing_policy(database_url: str) -> None:
    """The audit endpoints find a caller's policies through policy_access (rt5 finding 3's
    sibling); policies stored before it get their owners' and readers' rows on upgrade,
    and migration 0007 drops the readers' (listed without their consent: rt7 finding 4)."""
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    owner, reader, other = pg.owner_key(), pg.owner_key(), pg.owner_key()
    service = pg.make_service(database_url, keyring)
    service.apply_policy(_id(owner), pg.policy_text(owner, readers=[reader]), pg.CLOCK)
    service.apply_policy(_id(other), pg.policy_text(other, name="theirs"), pg.CLOCK)
    service.stop()
    engine = db.make_engine(database_url)
    command.downgrade(db.alembic_config(engine), "0003")
    assert not inspect(engine).has_table("policy_access")
    command.upgrade(db.alembic_config(engine), "0006")
    with Database(engine).transaction() as repo:
        assert repo.policies_readable_by(_id(reader)) == {"shop"}
    engine.dispose()
    upgraded = pg.make_service(database_url, keyring)  # migrates to the head
    try:
        with upgraded.database.transaction() as repo:
            assert repo.policies_readable_by(_id(owner)) == {"shop"}
            assert repo.policies_readable_by(_id(reader)) == set()
            assert repo.policies_readable_by(_id(other)) == {"theirs"}
        assert [e.subject for e in upgraded.audit_entries(_id(owner))] == ["shop"]
        with pytest.raises(AccessDenied):
            upgraded.audit_entries(_id(reader))
        assert "readers" in upgraded.read_policy(_id(reader), "shop").text  # still reads it
    finally:
        upgraded.stop()
