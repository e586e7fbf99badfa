"""Principal ids: how a policy names its owners, and how a caller is recognised.

The HTTP layer authenticates a caller (a TLS client certificate, or a request
signature checked against a public key) and turns the credential into the same
id the policy stores, with these two functions.
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)


def public_key_id(public_key_pem: str | bytes) -> str:
    """``key:sha256:<hex>`` over the key's SubjectPublicKeyInfo DER; ValueError if unreadable."""
    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    try:
        key = load_pem_public_key(data)
    except UnsupportedAlgorithm as exc:  # e.g. a well-formed key of an unknown type
        raise ValueError("unsupported public key type") from exc
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
