"""Issue 9 finding 6: an owner certificate authenticates only while valid, chained and unrevoked.

A policy names a certificate owner by the certificate's SHA-256.  Over the
real HTTPS service on loopback, configured as an operator configures it
(``cas init``, ``owner_ca_file``, ``owner_crl_files``): an expired
self-signed certificate, a certificate outside the configured owner CA, and
a revoked one (by request signature and by mutual TLS) authenticate no one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sgxcloud.cas import client, secrets
from sgxcloud.cas.config import load_settings
from sgxcloud.cas.errors import AccessDenied
from sgxcloud.cas.service.server import TlsFiles, background_https, build_app, build_service
from sgxcloud.cli.main import main as cli

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

NOW = dt.datetime.now(dt.UTC)


def self_signed(key: Any, *, not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )


def policy_for(certificate: x509.Certificate) -> str:
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    document = yaml.safe_load(pg.policy_text(pg.owner_key()))
    document["access"]["owners"] = [{"name": "owner", "client_certificate_sha256": fingerprint}]
    return yaml.safe_dump(document)


def crl_of(ca: secrets.CertificateAuthority, revoked: list[x509.Certificate], *, next_update):  # type: ignore[no-untyped-def]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(NOW - dt.timedelta(hours=1))
        .next_update(next_update)
    )
    for certificate in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(certificate.serial_number)
            .revocation_date(NOW - dt.timedelta(minutes=5))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


class Cas:
    def __init__(self, home: Path, environ: dict[str, str]) -> None:
        self.settings = load_settings(home / "cas.yaml", environ=environ)
        cert, key = self.settings.tls_cert, self.settings.tls_key
        self.tls = TlsFiles(home / "tls" / "ca.pem", cert, key)  # type: ignore[arg-type]

    def serve(self):  # type: ignore[no-untyped-def]
        service = build_service(self.settings)
        app = build_app(self.settings, service)
        return service, background_https(app, self.tls, owner_ca=self.settings.owner_ca_file)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert cli(["cas", "init", str(tmp_path / "cas"), "--loopback-tls"]) == 0
    return tmp_path / "cas"


def _apply(url: str, ca_file: Path, key: Any, certificate: x509.Certificate) -> dict:
    with client.OwnerClient(url, key, ca_file=ca_file, certificate=certificate) as owner:
        return owner.apply(policy_for(certificate))


def test_an_expired_self_signed_certificate_authenticates_no_one(home: Path) -> None:
    cas = Cas(home, {})
    key = secrets.new_private_key("ec-p256")
    expired = self_signed(
        key, not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=35)
    )
    current = self_signed(
        key, not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=30)
    )
    service, served = cas.serve()
    try:
        with served as url:
            with pytest.raises(AccessDenied, match="not valid now"):
                _apply(url, cas.tls.ca_cert, key, expired)
            # Without an owner CA, a current certificate is a pinned key: it works.
            assert _apply(url, cas.tls.ca_cert, key, current)["created"]
    finally:
        service.stop()


def test_with_an_owner_ca_only_its_certificates_authenticate(home: Path, tmp_path: Path) -> None:
    owners = secrets.make_ca("owners", NOW)
    (tmp_path / "owners.pem").write_bytes(owners.certificate_pem)
    cas = Cas(home, {"SGXCLOUD_CAS_OWNER_CA_FILE": str(tmp_path / "owners.pem")})
    key = secrets.new_private_key("ec-p256")
    outsider = self_signed(
        key, not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=30)
    )
    member = secrets.issue_certificate(owners, key.public_key(), common_name="alice", now=NOW)
    service, served = cas.serve()
    try:
        with served as url:
            with pytest.raises(AccessDenied, match="does not chain to the owner CA"):
                _apply(url, cas.tls.ca_cert, key, outsider)
            assert _apply(url, cas.tls.ca_cert, key, member)["created"]
    finally:
        service.stop()


def test_a_revoked_certificate_authenticates_no_one_by_signature_or_mutual_tls(
    home: Path, tmp_path: Path
) -> None:
    owners = secrets.make_ca("owners", NOW)
    (tmp_path / "owners.pem").write_bytes(owners.certificate_pem)
    key = secrets.new_private_key("ec-p256")
    alice = secrets.issue_certificate(owners, key.public_key(), common_name="alice", now=NOW)
    (tmp_path / "alice.pem").write_bytes(alice.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "alice.key").write_bytes(pg.private_pem(key))
    crl = tmp_path / "owners.crl"
    crl.write_bytes(
        crl_of(owners, [], next_update=NOW + dt.timedelta(days=7)).public_bytes(
            serialization.Encoding.PEM
        )
    )
    cas = Cas(
        home,
        {
            "SGXCLOUD_CAS_OWNER_CA_FILE": str(tmp_path / "owners.pem"),
            "SGXCLOUD_CAS_OWNER_CRL_FILES": str(crl),
        },
    )
    service, served = cas.serve()

    def as_alice(url: str) -> client.OwnerClient:
        return client.OwnerClient(url, key, ca_file=cas.tls.ca_cert, certificate=alice)

    try:
        with served as url:
            assert _apply(url, cas.tls.ca_cert, key, alice)["created"]
            mutual = ssl.create_default_context(cafile=str(cas.tls.ca_cert))
            mutual.load_cert_chain(tmp_path / "alice.pem", tmp_path / "alice.key")
            with httpx.Client(base_url=url, verify=mutual) as http:
                assert http.get("/v1/policies/shop").status_code == 200
            # The owner CA revokes Alice's certificate: the new CRL is read at once.
            crl.write_bytes(
                crl_of(owners, [alice], next_update=NOW + dt.timedelta(days=7)).public_bytes(
                    serialization.Encoding.DER
                )
            )
            with as_alice(url) as owner, pytest.raises(AccessDenied, match="revoked"):
                owner.show("shop")
            with httpx.Client(base_url=url, verify=mutual) as http:
                answer = http.get("/v1/policies/shop")
                assert answer.status_code == 401 and "revoked" in answer.json()["message"]
            # A CRL past its next update stops certificate owners (fail closed).
            crl.write_bytes(
                crl_of(owners, [], next_update=NOW - dt.timedelta(minutes=1)).public_bytes(
                    serialization.Encoding.PEM
                )
            )
            with as_alice(url) as owner, pytest.raises(AccessDenied, match="out of date"):
                owner.show("shop")
    finally:
        service.stop()


def test_an_unreadable_owner_crl_stops_the_service_with_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "cas"
    assert cli(["cas", "init", str(home), "--loopback-tls"]) == 0
    (tmp_path / "bad.crl").write_text("not a CRL")
    with (home / "cas.yaml").open("a") as settings:
        settings.write(f"owner_crl_files: [{tmp_path / 'bad.crl'}]\n")
    capsys.readouterr()
    assert cli(["cas", "serve", "--config", str(home / "cas.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the owner CRL" in err and "Traceback" not in err


def _authority(
    name: str, issuer: secrets.CertificateAuthority | None = None
) -> secrets.CertificateAuthority:
    """A root (no ``issuer``) or an intermediate CA, as an organisation's PKI has them."""
    key = secrets.new_private_key("ec-p256")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer.key if issuer else key
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=300))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
        )
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    )
    return secrets.CertificateAuthority(key, certificate)


