"""Principal ids: how a policy names its owners, and how a caller is recognised.

The HTTP layer authenticates a caller (a TLS client certificate, or a request
signature checked against a public key) and turns the credential into the same
id the policy stores, with these two functions.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

# Owner keys: what ``sgxcloud owner keygen`` makes (Ed25519, P-256) and what
# owners commonly hold.  Bounded because a request names its own key and the
# CAS checks the signature before it knows the caller: an RSA key with a
# 3,000-bit public exponent cost ~14 ms per check (red team), other curves or
# sizes are not what owners use.
OWNER_EC_CURVES = ("secp256r1", "secp384r1", "secp521r1")
OWNER_RSA_BITS = (2048, 4096)
OWNER_RSA_EXPONENT = 65537


class OwnerKeyError(ValueError):
    """A readable public key of a type or size owners may not use."""


def check_owner_key(key: object) -> None:
    """ValueError unless ``key`` is a public key owners may sign with (see above)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in OWNER_EC_CURVES:
            raise OwnerKeyError(
                f"owner EC keys must be on P-256, P-384 or P-521, not {key.curve.name}"
            )
        return
    if isinstance(key, rsa.RSAPublicKey):
        low, high = OWNER_RSA_BITS
        if not low <= key.key_size <= high:
            raise OwnerKeyError(
                f"owner RSA keys must have {low} to {high} bits, not {key.key_size}"
            )
        if key.public_numbers().e != OWNER_RSA_EXPONENT:
            raise OwnerKeyError(f"owner RSA keys must use the public exponent {OWNER_RSA_EXPONENT}")
        return
    raise OwnerKeyError("owner keys must be Ed25519, EC (P-256/P-384/P-521) or RSA")


def public_key_id(public_key_pem: str | bytes) -> str:
    """``key:sha256:<hex>`` over an owner key's SubjectPublicKeyInfo DER.

    ValueError if unreadable or not a key owners may use (:func:`check_owner_key`).
    """
    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    try:
        key = load_pem_public_key(data)
    except UnsupportedAlgorithm as exc:  # e.g. a well-formed key of an unknown type
        raise ValueError("unsupported public key type") from exc
    check_owner_key(key)
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "key:sha256:" + hashlib.sha256(der).hexdigest()


def certificate_id(certificate: str | bytes) -> str:
    """``cert:sha256:<hex>`` over a certificate's DER (given as PEM or DER).

    Raises ValueError if the certificate cannot be read.
    """
    data = certificate.encode() if isinstance(certificate, str) else certificate
    if data.lstrip().startswith(b"-----BEGIN"):
        data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    else:
        x509.load_der_x509_certificate(data)
    return "cert:sha256:" + hashlib.sha256(data).hexdigest()


def certificate_fingerprint_id(sha256_hex: str) -> str:
    """The id of a certificate known only by its SHA-256 fingerprint (as policies give it)."""
    return "cert:sha256:" + sha256_hex.lower()
