"""Attest-and-fetch: binding, nonces, sealing, every rejection, and the happy path over HTTPS."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from sgxcloud.cas import audit, client, protocol, secrets
from sgxcloud.cas.client import launcher
from sgxcloud.cas.collateral import FileCollateral
from sgxcloud.cas.evidence import DefaultVerifier, make_simulated_evidence
from sgxcloud.cas.policy import load_policy
from sgxcloud.cas.service import auth
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.core import AttestationRejected, AttestRequest, CasService
from sgxcloud.cas.service.server import background_https, make_loopback_tls
from sgxcloud.cas.store import Database

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

NOW = pg.CLOCK
DCAP = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "dcap"
REAL_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
REAL_NOW = 1752919277  # inside the sample collateral's validity window (testdata README)


# -- primitives ---------------------------------------------------------------


def test_binding_accepts_only_this_key_and_nonce() -> None:
    key, other = protocol.new_enclave_key(), protocol.new_enclave_key()
    nonce = protocol.new_nonce()
    report_data = protocol.report_data_for(key.public_key(), nonce)
    assert len(report_data) == 64 and report_data[32:] == bytes(32)
    protocol.check_binding(report_data, key.public_key(), nonce)
    with pytest.raises(protocol.BindingError):
        protocol.check_binding(report_data, other.public_key(), nonce)
    with pytest.raises(protocol.BindingError):
        protocol.check_binding(report_data, key.public_key(), protocol.new_nonce())


def test_sealed_configuration_opens_only_with_the_key_and_nonce() -> None:
    key, other = protocol.new_enclave_key(), protocol.new_enclave_key()
    nonce = protocol.new_nonce()
    config = protocol.Configuration(["app", "--x"], {"A": "b"}, {"/k": b"\x00\xff"})
    sealed = protocol.seal_configuration(config, key.public_key(), nonce)
    assert b"--x" not in sealed
    assert protocol.open_configuration(sealed, key, nonce) == config
    with pytest.raises(protocol.ProtocolError):
        protocol.open_configuration(sealed, other, nonce)
    with pytest.raises(protocol.ProtocolError):
        protocol.open_configuration(sealed, key, protocol.new_nonce())
    with pytest.raises(protocol.ProtocolError):
        protocol.open_configuration(sealed[:-1] + bytes([sealed[-1] ^ 1]), key, nonce)


def test_only_p256_keys_and_well_formed_nonces() -> None:
    from cryptography.hazmat.primitives import serialization

    p384 = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(protocol.ProtocolError, match="P-256"):
        protocol.load_enclave_public_key(p384)
    with pytest.raises(protocol.ProtocolError):
        protocol.load_enclave_public_key(b"garbage")
    for bad in ["zz", "ab" * 31, ""]:
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_nonce(bad)


# -- the service's decisions --------------------------------------------------


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}", nonce_ttl=60)
    owner = pg.owner_key()
    service.apply_policy(_owner_id(owner), pg.policy_text(owner), NOW)
    hardware = pg.policy_text(owner, name="hw", allow_simulated=False)
    service.apply_policy(_owner_id(owner), hardware, NOW)
    yield service
    service.stop()


def _owner_id(key) -> str:  # type: ignore[no-untyped-def]
    from sgxcloud.cas.policy import public_key_id

    return public_key_id(pg.public_pem(key))


def _request(
    service: CasService,
    *,
    policy="shop",
    identity=None,
    key=None,
    bind_key=None,
    nonce: str | None = None,
    now: int = NOW,
) -> tuple[AttestRequest, ec.EllipticCurvePrivateKey]:
    key = key or protocol.new_enclave_key()
    nonce = nonce or service.issue_nonce(now).nonce
    bound = (bind_key or key).public_key()
    evidence = make_simulated_evidence(
        identity or pg.simulated_identity(), protocol.report_data_for(bound, bytes.fromhex(nonce))
    )
    return AttestRequest(
        policy, "web", nonce, pg.public_pem(key), base64.b64encode(evidence.raw).decode()
    ), key


def _rejected(service: CasService, request: AttestRequest, now: int = NOW) -> AttestationRejected:
    with pytest.raises(AttestationRejected) as info:
        service.attest(request, now)
    entry = audit.entries(service.database)[info.value.audit_seq - 1]
    assert entry.outcome == "rejected" and entry.detail["reasons"] == info.value.reasons
    return info.value


def test_accepted_simulated_attestation_is_labelled(service: CasService) -> None:
    request, key = _request(service)
    result = service.attest(request, NOW + 1)
    assert result.simulated and result.tcb_status == "Simulated"
    config = protocol.open_configuration(
        result.sealed_configuration, key, bytes.fromhex(request.nonce)
    )
    assert config.argv[:2] == ["/usr/bin/python3", "app.py"]
    assert len(config.files["/dev/attestation/keys/data"]) == 16
    entry = audit.entries(service.database)[result.audit_seq - 1]
    assert entry.outcome == "accepted" and entry.detail["simulated"] is True


def test_replayed_nonce_is_rejected(service: CasService) -> None:
    request, _ = _request(service)
    service.attest(request, NOW + 1)
    rejected = _rejected(service, request, NOW + 2)
    assert rejected.code == "nonce" and "already used" in rejected.reasons[0]


def test_expired_nonce_is_rejected(service: CasService) -> None:
    request, _ = _request(service)
    rejected = _rejected(service, request, NOW + 61)
    assert rejected.reasons == ["nonce expired"]


def test_unissued_nonce_is_rejected(service: CasService) -> None:
    request, _ = _request(service, nonce="ee" * 32)
    assert _rejected(service, request).reasons == ["nonce was not issued by this service"]


def test_report_data_not_bound_to_the_key_is_rejected(service: CasService) -> None:
    request, _ = _request(service, bind_key=protocol.new_enclave_key())
    rejected = _rejected(service, request)
    assert rejected.code == "binding"
    assert rejected.reasons == ["REPORTDATA is not bound to this public key and nonce"]


def test_simulated_evidence_under_hardware_only_policy_is_rejected(service: CasService) -> None:
    request, _ = _request(service, policy="hw")
    rejected = _rejected(service, request)
    assert len(rejected.reasons) == 1 and "simulated evidence" in rejected.reasons[0]


def test_wrong_mrenclave_and_debug_are_rejected_with_every_reason(service: CasService) -> None:
    request, _ = _request(service, identity=pg.simulated_identity("ef" * 32, debug=True))
    reasons = _rejected(service, request).reasons
    assert any("MRENCLAVE" in r for r in reasons), reasons
    assert any("debug" in r for r in reasons), reasons


def test_unknown_policy_or_service(service: CasService) -> None:
    request, _ = _request(service, policy="nope")
    assert "no policy named 'nope'" in _rejected(service, request).reasons


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("evidence", "%%%", "evidence must be base64"),
        ("evidence", base64.b64encode(b"garbage").decode(), "not a DCAP quote"),
        ("public_key", "-----BEGIN PUBLIC KEY-----\nnope\n", "public_key is not a valid"),
        ("nonce", "zz", "nonce must be hex"),
    ],
)
def test_malformed_requests_are_audited_and_spend_their_nonce(
    service: CasService, field: str, value: str, message: str
) -> None:
    """Review finding 5: rejected before judging is still a decision on the record."""
    from dataclasses import replace

    from sgxcloud.cas.service.core import MalformedAttestation

    request, _ = _request(service)
    before = len(audit.entries(service.database))
    with pytest.raises(MalformedAttestation, match=message) as info:
        service.attest(replace(request, **{field: value}), NOW)
    entries = audit.entries(service.database)
    assert len(entries) == before + 1 and info.value.audit_seq == entries[-1].seq
    entry = entries[-1]
    assert entry.outcome == "rejected" and entry.subject == "shop/web"
    assert entry.detail["malformed"] is True and message in entry.detail["reasons"][0]
    recorded = str(entry.to_dict())  # no raw input copied into the log
    assert request.evidence not in recorded and request.nonce not in recorded
    assert field == "nonce" or value not in recorded
    if field != "nonce":  # a well-formed nonce was spent: the good request cannot follow
        rejected = _rejected(service, request)
        assert rejected.code == "nonce" and "already used" in rejected.reasons[0]
    assert audit.verify_chain(service.database).ok


def test_real_dcap_quote_not_bound_to_our_key_is_rejected(tmp_path: Path) -> None:
    """A genuine Intel-signed quote verifies, but its REPORTDATA ("Hello, world!") binds nothing."""
    verifier = DefaultVerifier(FileCollateral(DCAP / "sgx_quote_collateral.json"))
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    service = CasService(Database.open(f"sqlite:///{tmp_path / 'd.db'}"), keyring, verifier)
    service.start()
    owner = pg.owner_key()
    text = pg.policy_text(owner, mrenclave=REAL_MRENCLAVE, allow_simulated=False).replace(
        "allow_simulated: false",
        "allow_simulated: false\n"
        "    tolerated_tcb_statuses: [UpToDate, ConfigurationAndSWHardeningNeeded]\n"
        "    tolerated_advisories: [INTEL-SA-00289, INTEL-SA-00615]",
    )
    assert load_policy(text).services["web"].tolerated_advisories
    service.apply_policy(_owner_id(owner), text, REAL_NOW)
    # The enclave side reads the quote from a Gramine-like tree.
    root = tmp_path / "root"
    (root / "dev/attestation").mkdir(parents=True)
    (root / "dev/attestation/user_report_data").write_bytes(b"")
    (root / "dev/attestation/quote").write_bytes((DCAP / "sgx_quote").read_bytes())
    source = client.choose_evidence_source(root)
    assert isinstance(source, client.GramineEvidence)
    key = protocol.new_enclave_key()
    nonce = service.issue_nonce(REAL_NOW).nonce
    report_data = protocol.report_data_for(key.public_key(), bytes.fromhex(nonce))
    quote = source.evidence(report_data)
    assert (root / "dev/attestation/user_report_data").read_bytes() == report_data
    request = AttestRequest(
        "shop", "web", nonce, pg.public_pem(key), base64.b64encode(quote).decode()
    )
    rejected = _rejected(service, request, REAL_NOW)
    assert rejected.reasons == ["REPORTDATA is not bound to this public key and nonce"]
    entry = audit.entries(service.database)[-1]
    assert entry.detail["mrenclave"] == REAL_MRENCLAVE and entry.detail["simulated"] is False
    assert entry.detail["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    # A flipped byte in the signed report body: the signature check refuses it.
    tampered = bytearray(quote)
    tampered[120] ^= 1
    nonce = service.issue_nonce(REAL_NOW).nonce
    request = AttestRequest(
        "shop", "web", nonce, pg.public_pem(key), base64.b64encode(bytes(tampered)).decode()
    )
    assert _rejected(service, request, REAL_NOW).code != "policy"
    service.stop()


def test_no_evidence_source_without_gramine_unless_simulation_is_asked(tmp_path: Path) -> None:
    with pytest.raises(client.NoEvidenceSource, match="simulation was not requested"):
        client.choose_evidence_source(tmp_path)
    assert isinstance(
        client.choose_evidence_source(tmp_path, pg.simulated_identity()), client.SimulatedEvidence
    )


# -- the happy path over real HTTPS on loopback -------------------------------


@pytest.fixture
def https_cas_with_owner(tmp_path: Path):  # type: ignore[no-untyped-def]
    """(url, tls files, owner key) of a CAS over HTTPS on loopback with policy 'shop'."""
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    owner = pg.owner_key()
    import time

    service.apply_policy(_owner_id(owner), pg.policy_text(owner), int(time.time()))
    tls = make_loopback_tls(tmp_path / "tls")
    with background_https(create_app(service), tls) as url:
        yield url, tls, owner
    service.stop()


@pytest.fixture
def https_cas(https_cas_with_owner):  # type: ignore[no-untyped-def]
    url, tls, _owner = https_cas_with_owner
    return url, tls


def test_happy_path_over_https(https_cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, tls = https_cas
    fetched = client.fetch_configuration(
        url,
        policy="shop",
        service="web",
        ca_file=tls.ca_cert,
        root=tmp_path,
        simulate=pg.simulated_identity(),
    )
    assert fetched.simulated and fetched.tcb_status == "Simulated"
    config = fetched.configuration
    assert config.env["MODE"] == "prod" and len(base64.b64decode(config.env["API_TOKEN"])) == 32
    assert config.argv[2].startswith("--db-password=") and len(config.argv[2]) == 14 + 48
    chain = config.files["/etc/app/tls.crt"].decode()
    leaf = x509.load_pem_x509_certificate(chain.encode())
    assert leaf.subject.rfc4514_string() == "CN=web.shop.example"
    # Both certificates (the service's TLS cert from the policy, and the one
    # issued for the enclave key) chain to the same per-policy CA.
    leaf.verify_directly_issued_by(fetched.ca_certificate)
    fetched.certificate.verify_directly_issued_by(fetched.ca_certificate)
    assert fetched.certificate.public_key() == fetched.private_key.public_key()


def test_client_refuses_a_service_not_signed_by_the_pinned_ca(https_cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = https_cas
    other = make_loopback_tls(tmp_path / "other")
    with pytest.raises(client.ClientError, match="cannot reach"):
        client.fetch_configuration(
            url,
            policy="shop",
            service="web",
            ca_file=other.ca_cert,
            root=tmp_path,
            simulate=pg.simulated_identity(),
        )


class _Tampering:
    """A CAS gone wrong: a real connection whose attest answers pass through ``change``."""

    def __init__(self, connection: client.CasConnection, change, request=None) -> None:  # type: ignore[no-untyped-def]
        self.connection, self.change, self.request = connection, change, request
        self.base_url = connection.base_url

    def post_json(self, path: str, body=None) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
        import json

        if path == "/v1/attest" and self.request is not None:
            body = dict(body)
            self.request(body)
        status, content = self.connection.post_json(path, body)
        if path == "/v1/attest" and status == 200:
            answer = json.loads(content)
            self.change(answer)
            content = json.dumps(answer).encode()
        return status, content

    def close(self) -> None:
        self.connection.close()


def test_the_enclave_checks_the_certificates_of_every_answer(https_cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The policy CA is parsed once and kept; each certificate issued is still checked
    against it, and a CA that does not parse is refused however often it comes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    url, tls = https_cas
    forger = ec.generate_private_key(ec.SECP256R1())

    def fetch(connection):  # type: ignore[no-untyped-def]
        return client.fetch_configuration(
            url,
            policy="shop",
            service="web",
            root=tmp_path,
            simulate=pg.simulated_identity(),
            connection=connection,
        )

    def forged(answer: dict) -> None:  # same names, same key, signed by another key
        issued = x509.load_pem_x509_certificate(answer["certificate"].encode())
        builder = (
            x509.CertificateBuilder()
            .subject_name(issued.subject)
            .issuer_name(issued.issuer)
            .public_key(issued.public_key())
            .serial_number(issued.serial_number)
            .not_valid_before(issued.not_valid_before_utc)
            .not_valid_after(issued.not_valid_after_utc)
        )
        answer["certificate"] = (
            builder.sign(forger, hashes.SHA256()).public_bytes(Encoding.PEM).decode()
        )

    with client.CasConnection(url, tls.ca_cert) as connection:
        first = fetch(connection)  # its CA is now known
        earlier = first.certificate.public_bytes(Encoding.PEM).decode()
        refusals = [
            (forged, "not issued by the CA returned"),
            (lambda answer: answer.update(certificate=earlier), "not for this enclave's key"),
            (
                lambda answer: answer.update(
                    ca_certificate="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                ),
                "malformed certificate",
            ),
        ]
        for change, refusal in refusals * 2:
            with pytest.raises(client.ClientError, match=refusal):
                fetch(_Tampering(connection, change))
        again = fetch(connection)
    assert again.ca_certificate == first.ca_certificate
    again.certificate.verify_directly_issued_by(again.ca_certificate)


def test_the_enclave_refuses_an_answer_for_another_service_or_with_unsealed_parts_changed(
    tmp_path: Path,
) -> None:
    """Red team rt9 F5: whoever can change the request on its way (a TLS-terminating
    proxy) rewrote service 'web' to 'admin' and the enclave installed admin's
    configuration; the sealed answer now names the service and binds the parts
    of the answer outside the seal, and the client compares them."""
    import time

    import yaml
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    owner = pg.owner_key()
    document = yaml.safe_load(pg.policy_text(owner))
    document["services"]["admin"] = {  # one runtime image, its role chosen by the configuration
        "identities": [{"mrenclave": pg.MRENCLAVE}],
        "allow_simulated": True,
        "command": ["/usr/bin/python3", "admin.py", "--drop-all-tables"],
    }
    service.apply_policy(_owner_id(owner), yaml.safe_dump(document), int(time.time()))
    tls = make_loopback_tls(tmp_path / "tls")
    forger = ec.generate_private_key(ec.SECP256R1())

    def own_ca(answer: dict) -> None:  # another CA, and a certificate from it for this key
        issued = x509.load_pem_x509_certificate(answer["certificate"].encode())
        ca = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
        fake_ca = (
            x509.CertificateBuilder()
            .subject_name(ca.subject)
            .issuer_name(ca.subject)
            .public_key(forger.public_key())
            .serial_number(ca.serial_number)
            .not_valid_before(ca.not_valid_before_utc)
            .not_valid_after(ca.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(forger, hashes.SHA256())
        )
        fake = (
            x509.CertificateBuilder()
            .subject_name(issued.subject)
            .issuer_name(ca.subject)
            .public_key(issued.public_key())
            .serial_number(issued.serial_number)
            .not_valid_before(issued.not_valid_before_utc)
            .not_valid_after(issued.not_valid_after_utc)
            .sign(forger, hashes.SHA256())
        )
        answer["certificate"] = fake.public_bytes(Encoding.PEM).decode()
        answer["ca_certificate"] = fake_ca.public_bytes(Encoding.PEM).decode()

    def fetch(connection):  # type: ignore[no-untyped-def]
        return client.fetch_configuration(
            "https://unused",
            policy="shop",
            service="web",
            root=tmp_path,
            simulate=pg.simulated_identity(),
            connection=connection,
            policy_owners=[_owner_id(owner)],
        )

    def unchanged(answer: dict) -> None:
        pass

    with (
        background_https(create_app(service), tls) as url,
        client.CasConnection(url, tls.ca_cert) as connection,
    ):
        with pytest.raises(client.UntrustedConfiguration) as refused:
            fetch(_Tampering(connection, unchanged, lambda r: r.update(service="admin")))
        assert "answered for 'shop'/'admin', not 'shop'/'web'" in str(refused.value)
        for change, named in [
            (own_ca, "ca_certificate_sha256, certificate_sha256"),
            (lambda answer: answer.update(simulated=False), "simulated"),
            (lambda answer: answer.update(tcb_status="UpToDate"), "tcb_status"),
            (lambda answer: answer.update(policy_hash="00" * 32), "policy_hash"),
        ]:
            with pytest.raises(client.UntrustedConfiguration, match=f"\\({named}: changed"):
                fetch(_Tampering(connection, change))
        fetched = fetch(connection)
    service.stop()
    assert fetched.configuration.argv[1] == "app.py"
    assert fetched.configuration.answer["service"] == "web"


def test_a_gramine_tree_is_looked_for_at_every_fetch(tmp_path: Path) -> None:
    """Where the pseudo-files are is worked out once per root; whether they are there, each time."""
    identity = pg.simulated_identity()
    assert isinstance(client.choose_evidence_source(tmp_path, identity), client.SimulatedEvidence)
    attestation = tmp_path / "dev/attestation"
    attestation.mkdir(parents=True)
    (attestation / "user_report_data").write_bytes(bytes(64))
    (attestation / "quote").write_bytes(b"quote")
    (attestation / "attestation_type").write_text("dcap\n")
    assert isinstance(client.choose_evidence_source(tmp_path, identity), client.GramineEvidence)
    (attestation / "attestation_type").write_text("none\n")
    with pytest.raises(client.NoEvidenceSource, match="remote_attestation"):
        client.choose_evidence_source(tmp_path, identity)
    (attestation / "quote").unlink()
    assert isinstance(client.choose_evidence_source(tmp_path, identity), client.SimulatedEvidence)


def test_rejection_over_https_tells_the_enclave_nothing_but_the_audit_entry(
    https_cas_with_owner, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Review finding 3: reasons go to the owners' audit log, not to whoever asks."""
    import json

    from sgxcloud.cli.main import main as cli

    url, tls, owner = https_cas_with_owner

    def refused(**where):  # type: ignore[no-untyped-def]
        with pytest.raises(client.AttestationRefused) as info:
            client.fetch_configuration(
                url, ca_file=tls.ca_cert, root=tmp_path, **{"service": "web", **where}
            )
        return info.value

    wrong_build = refused(policy="shop", simulate=pg.simulated_identity("00" * 32))
    no_policy = refused(policy="nope", simulate=pg.simulated_identity())
    no_service = refused(policy="shop", service="db", simulate=pg.simulated_identity())
    told = [
        (e.code, str(e).removesuffix(e.audit_ref or "?"))
        for e in (wrong_build, no_policy, no_service)
    ]
    assert (
        told
        == [("rejected", "attestation rejected; the policy's owners can read why in audit entry ")]
        * 3
    )
    assert "MRENCLAVE" not in str(wrong_build) and "nope" not in str(no_policy)
    # The owner reads the reasons of the rejection of their policy, and only theirs.
    key_file = tmp_path / "owner.pem"
    key_file.write_bytes(pg.private_pem(owner))
    owner_args = [
        "audit",
        "show",
        "--url",
        url,
        "--key",
        str(key_file),
        "--ca-file",
        str(tls.ca_cert),
    ]
    assert cli([*owner_args, "--ref", wrong_build.audit_ref, "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["outcome"] == "rejected" and entry["subject"] == "shop/web"
    assert any("MRENCLAVE" in r for r in entry["detail"]["reasons"])
    assert cli([*owner_args, "--ref", no_policy.audit_ref]) == 1  # not about their policy
    assert "not about your policies" in capsys.readouterr().err
    plain = httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca_cert)))
    assert plain.get(url + "/v1/health").json()["state"] == "ready"
    plain.close()


