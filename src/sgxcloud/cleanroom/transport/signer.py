"""Binding the coordinator's result-signing key into its attestation.

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

from sgxcloud.cleanroom.transport.binding import Attester, PeerPolicy, report_data
from sgxcloud.cleanroom.transport.errors import PeerRefused

SIGNER_LABEL = b"sgxcloud-cleanroom-result-signer-v1"


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
        evidence = Evidence(format=str(statement["evidence"]["format"]),
                            raw=base64.b64decode(statement["evidence"]["raw"], validate=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise PeerRefused("malformed signer statement") from exc
    return policy.check(evidence, signer.encode(), SIGNER_LABEL)
