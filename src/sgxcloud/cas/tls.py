"""The CAS's own TLS in production: a key and CSR for the operator's CA, and checks.

Enclaves pin the CA that issued the CAS's certificate (``cas-ca.pem`` in
their measured files), never the system store.  ``sgxcloud cas init
--tls-csr HOST`` makes the key (0600) and a CSR naming every host and IP the
enclaves and owners use; the operator's CA signs it.  ``check_server_tls``
runs before serving, so a mismatched key or an expired certificate stops
``cas serve`` with one line instead of failing every handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sgxcloud.cas import files
from sgxcloud.cas.errors import TlsSetupError as TlsSetupError

RENEW_WARNING_DAYS = 30


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    return alt


def make_key_and_csr(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A P-256 key (0600, never replaced) and a CSR for ``names`` (DNS names or IPs)."""
    if not names:
        raise TlsSetupError("name at least one host name or IP address for the certificate")
    key_path, csr_path = directory / "server.key", directory / "server.csr"
    for path in (key_path, csr_path):
        if path.exists():
            raise TlsSetupError(f"{path} exists; refusing to replace it")
    files.make_dir(directory, files.PRIVATE_DIR)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName(_alt_names(names)), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    files.write_file(csr_path, csr.public_bytes(serialization.Encoding.PEM), files.PUBLIC)
    return key_path, csr_path


def check_server_tls(cert_file: Path, key_file: Path, now: dt.datetime | None = None) -> list[str]:
    """Refuse unusable TLS files; return warnings (e.g. renewal due soon)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except FileNotFoundError:
        raise TlsSetupError(
            f"tls_cert {cert_file} does not exist: have your CA sign the CSR "
            "(sgxcloud cas init --tls-csr) and put the certificate chain there"
        ) from None
    except (OSError, ValueError) as exc:
        raise TlsSetupError(f"tls_cert {cert_file} is not a PEM certificate chain") from exc
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsSetupError(f"tls_key {key_file} is not an unencrypted PEM private key") from exc
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise TlsSetupError(f"tls_key {key_file} is not the key of the certificate in {cert_file}")
    if now >= leaf.not_valid_after_utc:
        raise TlsSetupError(
            f"the CAS certificate in {cert_file} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    if now < leaf.not_valid_before_utc:
        raise TlsSetupError(
            f"the CAS certificate in {cert_file} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    warnings = []
    left = leaf.not_valid_after_utc - now
    if left < dt.timedelta(days=RENEW_WARNING_DAYS):
        warnings.append(
            f"the CAS certificate expires in {left.days} day(s): renew it "
            "(same CA, so enclaves keep their pinned cas-ca.pem)"
        )
    return warnings