def _with_usage(key: Any, usage: x509.KeyUsage | None, eku: list | None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
    )
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_a_certificate_not_for_signing_or_client_auth_authenticates_no_one(home: Path) -> None:
    """Red team a05: KeyUsage without digitalSignature (or a serverAuth-only EKU) still
    signed requests and consents, though mutual TLS refused it; now every path refuses."""
    from cryptography.x509.oid import ExtendedKeyUsageOID as Eku

    from sgxcloud.cas.service.auth import AuthenticationError, OwnerCertificates

    key = secrets.new_private_key("ec-p256")
    cert_sign_only = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    signing = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    no_signing = _with_usage(key, cert_sign_only, None)
    server_only = _with_usage(key, signing, [Eku.SERVER_AUTH])
    good = _with_usage(key, signing, [Eku.CLIENT_AUTH])
    cas = Cas(home, {})
    service, served = cas.serve()
    try:
        with served as url:
            with pytest.raises(AccessDenied, match="digitalSignature"):
                _apply(url, cas.tls.ca_cert, key, no_signing)
            with pytest.raises(AccessDenied, match="clientAuth"):
                _apply(url, cas.tls.ca_cert, key, server_only)
            assert _apply(url, cas.tls.ca_cert, key, good)["created"]
    finally:
        service.stop()
    now = int(NOW.timestamp())
    for bad in (no_signing, server_only):  # the check consents and mutual TLS go through
        with pytest.raises(AuthenticationError):
            OwnerCertificates().check(bad, now)
    OwnerCertificates().check(_with_usage(key, None, [Eku.ANY_EXTENDED_KEY_USAGE]), now)


