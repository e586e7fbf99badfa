"""Each party's signed approval of a definition and of the code that runs it.

An approval is an Ed25519 signature over the canonical JSON of
``{purpose, party, definition_hash, coordinator_mrenclave, node_mrenclave,
approved_at}``.  Because the definition hash covers every byte of meaning in
the definition, any change to it (a new dataset, a different k, another
MRENCLAVE) leaves every earlier approval invalid: fresh ones are needed.

Public keys are written ``ed25519:<base64 of the 32 raw bytes>`` in the
definition; the same helpers serve the coordinator's result-signing key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sgxcloud.cleanroom.definition import Definition, canonical_json
from sgxcloud.cleanroom.errors import ApprovalError, CleanroomError

APPROVAL_PURPOSE = "sgxcloud.cleanroom.approval/v1"
KEY_PREFIX = "ed25519:"

# -- keys -----------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def encode_public_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``ed25519:<base64>``, the form used in definitions and results."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    if not text.startswith(KEY_PREFIX):
        raise CleanroomError("public key must start with 'ed25519:'")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise CleanroomError("public key is not a valid Ed25519 key") from exc


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CleanroomError("not a PEM-encoded unencrypted private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CleanroomError("the private key is not an Ed25519 key")
    return key


# -- approvals --------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    party: str
    definition_hash: str
    coordinator_mrenclave: str
    node_mrenclave: str
    approved_at: str
    signature: str  # base64

    def signed_payload(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        body["purpose"] = APPROVAL_PURPOSE
        return canonical_json(body)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> Approval:
        fields = (
            "party",
            "definition_hash",
            "coordinator_mrenclave",
            "node_mrenclave",
            "approved_at",
            "signature",
        )
        if not isinstance(doc, dict) or any(not isinstance(doc.get(f), str) for f in fields):
            raise ApprovalError("approval document must have string fields " + ", ".join(fields))
        return cls(**{f: doc[f] for f in fields})


def approve(
    definition: Definition,
    party: str,
    private_key: Ed25519PrivateKey,
    *,
    now: datetime | None = None,
) -> Approval:
    """Sign ``party``'s approval of this definition and its pinned enclaves."""
    member = definition.party(party)
    if member is None:
        raise ApprovalError(f"{party} is not a party of this collaboration")
    if encode_public_key(private_key) != member.public_key:
        raise ApprovalError(
            f"the private key does not match {party}'s public key in the definition"
        )
    unsigned = Approval(
        party=party,
        definition_hash=definition.definition_hash(),
        coordinator_mrenclave=definition.enclaves.coordinator.mrenclave,
        node_mrenclave=definition.enclaves.node.mrenclave,
        approved_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
        signature="",
    )
    signature = private_key.sign(unsigned.signed_payload())
    return Approval(**{**asdict(unsigned), "signature": base64.b64encode(signature).decode()})


def required_approvers(definition: Definition) -> tuple[str, ...]:
    """Every data provider must approve before its node releases data."""
    return definition.providers


@dataclass(frozen=True)
class ApprovalStatus:
    valid: tuple[str, ...]
    missing: tuple[str, ...]
    invalid: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.invalid


def verify_approvals(definition: Definition, approvals: Iterable[Approval]) -> ApprovalStatus:
    """Check approvals against this exact definition and its pinned MRENCLAVEs.

    ``invalid`` names parties whose approval is for another definition or
    enclave, or whose signature does not verify; ``missing`` names required
    approvers with no valid approval.
    """
    valid: set[str] = set()
    invalid: set[str] = set()
    expected = (
        definition.definition_hash(),
        definition.enclaves.coordinator.mrenclave,
        definition.enclaves.node.mrenclave,
    )
    for approval in approvals:
        member = definition.party(approval.party)
        bound = (approval.definition_hash, approval.coordinator_mrenclave, approval.node_mrenclave)
        if member is None or bound != expected or not _signature_ok(approval, member.public_key):
            invalid.add(approval.party)
        else:
            valid.add(approval.party)
    invalid -= valid
    missing = tuple(p for p in required_approvers(definition) if p not in valid)
    return ApprovalStatus(tuple(sorted(valid)), missing, tuple(sorted(invalid)))


def require_approvals(definition: Definition, approvals: Iterable[Approval]) -> ApprovalStatus:
    status = verify_approvals(definition, approvals)
    if not status.complete:
        parts = []
        if status.missing:
            parts.append("missing from " + ", ".join(status.missing))
        if status.invalid:
            parts.append("invalid from " + ", ".join(status.invalid))
        raise ApprovalError(
            "approvals incomplete: " + "; ".join(parts),
            missing=status.missing,
            invalid=status.invalid,
        )
    return status


def _signature_ok(approval: Approval, public_key: str) -> bool:
    try:
        key = decode_public_key(public_key)
        key.verify(base64.b64decode(approval.signature, validate=True), approval.signed_payload())
    except (CleanroomError, InvalidSignature, binascii.Error, ValueError):
        return False
    return True
