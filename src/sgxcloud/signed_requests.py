"""The rules every signed HTTP request to an sgxcloud service follows.

Two services take signed requests: the CAS from policy owners
(:mod:`sgxcloud.cas.service.auth`, ``sgxcloud-cas-request-v4``) and the
clean-room coordinator from the parties
(:mod:`sgxcloud.cleanroom.transport.request_auth`,
``sgxcloud.cleanroom.request/v2``).  Each keeps its wire format — its header
names and the bytes it signs (newline-separated fields for the CAS, canonical
JSON for the coordinator) — since clients in the field sign them.  Both
follow these rules, and the pieces here implement them once:

* What is signed names the service it is for (CAS: deployment id and origin;
  coordinator: definition hash and result-signing key) and is rebuilt from the
  service's own values — method, path, its identity — never from what the
  headers claim; the signer as the service will know it (CAS: the principal
  id of the credential presented, so one key's bare key and certificates —
  different principals — cannot stand in for each other; coordinator: the
  party); the path with its query string (:func:`signed_path`); the body by
  its SHA-256 (:func:`body_digest`).
* A request id (the coordinator's nonce): 16 to 64 random bytes, lower-case
  hex (:data:`REQUEST_ID`; :func:`new_request_id` makes 16).
* Fresh: the signed time is within ``max_skew`` seconds of the service's
  clock, either way (:func:`is_fresh`).
* Once: the signer (the signing key for the CAS, whichever of its
  credentials it presents; the party for the coordinator) and the
  request id are recorded, only after the signature verified and before the
  service acts, and kept until the request can no longer pass the clock
  (:func:`stale_from`).
* Signatures: Ed25519, ECDSA with SHA-256, RSA-PSS with SHA-256
  (:func:`sign`, :func:`signature_verifies`).  Which keys a service admits
  is its own rule: the CAS bounds owners' keys (``check_owner_key``); the
  coordinator takes the Ed25519 keys the definition lists.
"""

from __future__ import annotations

import hashlib
import os
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

REQUEST_ID = re.compile(r"[0-9a-f]{32,128}")
"""At least 16 random bytes, hex; bounded so a signer cannot fill a record of
used ids with huge values."""

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def signed_path(path: str, query: str) -> str:
    """The path a signature covers: with the query string, when there is one,
    so no parameter can be added to, or changed in, a signed request."""
    return f"{path}?{query}" if query else path


def new_request_id() -> str:
    return os.urandom(16).hex()


def body_digest(body: bytes) -> str:
    """What a signature says of the body: its SHA-256, hex."""
    return hashlib.sha256(body).hexdigest()


def is_fresh(signed_at: int, now: int, max_skew: int) -> bool:
    """Whether a request signed at ``signed_at`` passes the clock check at ``now``."""
    return abs(now - signed_at) <= max_skew


def stale_from(signed_at: int, max_skew: int) -> int:
    """The first second at which a request signed at ``signed_at`` fails the
    clock check: its record of use may go then, and not before."""
    return signed_at + max_skew + 1


def sign(key: SigningKey, payload: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(payload, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(payload, _pss(), hashes.SHA256())
    return key.sign(payload)


def signature_verifies(public_key: object, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s over ``payload``; False for any
    other key type (a service admits keys before it checks signatures)."""
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, payload)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, payload, _pss(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
