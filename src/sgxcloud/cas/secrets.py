"""Secret material of the service: generation, and sealing at rest.

Generation covers what a policy can ask for: random bytes, private keys,
X.509 certificates issued by the policy's own CA (with SANs), and 16-byte
keys for Gramine encrypted mounts.

Sealing is envelope encryption: every secret gets a fresh AES-256-GCM data
key; the data key is wrapped (AES-256-GCM again) by the master key.  The
master key comes from a file or the environment and never enters the
database; each sealed row records only the master key's *id*, so a keyring
holding old and new master keys can open old rows while :func:`rewrap`
moves them to the new key without touching the secret ciphertexts.

No function here logs, and no error message carries secret material.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets as _random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sgxcloud.cas.errors import MasterKeyError as MasterKeyError
from sgxcloud.cas.errors import SecretsError as SecretsError

MASTER_KEY_ENV = "SGXCLOUD_CAS_MASTER_KEY"
MASTER_KEY_SIZE = 32
GRAMINE_KEY_SIZE = 16  # Gramine's encrypted files use 128-bit wrap keys
_NONCE_SIZE = 12
CA_VALIDITY_DAYS = 3650
CERT_VALIDITY_DAYS = 90


# -- master keys and sealing ------------------------------------------------


@dataclass(frozen=True)
class MasterKey:
    """A 256-bit key-encryption key; ``key_id`` is safe to store and show."""

    key_id: str
    key: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, key: bytes) -> MasterKey:
        if len(key) != MASTER_KEY_SIZE:
            raise MasterKeyError(f"master key must be {MASTER_KEY_SIZE} bytes, got {len(key)}")
        key_id = hashlib.sha256(b"sgxcloud-cas master key id\0" + key).hexdigest()[:16]
        return cls(key_id, key)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls.from_bytes(_random.token_bytes(MASTER_KEY_SIZE))

    def encoded(self) -> str:
        """The form written to key files and the environment (base64)."""
        return base64.b64encode(self.key).decode()


def decode_master_key(text: str, *, origin: str) -> MasterKey:
    """Parse a master key written as base64 or hex (64 digits)."""
    text = text.strip()
    try:
        if len(text) == 2 * MASTER_KEY_SIZE and all(c in "0123456789abcdefABCDEF" for c in text):
            return MasterKey.from_bytes(bytes.fromhex(text))
        return MasterKey.from_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise MasterKeyError(f"master key in {origin} is not base64 or hex") from exc
    except MasterKeyError as exc:
        raise MasterKeyError(f"master key in {origin}: {exc}") from exc


def load_master_key(path: Path) -> MasterKey:
    """Read a master key file; refuses files that others can read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise MasterKeyError(f"master key file {path} must not be readable by group or others")
    return decode_master_key(text, origin=str(path))