def test_with_crls_every_certificate_of_the_chain_needs_a_current_crl_of_its_issuer(
    home: Path, tmp_path: Path
) -> None:
    """Red team a05b: a leaf revoked by an intermediate was accepted when only the root's
    CRL was configured.  Intermediates in owner_ca_file are not trust anchors."""
    root = _authority("owners root")
    middle = _authority("owners team", root)
    (tmp_path / "owners.pem").write_bytes(root.certificate_pem + middle.certificate_pem)
    key = secrets.new_private_key("ec-p256")
    alice = secrets.issue_certificate(middle, key.public_key(), common_name="alice", now=NOW)
    root_crl, middle_crl = tmp_path / "root.crl", tmp_path / "middle.crl"

    def publish(path: Path, ca: secrets.CertificateAuthority, revoked: list) -> None:  # type: ignore[type-arg]
        path.write_bytes(
            crl_of(ca, revoked, next_update=NOW + dt.timedelta(days=7)).public_bytes(
                serialization.Encoding.PEM
            )
        )

    publish(root_crl, root, [])
    publish(middle_crl, middle, [alice])
    environ = {"SGXCLOUD_CAS_OWNER_CA_FILE": str(tmp_path / "owners.pem")}
    only_root = Cas(home, {**environ, "SGXCLOUD_CAS_OWNER_CRL_FILES": str(root_crl)})
    both = {**environ, "SGXCLOUD_CAS_OWNER_CRL_FILES": f"{root_crl}:{middle_crl}"}
    for cas, expected in (
        (only_root, "no current owner CRL of CN=owners team"),
        (Cas(home, both), "revoked"),
    ):
        service, served = cas.serve()
        try:
            with served as url, pytest.raises(AccessDenied, match=expected):
                _apply(url, cas.tls.ca_cert, key, alice)
        finally:
            service.stop()
    # Alice's certificate is good again; then the root revokes the intermediate itself.
    publish(middle_crl, middle, [])
    cas = Cas(home, both)
    service, served = cas.serve()
    try:
        with served as url:
            assert _apply(url, cas.tls.ca_cert, key, alice)["created"]
            publish(root_crl, root, [middle.certificate])
            as_alice = client.OwnerClient(url, key, ca_file=cas.tls.ca_cert, certificate=alice)
            with as_alice as owner, pytest.raises(AccessDenied, match=r"revoked.*owners team"):
                owner.show("shop")
    finally:
        service.stop()


def test_every_crl_of_an_issuer_counts_whatever_the_order(home: Path, tmp_path: Path) -> None:
    """Red team rt9 F8: with two current CRLs of the owner CA, the first listed decided,
    so a certificate revoked only by the newer one, listed second, still authenticated."""
    from sgxcloud.cas.service.auth import AuthenticationError, OwnerCertificates

    root = _authority("owners root")
    (tmp_path / "owners.pem").write_bytes(root.certificate_pem)
    key = secrets.new_private_key("ec-p256")
    alice = secrets.issue_certificate(root, key.public_key(), common_name="alice", now=NOW)
    older, newer = tmp_path / "2026-11.crl", tmp_path / "2026-12.crl"
    week = NOW + dt.timedelta(days=7)
    older.write_bytes(crl_of(root, [], next_update=week).public_bytes(serialization.Encoding.PEM))
    newer.write_bytes(
        crl_of(root, [alice], next_update=week).public_bytes(serialization.Encoding.PEM)
    )
    environ = {
        "SGXCLOUD_CAS_OWNER_CA_FILE": str(tmp_path / "owners.pem"),
        "SGXCLOUD_CAS_OWNER_CRL_FILES": f"{older}:{newer}",  # rolled by appending, dated
    }
    cas = Cas(home, environ)
    service, served = cas.serve()
    try:
        with served as url, pytest.raises(AccessDenied, match="revoked"):
            _apply(url, cas.tls.ca_cert, key, alice)
    finally:
        service.stop()
    now = int(NOW.timestamp())
    for order in ([older, newer], [newer, older]):
        with pytest.raises(AuthenticationError, match="revoked"):
            OwnerCertificates(tmp_path / "owners.pem", order).check(alice, now)
    # Not revoked by either: it authenticates; an out-of-date one among them stops it.
    newer.write_bytes(older.read_bytes())
    OwnerCertificates(tmp_path / "owners.pem", [older, newer]).check(alice, now)
    stale = crl_of(root, [], next_update=NOW - dt.timedelta(minutes=1))
    newer.write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AuthenticationError, match="out of date"):
        OwnerCertificates(tmp_path / "owners.pem", [older, newer]).check(alice, now)