# -- the launcher a Gramine manifest starts -----------------------------------


def test_launcher_installs_files_and_environment_then_runs_the_python_command(
    https_cas, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    url, tls = https_cas
    fetched = client.fetch_configuration(
        url,
        policy="shop",
        service="web",
        ca_file=tls.ca_cert,
        root=tmp_path,
        simulate=pg.simulated_identity(),
    )
    root = tmp_path / "enclave"
    (root / "dev/attestation/keys").mkdir(parents=True)
    monkeypatch.setattr(launcher.os, "environ", dict(launcher.os.environ))
    client.install(fetched, root)
    key_file = root / "etc/app/tls.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len((root / "dev/attestation/keys/data").read_bytes()) == 16
    assert launcher.os.environ["MODE"] == "prod"
    script = tmp_path / "app.py"
    marker = tmp_path / "ran.txt"
    script.write_text(
        "import os, sys\n"
        f"open({str(marker)!r}, 'w').write(os.environ['MODE'] + ' ' + ' '.join(sys.argv[1:]))\n"
    )
    monkeypatch.setattr(launcher.sys, "argv", list(launcher.sys.argv))
    assert client.run_argv(["/usr/bin/python3", str(script), "--flag"]) == 0
    assert marker.read_text() == "prod --flag"


def test_a_squatted_policy_name_configures_no_pinned_enclave(
    https_cas_with_owner, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """Red-team a09: Mallory created 'shop' first, with the victim's public MRENCLAVE.

    The CAS seals the policy's signed owners into the answer; the launcher,
    pinned to the victim's id, installs nothing and runs nothing.
    """
    from tests.cas.fake_gramine import FakeAttestationDevice

    url, tls, mallory = https_cas_with_owner  # 'shop' is Mallory's (she signed it)
    victim_id = _owner_id(pg.owner_key())
    mallory_id = _owner_id(mallory)
    with pytest.raises(client.UntrustedConfiguration, match="not signed by a pinned owner"):
        client.fetch_configuration(
            url,
            policy="shop",
            service="web",
            ca_file=tls.ca_cert,
            root=tmp_path,
            simulate=pg.simulated_identity(),
            policy_owners=[victim_id],
        )
    root = tmp_path / "enclave"
    settings = [
        "launch",
        "--url",
        url,
        "--policy",
        "shop",
        "--service",
        "web",
        "--ca-file",
        str(tls.ca_cert),
        "--root",
        str(root),
        "--attempts",
        "1",
    ]
    with FakeAttestationDevice(root, pg.simulated_identity()):
        assert client.main([*settings, "--policy-owner", victim_id]) == 1
        err = capsys.readouterr().err
        assert "not signed by a pinned owner" in err and "Traceback" not in err
        assert not (root / "etc").exists()  # nothing installed
        # The pin is mandatory: without one (and without --no-owner-pin) nothing runs.
        assert client.main(settings) == 2
        assert "SGXCLOUD_CAS_POLICY_OWNERS" in capsys.readouterr().err
    # The real owner's pin (one of several suffices) and the exact hash are accepted.
    fetched = client.fetch_configuration(
        url,
        policy="shop",
        service="web",
        ca_file=tls.ca_cert,
        root=tmp_path,
        simulate=pg.simulated_identity(),
        policy_owners=[victim_id, mallory_id],
    )
    assert fetched.configuration.policy_owners == (mallory_id,)
    assert fetched.configuration.policy_hash == fetched.policy_hash
    with pytest.raises(client.UntrustedConfiguration, match="not the pinned"):
        client.fetch_configuration(
            url,
            policy="shop",
            service="web",
            ca_file=tls.ca_cert,
            root=tmp_path,
            simulate=pg.simulated_identity(),
            policy_owners=[mallory_id],
            policy_hash="00" * 32,
        )


def test_launcher_needs_its_settings(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(client.ClientError, match="SGXCLOUD_CAS_URL"):
        client.launch(environ={})
    assert client.main(["nonsense"]) == 2
    assert "usage" in capsys.readouterr().err


# -- parsers never crash on hostile input -------------------------------------

_FUZZ_KEY = protocol.new_enclave_key()


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=300), nonce=st.binary(min_size=32, max_size=32))
def test_random_ciphertexts_are_clean_rejections(blob: bytes, nonce: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.open_configuration(blob, _FUZZ_KEY, nonce)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_configuration_documents_are_clean_rejections(data: bytes) -> None:
    try:
        config = protocol.Configuration.from_bytes(data)
    except protocol.ProtocolError:
        return
    assert isinstance(config.argv, list)


AUD = "https://cas.test:443"
DEPLOYMENT = "ab" * 16


@settings(max_examples=200, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                auth.DATE_HEADER,
                auth.SIGNATURE_HEADER,
                auth.KEY_HEADER,
                auth.CERT_HEADER,
                auth.AUDIENCE_HEADER,
                auth.REQUEST_ID_HEADER,
                auth.DEPLOYMENT_HEADER,
            ]
        ),
        st.one_of(
            st.text(max_size=60),
            st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()),
            st.just(AUD),
            st.just("ab" * 16),
            st.just(DEPLOYMENT),
            st.just(str(NOW)),
        ),
    )
)
def test_random_signature_headers_never_authenticate(headers: dict) -> None:
    with pytest.raises(auth.AuthenticationError):
        auth.authenticate(
            headers,
            "GET",
            "/v1/audit",
            b"",
            now=NOW,
            max_skew=300,
            audiences=frozenset({AUD}),
            deployment=DEPLOYMENT,
        )
