"""Secrets: envelope sealing under a master key, rotation, and the per-policy CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas import secrets

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def keyring() -> secrets.Keyring:
    return secrets.Keyring(secrets.MasterKey.generate())


def test_seal_round_trip_and_context_binding(keyring: secrets.Keyring) -> None:
    sealed = secrets.seal(keyring, b"top secret", context="pol/db-password")
    assert b"top secret" not in sealed.ciphertext + sealed.wrapped_key
    assert sealed.master_key_id == keyring.current.key_id
    assert secrets.unseal(keyring, sealed, context="pol/db-password") == b"top secret"
    # A row copied to another policy or name does not open.
    with pytest.raises(secrets.SecretsError, match="cannot be opened"):
        secrets.unseal(keyring, sealed, context="other/db-password")


def test_tampered_ciphertext_is_rejected(keyring: secrets.Keyring) -> None:
    sealed = secrets.seal(keyring, b"value", context="p/s")
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    tampered = secrets.Sealed(sealed.master_key_id, sealed.wrapped_key, bytes(flipped))
    with pytest.raises(secrets.SecretsError) as info:
        secrets.unseal(keyring, tampered, context="p/s")
    assert "value" not in str(info.value)


def test_wrong_master_key_is_named_by_id_only(keyring: secrets.Keyring) -> None:
    sealed = secrets.seal(keyring, b"value", context="p/s")
    other = secrets.Keyring(secrets.MasterKey.generate())
    with pytest.raises(secrets.MasterKeyError) as info:
        secrets.unseal(other, sealed, context="p/s")
    assert keyring.current.key_id in str(info.value)
    assert keyring.current.encoded() not in str(info.value)


def test_rotation_rewraps_without_touching_ciphertext(keyring: secrets.Keyring) -> None:
    sealed = secrets.seal(keyring, b"value", context="p/s")
    rotated = secrets.Keyring(secrets.MasterKey.generate(), retired=(keyring.current,))
    assert secrets.unseal(rotated, sealed, context="p/s") == b"value"
    rewrapped = secrets.rewrap(rotated, sealed, context="p/s")
    assert rewrapped.master_key_id == rotated.current.key_id
    assert rewrapped.ciphertext == sealed.ciphertext
    new_only = secrets.Keyring(rotated.current)
    assert secrets.unseal(new_only, rewrapped, context="p/s") == b"value"


def test_master_key_file_must_be_private(tmp_path) -> None:
    key = secrets.MasterKey.generate()
    path = tmp_path / "master.key"
    secrets.write_master_key(path, key)
    assert secrets.load_master_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(secrets.MasterKeyError, match="readable by group or others"):
        secrets.load_master_key(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("not base64!", "not base64 or hex"), ("AAAA", "must be 32 bytes")],
)
def test_malformed_master_key(text: str, message: str) -> None:
    with pytest.raises(secrets.MasterKeyError, match=message):
        secrets.decode_master_key(text, origin="env")


def test_hex_master_key_is_accepted() -> None:
    key = secrets.MasterKey.generate()
    assert secrets.decode_master_key(key.key.hex(), origin="env") == key


def test_repr_never_shows_material() -> None:
    key = secrets.MasterKey.generate()
    value = secrets.random_bytes(16)
    assert key.encoded() not in repr(key)
    assert value.part("value").hex() not in repr(value)
    assert secrets.SecretValue.from_bytes(value.to_bytes()) == value


def test_generators_give_the_requested_material() -> None:
    assert len(secrets.random_bytes(48).part("value")) == 48
    assert len(secrets.gramine_mount_key().part("value")) == 16
    pem = secrets.private_key_secret("ec-p384").part("key")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    with pytest.raises(secrets.SecretsError):
        secrets.random_bytes(0)
    with pytest.raises(secrets.SecretsError):
        secrets.new_private_key("dsa")


def test_policy_ca_issues_certificates_with_sans() -> None:
    ca = secrets.make_ca("shop", NOW)
    restored = secrets.CertificateAuthority.from_secret(ca.to_secret())
    assert restored.certificate == ca.certificate
    value = secrets.certificate_secret(
        ca,
        common_name="api.shop.example",
        sans=["api.shop.example", "10.0.0.7", "spiffe://shop/api", "ops@shop.example"],
        now=NOW,
    )
    cert = x509.load_pem_x509_certificate(value.part("cert"))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.shop.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop/api"]
    assert san.get_values_for_type(x509.RFC822Name) == ["ops@shop.example"]
    # The leaf really chains to the policy CA (signature + issuer), and only to it.
    cert.verify_directly_issued_by(ca.certificate)
    other = secrets.make_ca("other", NOW)
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(other.certificate)
    key = serialization.load_pem_private_key(value.part("key"), password=None)
    assert key.public_key() == cert.public_key()
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
    basic = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
