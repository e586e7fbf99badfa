"""Signed answers to signed owner requests: what the CAS said, provable past any proxy.

Owners sign their requests (:mod:`sgxcloud.cas.service.auth`), but TLS may
end before the CAS (a re-encrypting HTTPS proxy or load balancer holds a
certificate the owner trusts), and whatever ends it can rewrite the answer:
hide an audit entry, turn a rejection into an acceptance, drop
``X-Audit-More-After``, say the audit verified, show another policy text
(red team rt10 F1).  So the CAS signs every answer to a signed owner request
with its *answer signing key* (Ed25519, made by ``sgxcloud cas init``, kept
with the master key, shared by replicas), and the owner's tools verify it
against the public key they pin (``--cas-key`` / ``SGXCLOUD_CAS_SIGNING_KEY``;
``sgxcloud cas signing-key`` shows it).

Header ``X-Sgxcloud-Answer-Signature: sgxcloud-cas-answer-v2 <base64>``; the
signature is over :func:`answer_payload`: the form, the deployment id, the
request's id, :func:`request_digest` of the request *as the CAS received it*
(method, path with query, every signed request header -- date, deployment,
audience, request id, credential, signature -- and the SHA-256 of the body
bytes the CAS read), the status, every header of :data:`SIGNED_HEADERS` (name
and value, empty when absent) and the SHA-256 of the answer body.  The owner's
client computes the digest of what it sent: an answer to a request altered on
the way (one byte of its date or body: red team rt11 F1) does not verify, nor
does an answer to a request a proxy made itself.

A byte-identical replay of the owner's own request is the same request: the
CAS refuses it with the distinct, signed ``409 already-received`` ("it may
have been carried out"), which the owner's client reports as
:class:`~sgxcloud.cas.client.errors.OutcomeUnknown`, never as a refusal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sgxcloud.cas.errors import AnswerNotVerified as AnswerNotVerified
from sgxcloud.cas.errors import SigningKeyMismatch as SigningKeyMismatch
from sgxcloud.cas.protocol import AUDIT_MORE_HEADER
from sgxcloud.errors import SgxcloudError

ANSWER_HEADER = "x-sgxcloud-answer-signature"
ANSWER_FORM = "sgxcloud-cas-answer-v2"
"""v1 (until rt11) bound only the request's id and signature, not what it signed."""
SIGNED_HEADERS = (AUDIT_MORE_HEADER.lower(),)
"""Answer headers whose presence and value the signature covers."""


def check_deployment_key(key_file: Path | None, published: Path) -> str:
    """The fingerprint of ``key_file`` when it is the private half of the ``published``
    public key (what owners pin); otherwise :class:`SigningKeyMismatch` naming what to
    restore.  The key is not in database backups, as the master key is not."""
    expected = load_public_key(published)
    if key_file is None:
        raise SigningKeyMismatch(
            f"no answer_signing_key_file in the settings, but owners pin {published} "
            f"({fingerprint(expected)}): restore answer-signing.key from the key backup "
            "(where the master key is kept) and set answer_signing_key_file to it"
        )
    try:
        found = load_private_key(key_file).public_key()
    except SgxcloudError as exc:
        raise SigningKeyMismatch(
            f"{exc}; owners pin {published} ({fingerprint(expected)}): restore "
            "answer-signing.key from the key backup (where the master key is kept)"
        ) from exc
    if found.public_bytes_raw() != expected.public_bytes_raw():
        raise SigningKeyMismatch(
            f"the answer signing key {key_file} ({fingerprint(found)}) is not the key owners "
            f"pin in {published} ({fingerprint(expected)}): every owner would refuse this "
            "CAS's answers; restore the deployment's answer-signing.key from the key backup "
            "(or, if it is lost, give owners the new public key to pin)"
        )
    return fingerprint(found)


class UnverifiedAnswers(UserWarning):
    """An owner client was made without a pinned CAS signing key (warned once)."""


_REQUEST_HEADERS = (
    "x-sgxcloud-date",
    "x-sgxcloud-deployment",
    "x-sgxcloud-audience",
    "x-sgxcloud-request-id",
    "x-sgxcloud-key",
    "x-sgxcloud-certificate",
    "x-sgxcloud-signature",
)
"""The headers of a signed owner request (:mod:`sgxcloud.cas.service.auth`) an answer binds."""


def request_digest(method: str, path: str, headers: Mapping[str, str], body_sha256: str) -> str:
    """SHA-256 over everything an owner request's signature stands on, as one side saw it:
    ``headers`` has lower-case names (the first value of each), ``body_sha256`` is the hex
    SHA-256 of the body bytes sent (client) or read (CAS)."""
    lines = [
        "sgxcloud-cas-request-digest-v1",
        method.upper(),
        path,
        *(f"{name}:{headers.get(name, '')}" for name in _REQUEST_HEADERS),
        body_sha256,
    ]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def answer_payload(
    *,
    deployment: str,
    request_id: str,
    request_digest: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> bytes:
    lines = [
        ANSWER_FORM,
        deployment,
        request_id,
        request_digest,
        str(status),
        *(f"{name}:{headers.get(name, '')}" for name in SIGNED_HEADERS),
        hashlib.sha256(body).hexdigest(),
    ]
    return "\n".join(lines).encode()


def sign_answer(key: ed25519.Ed25519PrivateKey, payload: bytes) -> str:
    return f"{ANSWER_FORM} {base64.b64encode(key.sign(payload)).decode()}"


def verify_answer(
    public_key: ed25519.Ed25519PublicKey, header: str | None, payload: bytes, where: str
) -> None:
    """Raise :class:`AnswerNotVerified` unless ``header`` signs ``payload`` with ``public_key``."""
    if not header:
        raise AnswerNotVerified(
            f"the answer of {where} carries no CAS answer signature ({ANSWER_HEADER}), and a "
            "CAS signing key is pinned: the answer may have been altered on the way (or the "
            "CAS predates signed answers or has no answer_signing_key_file: upgrade it first)"
        )
    form, _, text = header.partition(" ")
    if form != ANSWER_FORM:
        raise AnswerNotVerified(
            f"the answer of {where} is signed in a form this client does not know "
            f"({form[:40]!r}; it knows {ANSWER_FORM}): upgrade the owner tools"
        )
    try:
        public_key.verify(base64.b64decode(text, validate=True), payload)
    except (ValueError, binascii.Error, InvalidSignature) as exc:
        raise AnswerNotVerified(
            f"the answer of {where} does not verify with the pinned CAS signing key: it was "
            "altered on the way (a proxy ending TLS?) or comes from another CAS; nothing "
            "in it was used"
        ) from exc


def generate_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SgxcloudError(f"cannot read the CAS answer signing key {path}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SgxcloudError(f"the CAS answer signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The pinned public key (PEM), or the public half of a private key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SgxcloudError(f"cannot read the CAS signing key {path}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise SgxcloudError(f"{path} holds no CAS signing key (PEM)") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SgxcloudError(f"the CAS signing key {path} is not an Ed25519 key")
    return key
