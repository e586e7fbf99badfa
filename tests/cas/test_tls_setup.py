"""Production TLS for the CAS: a CSR for the operator's CA, or operator-provided files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas.client import pinned_tls
from sgxcloud.cas.config import load_settings
from sgxcloud.cas.service.server import TlsFiles, background_https, build_app, build_service
from sgxcloud.cas.tls import TlsSetupError, check_server_tls
from sgxcloud.cli.main import main as cli


def _operator_ca(tmp_path: Path):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=Example operator CA")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "cas-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _sign(csr: x509.CertificateSigningRequest, ca_key, ca_cert, days: int = 5):  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    end = now + dt.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, end) - dt.timedelta(days=2))
        .not_valid_after(end)
    )
    for extension in csr.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(ca_key, hashes.SHA256())


def test_csr_flow_serves_https_that_enclaves_pinning_the_operator_ca_accept(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "cas"
    assert cli(["cas", "init", str(home), "--tls-csr", "localhost", "--tls-csr", "127.0.0.1"]) == 0
    assert "have your CA sign" in capsys.readouterr().out
    assert (home / "tls/server.key").stat().st_mode & 0o777 == 0o600
    csr = x509.load_pem_x509_csr((home / "tls/server.csr").read_bytes())
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    # Not signed yet: serve refuses with one line, before touching anything.
    assert cli(["cas", "serve", "--config", str(home / "cas.yaml")]) == 2
    assert "have your CA sign the CSR" in capsys.readouterr().err
    ca_key, ca_cert, ca_file = _operator_ca(tmp_path)
    (home / "tls/server.pem").write_bytes(
        _sign(csr, ca_key, ca_cert).public_bytes(serialization.Encoding.PEM)
    )
    settings = load_settings(home / "cas.yaml", environ={})
    warnings = check_server_tls(settings.tls_cert, settings.tls_key)  # type: ignore[arg-type]
    assert warnings and "expires in" in warnings[0]  # 5 days: renewal is due
    service = build_service(settings)
    tls = TlsFiles(ca_file, settings.tls_cert, settings.tls_key)  # type: ignore[arg-type]
    try:
        with (
            background_https(build_app(settings, service), tls) as url,
            httpx.Client(verify=pinned_tls(ca_file)) as http,
        ):
            assert http.get(url + "/v1/health/ready").json()["ok"] is True
    finally:
        service.stop()


def test_operator_files_are_checked_before_anything_is_created(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ca_key, ca_cert, _ = _operator_ca(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=cas.example"))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file, other_key = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "o.pem"
    cert_file.write_bytes(
        _sign(csr, ca_key, ca_cert, days=90).public_bytes(serialization.Encoding.PEM)
    )
    for path, k in ((key_file, key), (other_key, ec.generate_private_key(ec.SECP256R1()))):
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    bad = tmp_path / "bad"
    assert (
        cli(["cas", "init", str(bad), "--tls-cert", str(cert_file), "--tls-key", str(other_key)])
        == 2
    )
    assert "is not the key of the certificate" in capsys.readouterr().err
    assert not bad.exists()
    good = tmp_path / "good"
    assert (
        cli(["cas", "init", str(good), "--tls-cert", str(cert_file), "--tls-key", str(key_file)])
        == 0
    )
    settings = load_settings(good / "cas.yaml", environ={})
    assert settings.tls_cert == cert_file.resolve()
    assert check_server_tls(cert_file, key_file) == []
    expired = tmp_path / "expired.pem"
    expired.write_bytes(
        _sign(csr, ca_key, ca_cert, days=-1).public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(TlsSetupError, match="expired"):
        check_server_tls(expired, key_file)
    assert cli(["cas", "init", str(tmp_path / "x"), "--loopback-tls", "--tls-csr", "h"]) == 2