def write_master_key(path: Path, key: MasterKey) -> None:
    """Create a new key file readable only by its owner (never overwrites)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.encoded() + "\n")


@dataclass(frozen=True)
class Keyring:
    """The current master key (seals) and retired ones (only open)."""

    current: MasterKey
    retired: tuple[MasterKey, ...] = ()

    def find(self, key_id: str) -> MasterKey:
        for key in (self.current, *self.retired):
            if key.key_id == key_id:
                return key
        raise MasterKeyError(f"no master key with id {key_id} is configured")


@dataclass(frozen=True)
class Sealed:
    master_key_id: str
    wrapped_key: bytes
    ciphertext: bytes


def seal(keyring: Keyring, plaintext: bytes, *, context: str) -> Sealed:
    """Encrypt under a fresh data key; ``context`` (policy/name) is bound as AAD."""
    data_key = AESGCM.generate_key(bit_length=256)
    ciphertext = _encrypt(data_key, plaintext, _aad("data", context))
    master = keyring.current
    wrapped = _encrypt(master.key, data_key, _aad("key", context, master.key_id))
    return Sealed(master.key_id, wrapped, ciphertext)


def unseal(keyring: Keyring, sealed: Sealed, *, context: str) -> bytes:
    master = keyring.find(sealed.master_key_id)
    try:
        data_key = _decrypt(master.key, sealed.wrapped_key, _aad("key", context, master.key_id))
        return _decrypt(data_key, sealed.ciphertext, _aad("data", context))
    except (InvalidTag, ValueError) as exc:
        raise SecretsError(f"sealed secret {context} cannot be opened (tampered?)") from exc


def rewrap(keyring: Keyring, sealed: Sealed, *, context: str) -> Sealed:
    """Re-wrap the data key under the current master key; the ciphertext is unchanged."""
    if sealed.master_key_id == keyring.current.key_id:
        return sealed
    old = keyring.find(sealed.master_key_id)
    try:
        data_key = _decrypt(old.key, sealed.wrapped_key, _aad("key", context, old.key_id))
    except InvalidTag as exc:
        raise SecretsError(f"sealed secret {context} cannot be opened (tampered?)") from exc
    new = keyring.current
    wrapped = _encrypt(new.key, data_key, _aad("key", context, new.key_id))
    return Sealed(new.key_id, wrapped, sealed.ciphertext)


def _aad(*parts: str) -> bytes:
    return "\0".join(("sgxcloud-cas", *parts)).encode()


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < _NONCE_SIZE + 16:
        raise ValueError("ciphertext too short")
    return AESGCM(key).decrypt(blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], aad)


# -- secret values ------------------------------------------------------------


@dataclass(frozen=True)
class SecretValue:
    """One generated secret: its kind and named parts (``value``, ``key``, ``cert``...).

    ``repr`` never shows the material, so a stray log line cannot leak it.
    """

    kind: str
    parts: Mapping[str, bytes] = field(repr=False)

    def part(self, name: str) -> bytes:
        return self.parts[name]

    def to_bytes(self) -> bytes:
        encoded = {k: base64.b64encode(v).decode() for k, v in sorted(self.parts.items())}
        return json.dumps({"kind": self.kind, "parts": encoded}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SecretValue:
        document = json.loads(data)
        return cls(document["kind"], {k: base64.b64decode(v) for k, v in document["parts"].items()})


def random_bytes(size: int) -> SecretValue:
    if not 1 <= size <= 1 << 16:
        raise SecretsError(f"random secret size must be 1..65536 bytes, got {size}")
    return SecretValue("random", {"value": _random.token_bytes(size)})


def gramine_mount_key() -> SecretValue:
    """A key for a Gramine encrypted mount (``fs.mounts`` type ``encrypted``)."""
    return SecretValue("gramine-key", {"value": _random.token_bytes(GRAMINE_KEY_SIZE)})


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def new_private_key(algorithm: str = "ec-p256") -> PrivateKey:
    algorithm = algorithm.lower()
    if algorithm in {"ec-p256", "ecdsa-p256", "p256", "ec"}:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm in {"ec-p384", "ecdsa-p384", "p384"}:
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm in {"rsa", "rsa-2048", "rsa-3072", "rsa-4096"}:
        bits = int(algorithm.split("-")[1]) if "-" in algorithm else 3072
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise SecretsError(f"unsupported key algorithm {algorithm!r}")


def private_key_secret(algorithm: str = "ec-p256") -> SecretValue:
    key = new_private_key(algorithm)
    return SecretValue("private-key", {"key": _pem_private(key), "public": _pem_public(key)})


def _pem_private(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_public(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signing_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


# -- the per-policy certificate authority -------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    key: PrivateKey = field(repr=False)
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def to_secret(self) -> SecretValue:
        return SecretValue("ca", {"key": _pem_private(self.key), "cert": self.certificate_pem})

    @classmethod
    def from_secret(cls, value: SecretValue) -> CertificateAuthority:
        key = serialization.load_pem_private_key(value.part("key"), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise SecretsError("policy CA key has an unsupported type")
        return cls(key, x509.load_pem_x509_certificate(value.part("cert")))


def make_ca(policy_name: str, now: dt.datetime) -> CertificateAuthority:
    """A self-signed ECDSA P-256 CA that only this policy's certificates chain to."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sgxcloud CAS"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"policy {policy_name} CA"[:64]),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, certificate)


def subject_alternative_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names, IP addresses, URIs (``scheme://``) and e-mail addresses (``@``)."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if "://" in name:
            result.append(x509.UniformResourceIdentifier(name))
        elif "@" in name:
            result.append(x509.RFC822Name(name))
        else:
            result.append(x509.DNSName(name))
    return result


def subject_name(subject: str) -> x509.Name:
    """``CN=api,O=Shop`` (RFC 4514) as given, or a bare name as the common name."""
    if "=" in subject:
        try:
            return x509.Name.from_rfc4514_string(subject)
        except ValueError as exc:
            raise SecretsError(f"certificate subject {subject!r} is not an RFC 4514 name") from exc
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64])])


def certificate_template(
    ca: CertificateAuthority, *, common_name: str, sans: Iterable[str] = ()
) -> x509.CertificateBuilder:
    """Everything of a leaf certificate from ``ca`` but its key, serial and validity.

    Builders are immutable, so one template serves every certificate issued
    to the same name (the CAS keeps one per attested service).
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name(common_name))
        .issuer_name(ca.certificate.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    general_names = subject_alternative_names(sans)
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    return builder


def issue_certificate(
    ca: CertificateAuthority,
    public_key: PublicKey,
    *,
    common_name: str = "",
    sans: Iterable[str] = (),
    now: dt.datetime,
    days: int = CERT_VALIDITY_DAYS,
    template: x509.CertificateBuilder | None = None,
) -> x509.Certificate:
    """A leaf certificate for ``public_key``, usable for TLS server and client auth.

    ``template`` (from :func:`certificate_template` for the same ``ca``)
    replaces ``common_name`` and ``sans``.
    """
    if days < 1:
        raise SecretsError(f"certificate validity must be at least one day, got {days}")
    if template is None:
        if not common_name:
            raise SecretsError("a certificate needs a common name (or a template)")
        template = certificate_template(ca, common_name=common_name, sans=sans)
    return (
        template.public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.certificate.not_valid_after_utc))
        .sign(ca.key, _signing_hash(ca.key))
    )


def certificate_secret(
    ca: CertificateAuthority,
    *,
    common_name: str,
    sans: Iterable[str] = (),
    algorithm: str = "ec-p256",
    now: dt.datetime,
    days: int = CERT_VALIDITY_DAYS,
) -> SecretValue:
    """A fresh key pair and its certificate from the policy CA."""
    key = new_private_key(algorithm)
    cert = issue_certificate(
        ca, key.public_key(), common_name=common_name, sans=sans, now=now, days=days
    )
    return SecretValue(
        "x509",
        {
            "key": _pem_private(key),
            "cert": cert.public_bytes(serialization.Encoding.PEM),
            "ca": ca.certificate_pem,
        },
    )
