"""Settings and the cas/policy/audit commands, against a real HTTPS service on loopback."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update

from sgxcloud.cas.config import ConfigError, load_settings
from sgxcloud.cas.policy import policy_hash, public_key_id
from sgxcloud.cas.service.server import background_https, build_app, build_service
from sgxcloud.cas.store import Database
from sgxcloud.cas.store.models import AuditEntryRow
from sgxcloud.cli.main import main as cli

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert cli(["cas", "init", str(tmp_path / "cas"), "--loopback-tls"]) == 0
    return tmp_path / "cas"


def test_init_writes_a_private_key_and_valid_settings(home: Path) -> None:
    assert (home / "keys" / "master.key").stat().st_mode & 0o777 == 0o600
    settings = load_settings(home / "cas.yaml", environ={})
    assert settings.master_key_file == home / "keys" / "master.key"
    assert settings.database_url == f"sqlite:///{home / 'data' / 'cas.db'}"
    assert not settings.master_key_beside_database()
    assert settings.tls_cert == home / "tls" / "server.pem"
    assert len(settings.keyring(environ={}).current.key) == 32
    assert cli(["cas", "init", str(home)]) == 2  # never replaces a master key


def test_init_key_dir_elsewhere_and_never_the_database_directory(tmp_path: Path) -> None:
    keys = tmp_path / "vault"
    assert cli(["cas", "init", str(tmp_path / "cas"), "--key-dir", str(keys)]) == 0
    settings = load_settings(tmp_path / "cas" / "cas.yaml", environ={})
    assert settings.master_key_file == (keys / "master.key").resolve()
    assert not settings.master_key_beside_database()
    data = tmp_path / "other" / "data"
    assert cli(["cas", "init", str(tmp_path / "other"), "--key-dir", str(data)]) == 2
    assert not (data / "master.key").exists()


def test_serve_warns_when_the_key_is_beside_the_sqlite_database(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas import secrets

    secrets.write_master_key(tmp_path / "master.key", secrets.MasterKey.generate())
    path = tmp_path / "cas.yaml"
    path.write_text("database_url: sqlite:///cas.db\nmaster_key_file: master.key\n")
    assert load_settings(path, environ={}).master_key_beside_database()
    assert cli(["cas", "serve", "--config", str(path)]) == 2  # stops later: no TLS configured
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: master key" in err and "same directory as the SQLite database" in err
    path.write_text("database_url: sqlite:///data/cas.db\nmaster_key_file: master.key\n")
    assert not load_settings(path, environ={}).master_key_beside_database()
    assert cli(["cas", "serve", "--config", str(path)]) == 2
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "environ", "message"),
    [
        ("port: 99999\n", {}, "invalid setting port"),
        ("nonce_ttl_seconds: 1\n", {}, "invalid setting nonce_ttl_seconds"),
        ("tls_cert: a.pem\n", {}, "tls_cert and tls_key must be given together"),
        ("colateral: pccs\n", {}, "invalid setting colateral"),
        ("collateral: pccs\n", {}, "needs pccs_url"),
        ("[1, 2]\n", {}, "must be a mapping"),
        ("", {"SGXCLOUD_CAS_PORT": "http"}, "invalid setting port"),
    ],
)
def test_invalid_settings_name_the_setting(
    tmp_path: Path, content: str, environ: dict, message: str
) -> None:
    path = tmp_path / "cas.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ=environ)


def test_environment_wins_and_master_key_from_env(tmp_path: Path) -> None:
    path = tmp_path / "cas.yaml"
    path.write_text("port: 9000\n")
    key = "A" * 43 + "="
    settings = load_settings(path, environ={"SGXCLOUD_CAS_PORT": "9443"})
    assert settings.port == 9443
    keyring = settings.keyring(environ={"SGXCLOUD_CAS_MASTER_KEY": key})
    assert keyring.current.key == bytes(32)
    with pytest.raises(ConfigError, match="no master key"):
        settings.keyring(environ={})


def test_serve_without_master_key_is_one_line_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cas.yaml"
    path.write_text("master_key_file: missing.key\ntls_cert: a.pem\ntls_key: a.key\n")
    assert cli(["cas", "serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read master key file") and "\n" not in err


def test_openapi_command_prints_the_committed_document(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli(["cas", "openapi"]) == 0
    committed = Path(__file__).resolve().parents[2] / "docs" / "cas" / "openapi.json"
    assert json.loads(capsys.readouterr().out) == json.loads(committed.read_text())


@pytest.fixture
def running(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from sgxcloud.cas.service.server import TlsFiles

    settings = load_settings(home / "cas.yaml", environ={})
    service = build_service(settings)
    tls = TlsFiles(home / "tls" / "ca.pem", settings.tls_cert, settings.tls_key)  # type: ignore[arg-type]
    owner = pg.owner_key()
    key_file = tmp_path / "owner.pem"
    key_file.write_bytes(pg.private_pem(owner))
    with background_https(build_app(settings, service), tls) as url:
        yield ["policy", "--url", url, "--ca-file", str(tls.ca_cert), "--key", str(key_file)], owner
    service.stop()


def test_policy_commands_end_to_end(running, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    base, owner = running
    v1 = tmp_path / "v1.yaml"
    v1.write_text(pg.policy_text(owner))
    assert cli([*base, "--json", "apply", str(v1)]) == 0
    applied = json.loads(capsys.readouterr().out)
    assert applied["version"] == 1 and applied["policy_hash"] == policy_hash(v1.read_text())
    assert cli([*base, "diff", str(v1)]) == 0
    capsys.readouterr()
    v2 = tmp_path / "v2.yaml"
    v2.write_text(pg.policy_text(owner, description="second", predecessor=applied["policy_hash"]))
    assert cli([*base, "--json", "diff", str(v2)]) == 1
    diff = json.loads(capsys.readouterr().out)
    assert diff["predecessor_matches"] and "+description: second" in diff["diff"]
    assert cli([*base, "apply", str(v2)]) == 0
    assert "updated" in capsys.readouterr().out
    assert cli([*base, "apply", str(v2)]) == 1  # its predecessor is no longer current
    assert "error:" in capsys.readouterr().err
    assert cli([*base, "--json", "show", "shop"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and {s["name"] for s in shown["secrets"]} >= {"tls_key"}
    assert cli([*base, "show", "shop"]) == 0
    assert "db_password" in capsys.readouterr().out
    assert cli([*base, "--json", "delete", "shop"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] is True
    assert cli([*base, "show", "shop"]) == 1
    assert capsys.readouterr().err.startswith("error:")


def test_policy_apply_of_an_invalid_file_is_exit_2(running, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    base, owner = running
    bad = tmp_path / "bad.yaml"
    bad.write_text(pg.policy_text(owner).replace("kind: random", "kind: rando"))
    assert cli([*base, "apply", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    # Both secrets of kind "random" are wrong, and both are named (it used to be the first).
    assert err[0] == f"error: {bad}: 2 problem(s):"
    assert err[1:] == [
        "  secrets.api_token.kind: must be one of: random, private-key, x509, gramine-key",
        "  secrets.db_password.kind: must be one of: random, private-key, x509, gramine-key",
    ]


def test_audit_commands_find_tampering(running, home: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    base, owner = running
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(pg.policy_text(owner))
    assert cli([*base, "apply", str(policy_file)]) == 0
    config = ["--config", str(home / "cas.yaml")]
    os.environ.pop("SGXCLOUD_CAS_DATABASE_URL", None)
    assert cli(["audit", "verify", *config]) == 0
    assert "intact" in capsys.readouterr().out
    assert cli(["audit", "show", *config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["kind"] == "policy.apply"
    # The operator finds the entry an enclave was told of by its ref (rt5 finding 3: the
    # enclave is no longer told the position), with the master key of the settings file.
    url, ca = base[2], base[4]
    with httpx.Client(verify=ssl.create_default_context(cafile=ca)) as http:
        nonce = http.post(url + "/v1/nonces").json()["nonce"]
        told = http.post(
            url + "/v1/attest",
            json={
                "policy": "nope",
                "service": "web",
                "nonce": nonce,
                "public_key": "x",
                "evidence": "x",
            },
        ).json()
    assert set(told) >= {"audit_ref"} and "audit_seq" not in told
    assert cli(["audit", "show", *config, "--ref", told["audit_ref"], "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert (entry["seq"], entry["subject"]) == (2, "nope/web")
    assert cli(["audit", "show", *config, "--ref", "A" * 22]) == 2
    assert "not the ref of an audit entry of this CAS" in capsys.readouterr().err
    database = Database.open(f"sqlite:///{home / 'data' / 'cas.db'}", migrate=False)
    with database.engine.begin() as connection:
        connection.execute(update(AuditEntryRow).values(actor="someone else"))
    database.close()
    assert cli(["audit", "verify", *config]) == 1
    assert "BROKEN" in capsys.readouterr().out


def _serve(settings_path: Path) -> tuple:  # type: ignore[type-arg]
    import subprocess
    import sys

    from sgxcloud.cas import client

    settings = load_settings(settings_path, environ={})
    process = subprocess.Popen(
        [sys.executable, "-m", "sgxcloud.cli.main", "cas", "serve", "--config", str(settings_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"https://127.0.0.1:{settings.port}"
    ca = settings_path.parent / "tls" / "ca.pem"
    import time

    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with httpx.Client(verify=client.pinned_tls(ca)) as http:
                if http.get(url + "/v1/health").status_code == 200:
                    return process, url, ca
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(process.stderr.read().decode() if process.stderr else "no start")


def test_cas_serve_process_restart_keeps_everything(home: Path) -> None:
    import socket

    from sgxcloud.cas import client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings_path = home / "cas.yaml"
    settings_path.write_text(settings_path.read_text().replace("port: 8443", f"port: {port}"))
    owner = pg.owner_key()
    process, url, ca = _serve(settings_path)
    try:
        with client.OwnerClient(url, owner, ca_file=ca) as owner_client:
            applied = owner_client.apply(pg.policy_text(owner))
        first = client.fetch_configuration(
            url,
            policy="shop",
            service="web",
            ca_file=ca,
            root=home,
            simulate=pg.simulated_identity(),
        )
    finally:
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM as its exit status.
        assert process.wait(timeout=20) in (0, -15)
    process, url, ca = _serve(settings_path)
    try:
        with client.OwnerClient(url, owner, ca_file=ca) as owner_client:
            shown = owner_client.show("shop")
        again = client.fetch_configuration(
            url,
            policy="shop",
            service="web",
            ca_file=ca,
            root=home,
            simulate=pg.simulated_identity(),
        )
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert shown["policy_hash"] == applied["policy_hash"] and shown["version"] == 1
    # Same sealed secrets after the restart: the enclave gets the same values.
    assert again.configuration.argv == first.configuration.argv
    assert cli(["audit", "verify", "--config", str(settings_path)]) == 0


def test_owner_cli_signs_for_one_of_two_deployments_at_the_same_address(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Red team a06 part 3 end to end: two 'cas serve' deployments with default settings
    (no public_urls), one after the other on 127.0.0.1:PORT — one origin, two databases."""
    import socket
    import time

    import httpx

    from sgxcloud.cas import client
    from sgxcloud.cas.service import auth

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = {}
    for name in ("a", "b"):
        assert cli(["cas", "init", str(tmp_path / name), "--loopback-tls"]) == 0
        path = tmp_path / name / "cas.yaml"
        path.write_text(path.read_text().replace("port: 8443", f"port: {port}"))
        settings[name] = path
    capsys.readouterr()
    owner, bob = pg.owner_key(), pg.owner_key()
    owner_file, bob_file = tmp_path / "owner.pem", tmp_path / "bob.pem"
    owner_file.write_bytes(pg.private_pem(owner))
    bob_file.write_bytes(pg.private_pem(bob))
    shop, shared = tmp_path / "shop.yaml", tmp_path / "shared.yaml"
    shop.write_text(pg.policy_text(owner))
    shared.write_text(pg.policy_text([owner, bob], name="shared"))
    consent_for_a = tmp_path / "bob-for-a.json"

    def stop(process) -> None:  # type: ignore[no-untyped-def]
        process.terminate()
        process.wait(timeout=20)

    process, url, ca = _serve(settings["a"])
    try:
        as_owner = ["policy", "--url", url, "--ca-file", str(ca), "--key", str(owner_file)]
        assert cli([*as_owner, "apply", str(shop)]) == 0
        capsys.readouterr()
        # Bob's consent: the deployment id is asked of A, over A's pinned TLS.
        as_bob = ["policy", "--url", url, "--ca-file", str(ca), "--key", str(bob_file)]
        assert cli([*as_bob, "--json", "consent", str(shared), "-o", str(consent_for_a)]) == 0
        deployment_a = json.loads(capsys.readouterr().out)["deployment"]
        with httpx.Client(verify=client.pinned_tls(ca)) as http:
            assert http.get(f"{url}/v1/health").json()["deployment"] == deployment_a
        # The operator reads the same id from the database, to hand to owners who pin it.
        assert cli(["cas", "deployment", "--config", str(settings["a"]), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"deployment": deployment_a}
        # A delete of A's policy, signed for A and not sent yet: what an attacker captures.
        path = f"/v1/policies/shop?predecessor={policy_hash(shop.read_text())}"
        captured = auth.sign_request(
            owner,
            "DELETE",
            path,
            b"",
            now=int(time.time()),
            deployment=deployment_a,
            audience=auth.origin_of(url),
        )
    finally:
        stop(process)

    process, url_b, ca_b = _serve(settings["b"])
    try:
        assert url_b == url  # the same origin
        as_owner_b = ["policy", "--url", url, "--ca-file", str(ca_b), "--key", str(owner_file)]
        assert cli([*as_owner_b, "apply", str(shop)]) == 0  # B's own id, asked of B
        capsys.readouterr()
        with httpx.Client(verify=client.pinned_tls(ca_b)) as http:
            relayed = http.delete(url + path, headers=captured)
        assert relayed.status_code == 401 and "another CAS deployment" in relayed.text
        assert cli([*as_owner_b, "--json", "show", "shop"]) == 0
        assert json.loads(capsys.readouterr().out)["version"] == 1
        # A's consent is worthless at B: one line, exit 1, nothing stored.
        assert cli([*as_owner_b, "apply", str(shared), "--consent", str(consent_for_a)]) == 1
        err = capsys.readouterr().err
        assert "made for another CAS deployment" in err and err.count("\n") == 1
        # An owner who pinned A's id (option or environment) never signs for B.
        assert cli([*as_owner_b, "--deployment", deployment_a, "show", "shop"]) == 1
        assert "signed for another CAS deployment" in capsys.readouterr().err
    finally:
        stop(process)

    process, url, ca = _serve(settings["a"])
    try:
        with httpx.Client(verify=client.pinned_tls(ca)) as http:
            assert http.delete(url + path, headers=captured).status_code == 204  # A's own
        pin = tmp_path / "a.deployment"
        pin.write_text(deployment_a + "\n")
        pinned = [
            "policy",
            "--url",
            url,
            "--ca-file",
            str(ca),
            "--key",
            str(owner_file),
            "--deployment",
            f"@{pin}",
        ]
        assert cli([*pinned, "--json", "apply", str(shared), "--consent", str(consent_for_a)]) == 0
        assert json.loads(capsys.readouterr().out)["created"] is True
        assert cli([*pinned, "show", "shop"]) == 1  # deleted by the captured request, at A
    finally:
        stop(process)


@pytest.mark.parametrize("value", ["cas.example", "ABCDEF" * 6, "@/nonexistent/deployment"])
def test_a_bad_pinned_deployment_is_one_line_exit_2(tmp_path: Path, capsys, value) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "owner.pem"
    key_file.write_bytes(pg.private_pem(pg.owner_key()))
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(pg.policy_text(pg.owner_key()))
    command = [
        "policy",
        "--url",
        "https://127.0.0.1:1",
        "--key",
        str(key_file),
        "--deployment",
        value,
        "consent",
        str(policy_file),
    ]
    assert cli(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "deployment id" in err


def test_service_refuses_to_start_with_the_wrong_master_key(home: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas import secrets
    from sgxcloud.cas.policy import public_key_id

    settings = load_settings(home / "cas.yaml", environ={})
    service = build_service(settings)
    owner = pg.owner_key()
    service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    service.stop()
    other = secrets.MasterKey.generate().encoded()
    wrong = load_settings(home / "cas.yaml", environ={})
    monkeypatch.setenv("SGXCLOUD_CAS_MASTER_KEY", other)
    with pytest.raises(secrets.MasterKeyError, match="no master key with id"):
        build_service(wrong)


def test_master_key_rotation_with_rewrap(home: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas import secrets
    from sgxcloud.cas.policy import public_key_id

    settings = load_settings(home / "cas.yaml", environ={})
    service = build_service(settings)
    owner = pg.owner_key()
    service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    before = service.read_policy(public_key_id(pg.public_pem(owner)), "shop").secrets
    service.stop()
    new_key = secrets.MasterKey.generate()
    secrets.write_master_key(home / "keys" / "new.key", new_key)
    config = home / "cas.yaml"
    config.write_text(
        config.read_text().replace(
            "master_key_file: keys/master.key",
            "master_key_file: keys/new.key\nretired_master_key_files: [keys/master.key]",
        )
    )
    assert cli(["cas", "rewrap", "--config", str(config)]) == 0
    assert "re-wrapped under master key " + new_key.key_id in capsys.readouterr().out
    # The old key can go: everything opens with the new one alone.
    config.write_text(config.read_text().replace("retired_master_key_files: [keys/master.key]", ""))
    service = build_service(load_settings(config, environ={}))
    after = service.read_policy(public_key_id(pg.public_pem(owner)), "shop").secrets
    assert {s["master_key_id"] for s in after} == {new_key.key_id}
    assert [s["name"] for s in after] == [s["name"] for s in before]
    service.stop()


def test_owner_authenticated_by_tls_client_certificate(home: Path, tmp_path: Path) -> None:
    """Mutual TLS: a certificate owner needs no request signature at all."""
    import datetime as dt
    import hashlib
    import ssl

    import httpx
    import yaml

    from sgxcloud.cas import secrets
    from sgxcloud.cas.service.server import TlsFiles

    now = dt.datetime.now(dt.UTC)
    owners_ca = secrets.make_ca("owners", now)
    (tmp_path / "owners-ca.pem").write_bytes(owners_ca.certificate_pem)
    key = secrets.new_private_key("ec-p256")
    cert = secrets.issue_certificate(owners_ca, key.public_key(), common_name="alice", now=now)
    (tmp_path / "alice.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "alice.key").write_bytes(pg.private_pem(key))
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    document = yaml.safe_load(pg.policy_text(pg.owner_key()))
    document["access"]["owners"] = [{"name": "alice", "client_certificate_sha256": fingerprint}]
    body = {"policy": yaml.safe_dump(document)}

    settings = load_settings(home / "cas.yaml", environ={})
    service = build_service(settings)
    tls = TlsFiles(home / "tls" / "ca.pem", settings.tls_cert, settings.tls_key)  # type: ignore[arg-type]
    with background_https(
        build_app(settings, service), tls, owner_ca=tmp_path / "owners-ca.pem"
    ) as url:
        with_cert = ssl.create_default_context(cafile=str(tls.ca_cert))
        with_cert.load_cert_chain(tmp_path / "alice.pem", tmp_path / "alice.key")
        with httpx.Client(base_url=url, verify=with_cert) as http:
            created = http.put("/v1/policies", json=body)
            assert created.status_code == 200, created.text
            assert (
                http.get("/v1/policies/shop").json()["updated_by"] == f"cert:sha256:{fingerprint}"
            )
        without = ssl.create_default_context(cafile=str(tls.ca_cert))
        with httpx.Client(base_url=url, verify=without) as http:
            assert http.get("/v1/policies/shop").status_code == 401
            assert http.post("/v1/nonces").status_code == 200  # enclaves need no certificate
    service.stop()


@pytest.mark.parametrize("command", ["show", "verify"])
def test_audit_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path, capsys, command) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "missing.db"
    url = f"sqlite:///{missing}"
    assert cli(["audit", command, "--database-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no database file {missing}: check database_url"
    assert list(tmp_path.iterdir()) == []  # no empty database (nor -wal/-shm) left behind


def test_policy_owner_id_prints_the_principal_id_to_pin(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas.policy import public_key_id

    key = pg.owner_key()
    key_file = tmp_path / "owner.pem"
    key_file.write_bytes(pg.private_pem(key))
    (tmp_path / "owner.pub").write_text(pg.public_pem(key))
    expected = public_key_id(pg.public_pem(key))
    assert cli(["policy", "--key", str(key_file), "--json", "owner-id"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == expected
    assert cli(["policy", "owner-id", "--public-key", str(tmp_path / "owner.pub")]) == 0
    assert capsys.readouterr().out.strip() == expected
    assert cli(["policy", "owner-id", "--public-key", str(key_file)]) == 2  # a private key
    assert "is not a readable key or certificate" in capsys.readouterr().err
    assert cli(["policy", "owner-id"]) == 2


def test_policy_consent_then_apply_with_it(running, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A co-owner signs 'policy consent' offline; the applying owner passes the file."""
    base, owner = running
    bob = pg.owner_key()
    bob_key = tmp_path / "bob.pem"
    bob_key.write_bytes(pg.private_pem(bob))
    url = base[base.index("--url") + 1]
    shared = tmp_path / "shared.yaml"
    shared.write_text(pg.policy_text([owner, bob]))
    assert cli([*base, "apply", str(shared)]) == 1
    assert "missing consent of owner1" in capsys.readouterr().err
    consent = tmp_path / "bob.consent.json"
    # The CAS's deployment id is asked of it over the pinned TLS (or pinned with --deployment).
    bob_cli = [
        "policy",
        "--url",
        url,
        "--key",
        str(bob_key),
        "--ca-file",
        base[base.index("--ca-file") + 1],
    ]
    assert cli([*bob_cli, "--json", "consent", str(shared), "-o", str(consent)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["policy_hash"] == policy_hash(shared.read_text())
    assert cli([*base, "--json", "apply", str(shared), "--consent", str(consent)]) == 0
    assert json.loads(capsys.readouterr().out)["created"] is True
    # Bob is an owner now: he reads it with his own key (no consent needed for that).
    assert cli([*bob_cli, "show", "shop"]) == 0
    capsys.readouterr()
    # A file that is not a consent: one line, exit 2.
    assert cli([*base, "apply", str(shared), "--consent", str(shared)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


@pytest.fixture
def usual_umask():  # type: ignore[no-untyped-def]
    """The umask most systems run services under (022): group and others may read."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_init_and_first_start_keep_the_database_private(tmp_path: Path, usual_umask) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 finding 8: data/ 0700, the SQLite file and its -wal/-shm 0600."""
    home = tmp_path / "cas"
    assert cli(["cas", "init", str(home)]) == 0
    assert (home / "data").stat().st_mode & 0o777 == 0o700
    settings = load_settings(home / "cas.yaml", environ={})
    service = build_service(settings)
    try:
        owner = pg.owner_key()
        service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
        files = sorted((home / "data").iterdir())
        assert {f.name for f in files} >= {"cas.db", "cas.db-wal", "cas.db-shm"}
        for file in files:
            assert file.stat().st_mode & 0o777 == 0o600, file
    finally:
        service.stop()


def test_serve_tightens_a_database_others_can_read_and_says_so(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas import secrets

    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    Database.open(f"sqlite:///{data / 'cas.db'}").close()
    (data / "cas.db").chmod(0o644)
    (tmp_path / "keys").mkdir(mode=0o700)
    secrets.write_master_key(tmp_path / "keys" / "master.key", secrets.MasterKey.generate())
    path = tmp_path / "cas.yaml"
    path.write_text("database_url: sqlite:///data/cas.db\nmaster_key_file: keys/master.key\n")
    assert cli(["cas", "serve", "--config", str(path)]) == 2  # stops later: no TLS configured
    err = " ".join(capsys.readouterr().err.split())
    assert "cas.db was mode 0644" in err and "set to 0600" in err
    assert "data is mode 0755" in err and "make it 0700" in err
    assert (data / "cas.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("umask", [0o000, 0o002])
def test_init_under_a_permissive_umask_leaves_nothing_others_can_change(
    tmp_path: Path, umask: int
) -> None:
    """Red-team a07: under umask 000 cas.yaml, tls/ and the PEM files were world-writable."""
    previous = os.umask(umask)
    try:
        assert cli(["cas", "init", str(tmp_path / "cas"), "--loopback-tls"]) == 0
        assert cli(["cas", "init", str(tmp_path / "csr"), "--tls-csr", "cas.example"]) == 0
    finally:
        os.umask(previous)
    home = tmp_path / "cas"
    expected = {
        home: 0o755,
        home / "data": 0o700,
        home / "keys": 0o700,
        home / "tls": 0o700,
        home / "cas.yaml": 0o600,
        home / "keys/master.key": 0o600,
        home / "tls/ca.pem": 0o644,
        home / "tls/server.pem": 0o644,
        home / "tls/server.key": 0o600,
        tmp_path / "csr/tls": 0o700,
        tmp_path / "csr/tls/server.key": 0o600,
        tmp_path / "csr/tls/server.csr": 0o644,
        tmp_path / "csr/cas.yaml": 0o600,
    }
    assert {p: p.stat().st_mode & 0o777 for p in expected} == expected


def test_serve_refuses_settings_others_can_change(home: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    settings = home / "cas.yaml"
    for target, mode in ((settings, 0o666), (home, 0o775)):
        target.chmod(mode)
        assert cli(["cas", "serve", "--config", str(settings)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1
        assert "writable by group or others" in err and f"chmod go-w {target}" in err
        target.chmod(0o755 if target.is_dir() else 0o600)


def test_owner_audit_verify_runs_a_whole_round_in_one_command(
    running, home: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A big owner needed ⌈entries / 1000⌉ verify calls for a round of re-checks, by hand,
    and no answer said when a round was complete.  ``audit verify --url`` makes the calls
    until the round is complete (``--once``: one, saying how much is left), so an edit
    of any of the owner's older entries is found by one command."""
    from sgxcloud.cas import audit

    monkeypatch.setattr(audit.recheck_entries_of, "__kwdefaults__", {"limit": 4, "walked_to": None})
    base, owner = running
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(pg.policy_text(owner))
    assert cli([*base, "apply", str(policy_file)]) == 0
    capsys.readouterr()
    url, ca = base[2], base[4]
    with httpx.Client(verify=ssl.create_default_context(cafile=ca)) as http:
        for _ in range(13):  # entries 2..14: keyless garbage naming the owner's policy
            body = {"policy": "shop", "service": "web", "nonce": "00", "public_key": "x"}
            assert (
                http.post(url + "/v1/attest", json={**body, "evidence": "AA=="}).status_code == 400
            )
    owner_args = ["audit", "verify", "--url", url, *base[3:]]
    assert cli([*owner_args, "--json"]) == 0  # the first call walks all 14
    first = json.loads(capsys.readouterr().out)
    assert (first["round_complete"], first["calls"]) == (True, 1)
    assert cli([*owner_args, "--once", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "audit chain intact" in out
    assert "round 1: 10 of your entries left to re-check (~1 more call(s))" in out
    assert cli([*owner_args, "--json"]) == 0  # the rest of that round: 3 more calls (4 each)
    rest = json.loads(capsys.readouterr().out)
    assert (rest["ok"], rest["round_complete"], rest["calls"]) == (True, True, 3)
    database = Database.open(f"sqlite:///{home / 'data' / 'cas.db'}", migrate=False)
    with database.engine.begin() as connection:  # an insider edits an older entry
        connection.execute(
            update(AuditEntryRow).where(AuditEntryRow.seq == 7).values(outcome="accepted")
        )
    database.close()
    assert cli(owner_args) == 1  # one command: the round's second call finds it
    captured = capsys.readouterr()
    assert "BROKEN" in captured.out and audit.CONTENT_CHANGED in captured.out
    assert cli(["audit", "verify", "--url", url, "--database-url", "sqlite:///x.db"]) == 2
    assert cli(["audit", "verify", *["--config", str(home / "cas.yaml")], "--once"]) == 2


def test_rejections_recorded_per_policy_follow_the_settings(home: Path) -> None:
    """The per-policy budget of recorded rejections is a setting (per worker process),
    served over real HTTPS: past it, garbage naming the policy gets 429 and no entry."""
    from sgxcloud.cas.service.server import TlsFiles

    settings_path = home / "cas.yaml"
    settings_path.write_text(
        settings_path.read_text() + "rejections_burst: 3\nrejections_per_second: 0.001\n"
    )
    settings = load_settings(settings_path, environ={})
    assert (settings.rejections_burst, settings.rejections_per_second) == (3, 0.001)
    service = build_service(settings)
    tls = TlsFiles(home / "tls" / "ca.pem", settings.tls_cert, settings.tls_key)  # type: ignore[arg-type]
    body = {"policy": "shop", "service": "web", "nonce": "00", "public_key": "x", "evidence": ""}
    try:
        with (
            background_https(build_app(settings, service), tls) as url,
            httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca_cert))) as http,
        ):
            answers = [http.post(url + "/v1/attest", json=body) for _ in range(5)]
            assert [a.status_code for a in answers] == [400, 400, 400, 429, 429]
            assert answers[3].json()["error"] == "too-many-requests"
            assert "audit_ref" not in answers[3].json()
    finally:
        service.stop()
    database = Database.open(f"sqlite:///{home / 'data' / 'cas.db'}", migrate=False)
    with database.engine.connect() as connection:
        assert len(connection.execute(AuditEntryRow.__table__.select()).all()) == 3
    database.close()
