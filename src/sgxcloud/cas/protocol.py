"""The attest-and-fetch protocol: nonces, key binding, and the sealed answer.

1. The enclave makes a fresh P-256 key pair and asks for a nonce.
2. It puts ``SHA-256(SubjectPublicKeyInfo DER ‖ nonce)`` into the first 32
   bytes of REPORTDATA and sends its evidence with the public key.
3. The service checks the evidence, the binding, the nonce (single use,
   unexpired) and the policy; then it encrypts the service's configuration
   to that public key with HPKE (RFC 9180, base mode, DHKEM(P-256,
   HKDF-SHA256), HKDF-SHA256, AES-256-GCM; the nonce is in HPKE's ``info``)
   and issues an X.509 certificate for the key from the policy CA.

Only the holder of the private key, which never left the attested enclave,
can read the configuration.  Both sides import this module, so the byte
layouts below are defined exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as _random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas.errors import BindingError as BindingError
from sgxcloud.cas.errors import NonceRejected as NonceRejected
from sgxcloud.cas.errors import ProtocolError as ProtocolError

NONCE_SIZE = 32
BINDING_SIZE = 32  # the first half of the 64-byte REPORTDATA
REPORT_DATA_SIZE = 64
AUDIT_MORE_HEADER = "X-Audit-More-After"
"""On a ``GET /v1/audit`` page cut at its byte bound: the ``after`` of the next page."""
HPKE_SUITE_NAME = "DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-256-GCM"
_INFO_PREFIX = b"sgxcloud-cas configuration v1\0"
ANSWER_VERSION = 2
"""The sealed document's ``answer`` member: 2 binds service, certificates and verdict."""
_SUITE = hpke.Suite(hpke.KEM.P256, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def new_nonce() -> bytes:
    return _random.token_bytes(NONCE_SIZE)


def parse_nonce(text: str) -> bytes:
    """A nonce as sent on the wire (hex); anything else is bad input."""
    try:
        nonce = bytes.fromhex(text)
    except ValueError as exc:
        raise ProtocolError("nonce must be hex") from exc
    if len(nonce) != NONCE_SIZE:
        raise ProtocolError(f"nonce must be {NONCE_SIZE} bytes")
    return nonce


# -- keys ---------------------------------------------------------------------


def public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_enclave_public_key(pem_or_der: bytes) -> ec.EllipticCurvePublicKey:
    """The enclave's public key; only P-256 is accepted (HPKE suite and certificate)."""
    try:
        if pem_or_der.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(pem_or_der)
        else:
            key = serialization.load_der_public_key(pem_or_der)
    except (ValueError, TypeError) as exc:
        raise ProtocolError("public_key is not a valid PEM or DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProtocolError("public_key must be an EC P-256 key")
    return key


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the key's SubjectPublicKeyInfo DER: how logs name an enclave key."""
    return hashlib.sha256(public_key_der(key)).hexdigest()


def new_enclave_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- binding ------------------------------------------------------------------


def binding_digest(public_key: ec.EllipticCurvePublicKey, nonce: bytes) -> bytes:
    return hashlib.sha256(public_key_der(public_key) + nonce).digest()


def report_data_for(public_key: ec.EllipticCurvePublicKey, nonce: bytes) -> bytes:
    """The 64 bytes an enclave writes to REPORTDATA: the digest, then zeros."""
    return binding_digest(public_key, nonce).ljust(REPORT_DATA_SIZE, b"\0")


def check_binding(report_data: bytes, public_key: ec.EllipticCurvePublicKey, nonce: bytes) -> None:
    """Raise :class:`BindingError` unless REPORTDATA[:32] commits to key and nonce."""
    expected = binding_digest(public_key, nonce)
    if not hmac.compare_digest(report_data[:BINDING_SIZE], expected):
        raise BindingError("REPORTDATA is not bound to this public key and nonce")


# -- the sealed configuration -------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """What a verified enclave receives (the plaintext of the sealed answer).

    ``policy_name``, ``policy_hash`` and ``policy_owners`` (the principal ids
    who signed the policy) say who controls this configuration.  They travel
    inside the sealed (HPKE, key- and nonce-bound) answer, so only the CAS can
    set them; an enclave checks them against what its manifest pins, and so
    refuses a policy created under its expected name by someone else.  An
    older CAS sends none (empty): a pinning enclave then refuses.

    ``answer`` (wire version 2, :data:`ANSWER_VERSION`) says what request this
    answer is for and binds the parts of the attest answer that travel
    outside the seal: the ``service`` asked for, the SHA-256 of the
    ``certificate`` issued and of the ``ca_certificate`` returned (DER), and
    ``simulated`` and ``tcb_status``.  The enclave compares them with its own
    request and with the unsealed answer, and refuses any difference (red
    team rt9 F5: a request rewritten from service ``web`` to ``admin`` on its
    way installed ``admin``'s configuration).  The nonce and the enclave key
    are bound by the seal itself (HPKE ``info`` and recipient).  A CAS before
    version 2 sends no ``answer``: the client refuses it.
    """

    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    policy_name: str = ""
    policy_hash: str = ""
    policy_owners: tuple[str, ...] = ()
    answer: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        document: dict[str, Any] = {
            "argv": self.argv,
            "env": self.env,
            "files": {path: content.hex() for path, content in sorted(self.files.items())},
            "policy": {
                "name": self.policy_name,
                "hash": self.policy_hash,
                "owners": sorted(self.policy_owners),
            },
        }
        if self.answer:
            document["answer"] = dict(self.answer)
        return json.dumps(document, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Configuration:
        try:
            document: Mapping[str, Any] = json.loads(data.decode())  # to_bytes writes UTF-8
            policy: Mapping[str, Any] = document.get("policy") or {}
            return cls(
                argv=[str(a) for a in document["argv"]],
                env={str(k): str(v) for k, v in document["env"].items()},
                files={str(p): bytes.fromhex(c) for p, c in document["files"].items()},
                policy_name=str(policy.get("name", "")),
                policy_hash=str(policy.get("hash", "")),
                policy_owners=tuple(str(o) for o in policy.get("owners", ())),
                answer=dict(document.get("answer") or {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError("configuration document is malformed") from exc


def answer_binding(
    *, service: str, certificate_der: bytes, ca_der: bytes, simulated: bool, tcb_status: str
) -> dict[str, Any]:
    """The sealed ``answer`` member: what the attest answer is for and its unsealed parts."""
    return {
        "version": ANSWER_VERSION,
        "service": service,
        "certificate_sha256": hashlib.sha256(certificate_der).hexdigest(),
        "ca_certificate_sha256": hashlib.sha256(ca_der).hexdigest(),
        "simulated": simulated,
        "tcb_status": tcb_status,
    }


def _info(nonce: bytes) -> bytes:
    return _INFO_PREFIX + nonce


def seal_configuration(
    configuration: Configuration, public_key: ec.EllipticCurvePublicKey, nonce: bytes
) -> bytes:
    return _SUITE.encrypt(configuration.to_bytes(), public_key, info=_info(nonce))


def open_configuration(
    ciphertext: bytes, private_key: ec.EllipticCurvePrivateKey, nonce: bytes
) -> Configuration:
    try:
        plaintext = _SUITE.decrypt(ciphertext, private_key, info=_info(nonce))
    except Exception as exc:  # HPKE raises several types; all mean the same to us
        raise ProtocolError("sealed configuration cannot be opened with this key") from exc
    return Configuration.from_bytes(plaintext)
