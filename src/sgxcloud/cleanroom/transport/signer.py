"""Binding the coordinator's result-signing key into its attestation, and
proving it in a node session.

Results are verified long after the session that produced them, by parties
who were never online with the enclave.  So the coordinator publishes a
*signer statement*: evidence whose REPORTDATA binds its Ed25519 result key and
the definition hash (with a fixed label in place of a session nonce, since
this statement is meant to be kept).  A recipient who checks the statement
against the definition's coordinator pin, and the result's signature against
the key in it, knows the numbers came out of the pinned enclave.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.cleanroom.transport.binding import Attester, PeerPolicy, report_data
from sgxcloud.cleanroom.transport.errors import PeerRefused

SIGNER_LABEL = b"sgxcloud-cleanroom-result-signer-v1"
SESSION_LABEL = b"sgxcloud-cleanroom-node-session-v1"


def signer_statement(attester: Attester, signer: str, definition_hash: str) -> dict[str, Any]:
    evidence = attester.evidence(report_data(signer.encode(), definition_hash, SIGNER_LABEL))
    return {
        "signer": signer,
        "definition_hash": definition_hash,
        "evidence": {"format": evidence.format, "raw": base64.b64encode(evidence.raw).decode()},
    }


def verify_signer_statement(statement: dict[str, Any], policy: PeerPolicy) -> Any:
    """Check a signer statement against the definition's coordinator pin.

    Returns the verified evidence (``.simulated`` tells how much it is worth).
    """
    from sgxcloud.cas.evidence.model import Evidence

    try:
        signer = str(statement["signer"])
        evidence = Evidence(
            format=str(statement["evidence"]["format"]),
            raw=base64.b64decode(statement["evidence"]["raw"], validate=True),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PeerRefused("malformed signer statement") from exc
    return policy.check(evidence, signer.encode(), SIGNER_LABEL)


# -- which coordinator: a node pinned to one signer ------------------------------------
#
# Approvals name a definition and its enclaves, not a coordinator instance:
# every attested coordinator running the definition passes (in simulated mode
# anyone holding the approvals; on SGX anyone running the pinned build).  A
# node given the coordinator's signer (``--coordinator``) asks each session
# for a signature by that key over this session: the node's nonce and the TLS
# key of this handshake.  The key lives only in that coordinator's workdir
# (inside its enclave on SGX), so no other instance can answer.


def session_proof(
    signing_key: Ed25519PrivateKey, definition_hash: str, peer_nonce: bytes, own_tls_key: bytes
) -> dict[str, Any]:
    """Fields of the coordinator's EVIDENCE message proving it holds ``signing_key``."""
    from sgxcloud.cleanroom.approvals import encode_public_key

    payload = report_data(own_tls_key, definition_hash, peer_nonce, SESSION_LABEL)
    return {
        "signer": encode_public_key(signing_key),
        "signer_proof": base64.b64encode(signing_key.sign(payload)).decode(),
    }


def check_session_proof(
    message: dict[str, Any],
    signer: str,
    definition_hash: str,
    own_nonce: bytes,
    peer_tls_key: bytes,
) -> None:
    """Refuse a session whose EVIDENCE message does not prove ``signer``."""
    from sgxcloud.cleanroom.approvals import decode_public_key

    if message.get("signer") != signer:
        named = str(message.get("signer") or "none")[:60]
        raise PeerRefused(
            f"this node serves only the coordinator {signer[:24]}…; the peer's signer is {named}"
        )
    payload = report_data(peer_tls_key, definition_hash, own_nonce, SESSION_LABEL)
    try:
        proof = base64.b64decode(str(message.get("signer_proof", "")), validate=True)
        decode_public_key(signer).verify(proof, payload)
    except (ValueError, InvalidSignature) as exc:
        raise PeerRefused(
            "the peer does not hold the coordinator's signing key (no valid proof for this session)"
        ) from exc
