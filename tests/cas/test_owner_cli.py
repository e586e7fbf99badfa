"""Owners' tools: keygen, id, validate, full output when piped, one --url convention."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas import client
from sgxcloud.cas.config import load_settings
from sgxcloud.cas.policy import certificate_id, public_key_id
from sgxcloud.cas.service.server import TlsFiles, background_https, build_app, build_service
from sgxcloud.cli.main import main as cli
from tests.cas import postgres as pg

HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.mark.parametrize("algorithm", ["ed25519", "p256"])
def test_keygen_makes_a_private_key_a_public_key_and_a_csr(
    tmp_path: Path, capsys, algorithm: str
) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "alice.pem"
    args = [
        "owner",
        "keygen",
        "--out",
        str(key_file),
        "--algorithm",
        algorithm,
        "--csr",
        str(tmp_path / "alice.csr"),
        "--subject",
        "CN=alice,O=Example",
        "--json",
    ]
    assert cli(args) == 0
    made = json.loads(capsys.readouterr().out)
    assert key_file.stat().st_mode & 0o777 == 0o600
    public = (tmp_path / "alice.pub.pem").read_bytes()
    assert made["id"] == public_key_id(public)
    private = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert (
        public_key_id(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        == made["id"]
    )
    csr = x509.load_pem_x509_csr((tmp_path / "alice.csr").read_bytes())
    assert csr.is_signature_valid and csr.subject.rfc4514_string() == "CN=alice,O=Example"
    # Never replaces a key; nothing half-written.
    assert cli(["owner", "keygen", "--out", str(key_file)]) == 2
    assert "exists; refusing to replace it" in capsys.readouterr().err
    assert (
        cli(["owner", "keygen", "--out", str(tmp_path / "b.pem"), "--csr", str(tmp_path / "b.csr")])
        == 2
    )
    assert not (tmp_path / "b.pem").exists()


def test_owner_id_from_any_key_certificate_or_csr(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert (
        cli(
            [
                "owner",
                "keygen",
                "--out",
                str(tmp_path / "o.pem"),
                "--algorithm",
                "p256",
                "--csr",
                str(tmp_path / "o.csr"),
                "--subject",
                "CN=owner",
            ]
        )
        == 0
    )
    capsys.readouterr()
    key_id = public_key_id((tmp_path / "o.pub.pem").read_bytes())
    # An owner CA signs the CSR: the certificate-based owner's id.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr((tmp_path / "o.csr").read_bytes())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(x509.Name.from_rfc4514_string("CN=owner CA"))
        .public_key(csr.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "o.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "o.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    expected = {
        "o.pem": key_id,
        "o.pub.pem": key_id,
        "o.crt": certificate_id(cert.public_bytes(serialization.Encoding.DER)),
        "o.der": certificate_id(cert.public_bytes(serialization.Encoding.DER)),
    }
    for name, principal in expected.items():
        assert cli(["owner", "id", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out.splitlines()[0] == principal
    assert cli(["owner", "id", "--json", str(tmp_path / "o.crt")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key_id"] == key_id and shown["id"].endswith(shown["client_certificate_sha256"])
    assert cli(["owner", "id", "--json", str(tmp_path / "o.csr")]) == 0
    assert json.loads(capsys.readouterr().out)["key_id"] == key_id
    (tmp_path / "junk").write_text("hello")
    assert cli(["owner", "id", str(tmp_path / "junk")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_validate_lists_every_problem_with_its_field(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    owner = pg.owner_key()
    document = yaml.safe_load(pg.policy_text(owner))
    document["services"]["web"]["identities"][0]["mrenclave"] = "xyz"
    document["secrets"]["db_password"]["kind"] = "rando"
    document["secrets"]["api_token"]["size"] = 0
    document["services"]["web"]["allow_debugg"] = True
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document))
    good = tmp_path / "good.yaml"
    good.write_text(pg.policy_text(owner))
    assert cli(["policy", "validate", str(good), str(broken)]) == 1
    captured = capsys.readouterr()
    assert f"{good}: valid" in captured.out
    lines = captured.err.splitlines()
    assert lines[0] == f"error: {broken}: 4 problem(s):"
    fields = sorted(line.split(":")[0].strip() for line in lines[1:])
    assert fields == [
        "secrets.api_token.size",
        "secrets.db_password.kind",
        "services.web",
        "services.web.identities[0].mrenclave",
    ]
    assert cli(["policy", "validate", "--json", str(broken)]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert not result["valid"] and len(result["problems"]) == 4
    assert cli(["policy", "validate", str(good)]) == 0
    assert cli(["policy", "validate", str(tmp_path / "missing.yaml")]) == 2


@pytest.fixture
def cas_home(tmp_path: Path):  # type: ignore[no-untyped-def]
    assert cli(["cas", "init", str(tmp_path / "cas"), "--loopback-tls"]) == 0
    home = tmp_path / "cas"
    settings = load_settings(home / "cas.yaml", environ={})
    service = build_service(settings)
    tls = TlsFiles(home / "tls" / "ca.pem", settings.tls_cert, settings.tls_key)  # type: ignore[arg-type]
    with background_https(build_app(settings, service), tls) as url:
        yield url, tls, home
    service.stop()


def test_keygen_then_apply_then_attest_and_piped_output_is_whole(
    cas_home, tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    url, tls, home = cas_home
    key_file = tmp_path / "owner.pem"
    assert cli(["owner", "keygen", "--out", str(key_file)]) == 0
    capsys.readouterr()
    public = (tmp_path / "owner.pub.pem").read_text()
    document = yaml.safe_load(pg.policy_text(pg.owner_key()))
    document["access"]["owners"][0]["public_key"] = public  # an Ed25519 owner
    policy_file = tmp_path / "shop.yaml"
    policy_file.write_text(yaml.safe_dump(document))
    # Options after the subcommand, URL and CA from the environment.
    monkeypatch.setenv("SGXCLOUD_CAS_URL", url)
    monkeypatch.setenv("SGXCLOUD_CAS_CA", str(tls.ca_cert))
    assert cli(["policy", "apply", str(policy_file), "--key", str(key_file)]) == 0
    applied = capsys.readouterr().out  # captured: not a terminal, so nothing is cropped
    assert "…" not in applied
    (full_hash,) = HEX64.findall(applied)
    assert cli(["policy", "show", "shop", "--key", str(key_file)]) == 0
    shown = capsys.readouterr().out
    assert full_hash in shown and pg.MRENCLAVE in shown and "…" not in shown
    # A stale update: the 409 names the full current hash.
    document["description"] = "again"
    document["predecessor"] = "00" * 32
    policy_file.write_text(yaml.safe_dump(document))
    assert cli(["policy", "apply", str(policy_file), "--key", str(key_file)]) == 1
    assert full_hash in capsys.readouterr().err
    # The owner's key identifies the same principal whichever option order.
    assert cli(["policy", "owner-id", "--key", str(key_file)]) == 0
    assert capsys.readouterr().out.strip() == public_key_id(public)
    # An enclave of that policy attests and gets its configuration.
    fetched = client.fetch_configuration(
        url,
        policy="shop",
        service="web",
        ca_file=tls.ca_cert,
        root=tmp_path,
        simulate=pg.simulated_identity(),
    )
    assert fetched.policy_hash == full_hash
    # audit show follows SGXCLOUD_CAS_URL (it used to look for a local database)...
    assert cli(["audit", "show", "--key", str(key_file), "--json"]) == 0
    kinds = [e["kind"] for e in json.loads(capsys.readouterr().out)]
    assert kinds[:1] == ["policy.apply"] and "attestation" in kinds
    # ...unless the operator names a database on the command line.
    assert cli(["audit", "show", "--config", str(home / "cas.yaml")]) == 0
    table = capsys.readouterr().out
    assert pg.MRENCLAVE in table and full_hash in table
