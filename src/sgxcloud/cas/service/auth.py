"""Signed owner requests: who is calling, proven by a signature over the request.

An owner signs ``sgxcloud-cas-request-v1``, the method, the path (with query),
the time and the SHA-256 of the body with the private key of either

* a public key listed in the policy (header ``X-Sgxcloud-Key``: base64 DER
  SubjectPublicKeyInfo), or
* a client certificate whose SHA-256 the policy lists (header
  ``X-Sgxcloud-Certificate``: base64 DER).  Signing with the certificate's key
  proves possession just as a TLS client-certificate handshake would, and
  works behind TLS-terminating proxies and with servers (uvicorn) that do not
  pass the peer certificate to the application.

The resulting principal id is the one :mod:`sgxcloud.cas.policy.access`
derives from the policy, so matching is a string comparison.  The time must
be within the configured skew; a replayed update is harmless because it names
a predecessor hash that is no longer current (409), and a replayed delete finds
nothing (404).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from sgxcloud.cas.errors import AccessDenied
from sgxcloud.cas.policy.access import certificate_id, public_key_id

DATE_HEADER = "x-sgxcloud-date"
KEY_HEADER = "x-sgxcloud-key"
CERT_HEADER = "x-sgxcloud-certificate"
SIGNATURE_HEADER = "x-sgxcloud-signature"
PEER_CERTIFICATE_STATE = "sgxcloud_tls_client_certificate"
"""Key in a request's ASGI ``state`` holding the verified TLS client certificate (DER)."""
_DOMAIN = b"sgxcloud-cas-request-v1"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class AuthenticationError(AccessDenied):
    """The request is unsigned, badly signed, or too old (HTTP 401)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated principal (``id`` as policies name it)."""

    id: str


def signing_payload(method: str, path: str, date: int, body: bytes) -> bytes:
    return b"\n".join(
        [
            _DOMAIN,
            method.upper().encode(),
            path.encode(),
            str(date).encode(),
            hashlib.sha256(body).hexdigest().encode(),
        ]
    )


def sign_request(
    key: SigningKey,
    method: str,
    path: str,
    body: bytes,
    *,
    now: int,
    certificate: x509.Certificate | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request (used by the CLI and tests)."""
    payload = signing_payload(method, path, now, body)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(payload, _pss(), hashes.SHA256())
    else:
        signature = key.sign(payload)
    headers = {DATE_HEADER: str(now), SIGNATURE_HEADER: base64.b64encode(signature).decode()}
    if certificate is not None:
        der = certificate.public_bytes(serialization.Encoding.DER)
        headers[CERT_HEADER] = base64.b64encode(der).decode()
    else:
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        headers[KEY_HEADER] = base64.b64encode(der).decode()
    return headers


def authenticate(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: int,
    max_skew: int,
    tls_client_certificate: bytes | None = None,
) -> Caller:
    """The caller proven by the request's signature or, failing that, by mutual TLS.

    ``tls_client_certificate`` is the DER certificate the TLS layer already
    verified against the configured owner CA; the TLS handshake proved
    possession of its key, so no signature is needed.
    """
    date_text = headers.get(DATE_HEADER)
    signature_text = headers.get(SIGNATURE_HEADER)
    if not date_text and not signature_text and tls_client_certificate:
        return Caller(certificate_id(tls_client_certificate))
    if not date_text or not signature_text:
        raise AuthenticationError("request is not signed (see 'sgxcloud policy --help')")
    try:
        date = int(date_text)
        signature = base64.b64decode(signature_text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise AuthenticationError("request signature headers are malformed") from exc
    if abs(now - date) > max_skew:
        raise AuthenticationError(
            f"request time is {date - now:+d} s from the service's clock (allowed ±{max_skew} s)"
        )
    public_key, caller_id = _credential(headers)
    payload = signing_payload(method, path, date, body)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, payload, _pss(), hashes.SHA256())
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, payload)
        else:
            raise AuthenticationError("unsupported owner key type")
    except InvalidSignature as exc:
        raise AuthenticationError("request signature does not verify") from exc
    return Caller(caller_id)


def _credential(headers: Mapping[str, str]) -> tuple[object, str]:
    """The public key that must have signed, and the principal id it stands for."""
    cert_text = headers.get(CERT_HEADER)
    key_text = headers.get(KEY_HEADER)
    try:
        if cert_text:
            der = base64.b64decode(cert_text, validate=True)
            certificate = x509.load_der_x509_certificate(der)
            return certificate.public_key(), certificate_id(der)
        if key_text:
            der = base64.b64decode(key_text, validate=True)
            key = serialization.load_der_public_key(der)
            pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return key, public_key_id(pem)
    except (ValueError, binascii.Error, TypeError) as exc:
        raise AuthenticationError("request credential is not a valid key or certificate") from exc
    raise AuthenticationError(f"request names no key ({KEY_HEADER} or {CERT_HEADER})")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
