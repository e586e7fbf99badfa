"""Simulated evidence: what an enclave *would* claim, for machines without SGX.

A simulated document is deliberately a different format from a DCAP quote (a
small JSON document that names itself and carries a warning), so it can never
be mistaken for hardware evidence by a human or a parser.  It is not signed: it
proves nothing, and every policy rejects it unless ``allow_simulated`` is set.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from sgxcloud.cas.errors import EvidenceError, MalformedEvidenceError
from sgxcloud.cas.evidence.model import (
    SIMULATED_FORMAT,
    SIMULATED_TCB_STATUS,
    SIMULATED_WARNING,
    Evidence,
    VerifiedEvidence,
)
from sgxcloud.sgx.identity import DEBUG_ATTRIBUTE_BIT, EnclaveIdentity
from sgxcloud.sgx.quote_layout import REPORT_DATA_SIZE

_HEX32 = re.compile(r"[0-9a-f]{64}")
_FIELDS = {
    "format",
    "WARNING",
    "mrenclave",
    "mrsigner",
    "isvprodid",
    "isvsvn",
    "debug",
    "attributes",
    "report_data",
}
# Attributes of a production (non-debug) 64-bit enclave, as real quotes show.
_DEFAULT_ATTRIBUTES = "0500000000000000e700000000000000"


def make_simulated_evidence(identity: EnclaveIdentity, report_data: bytes) -> Evidence:
    """Labelled simulated evidence for ``identity`` carrying ``report_data``.

    ``report_data`` (at most 64 bytes) is zero-padded to 64, as SGX does.
    """
    if len(report_data) > REPORT_DATA_SIZE:
        raise EvidenceError(
            f"report data is {len(report_data)} bytes; SGX carries at most 64",
            code="malformed",
        )
    # Only the report data changes from one attestation to the next: the rest
    # of the document is made (and checked) once per identity.  The bytes are
    # exactly those of the whole document dumped at once.
    head, tail = _document_around_report_data(identity)
    return Evidence(
        "simulated", head + report_data.ljust(REPORT_DATA_SIZE, b"\0").hex().encode() + tail
    )


_REPORT_DATA_KEY = b'"report_data": "'


@functools.lru_cache(maxsize=64)
def _document_around_report_data(identity: EnclaveIdentity) -> tuple[bytes, bytes]:
    """The document claiming ``identity``, as the bytes before and after its report data's hex."""
    placeholder = bytes(REPORT_DATA_SIZE).hex()
    document = {
        "format": SIMULATED_FORMAT,
        "WARNING": SIMULATED_WARNING,
        "mrenclave": identity.mrenclave.lower(),
        "mrsigner": identity.mrsigner.lower(),
        "isvprodid": identity.isvprodid,
        "isvsvn": identity.isvsvn,
        "debug": identity.debug,
        "attributes": (identity.attributes or _attributes_for(identity.debug)).lower(),
        "report_data": placeholder,
    }
    _check_document(document)  # refuse to make evidence we would not read back
    raw = json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"
    # report_data is the last member, so its key's last occurrence is the member itself.
    head, key, rest = raw.rpartition(_REPORT_DATA_KEY)
    return head + key, rest[len(placeholder) :]


def _attributes_for(debug: bool) -> str:
    first = int(_DEFAULT_ATTRIBUTES[:2], 16)
    first = first | DEBUG_ATTRIBUTE_BIT if debug else first & ~DEBUG_ATTRIBUTE_BIT
    return f"{first:02x}" + _DEFAULT_ATTRIBUTES[2:]


def parse_simulated(raw: bytes) -> tuple[EnclaveIdentity, bytes]:
    """Identity and report data of a simulated document; strict about shape."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvidenceError("simulated evidence is not valid JSON") from exc
    if not isinstance(document, dict):
        raise MalformedEvidenceError("simulated evidence must be a JSON object")
    _check_document(document)
    identity = EnclaveIdentity(
        mrenclave=document["mrenclave"],
        mrsigner=document["mrsigner"],
        isvprodid=document["isvprodid"],
        isvsvn=document["isvsvn"],
        debug=document["debug"],
        attributes=document["attributes"],
    )
    return identity, bytes.fromhex(document["report_data"])


def _check_document(doc: dict[str, Any]) -> None:
    def bad(why: str) -> MalformedEvidenceError:
        return MalformedEvidenceError(f"simulated evidence: {why}")

    if set(doc) != _FIELDS:
        # Our own names only: the sender's member names would be its text in the
        # audit entry of whichever policy it names (red team rt9 finding F2).
        missing, extra = sorted(_FIELDS - set(doc)), len(set(doc) - _FIELDS)
        raise bad(f"fields missing {missing} or {extra} unexpected")
    if doc["format"] != SIMULATED_FORMAT or doc["WARNING"] != SIMULATED_WARNING:
        raise bad(f"format must be {SIMULATED_FORMAT!r} with its warning")
    for name in ("mrenclave", "mrsigner"):
        if not isinstance(doc[name], str) or not _HEX32.fullmatch(doc[name]):
            raise bad(f"{name} must be 64 lower-case hex digits")
    for name in ("isvprodid", "isvsvn"):
        value = doc[name]
        if type(value) is not int or not 0 <= value <= 0xFFFF:
            raise bad(f"{name} must be an integer 0..65535")
    if type(doc["debug"]) is not bool:
        raise bad("debug must be true or false")
    attributes = doc["attributes"]
    if not isinstance(attributes, str) or not re.fullmatch(r"[0-9a-f]{32}", attributes):
        raise bad("attributes must be 32 lower-case hex digits")
    if bool(int(attributes[:2], 16) & DEBUG_ATTRIBUTE_BIT) != doc["debug"]:
        raise bad("debug disagrees with the attributes' debug bit")
    report_data = doc["report_data"]
    if not isinstance(report_data, str) or not re.fullmatch(r"[0-9a-f]{128}", report_data):
        raise bad("report_data must be 128 lower-case hex digits (64 bytes)")


class SimulatedVerifier:
    """Reads simulated evidence; vouches only that it is well formed.

    The result has ``simulated=True`` and TCB status ``Simulated``; deciding
    whether that is acceptable is the policy's job (``allow_simulated``).
    """

    def verify(self, evidence: Evidence, now: int) -> VerifiedEvidence:
        if evidence.format != "simulated":
            raise EvidenceError("this verifier only reads simulated evidence", code="wrong-format")
        identity, report_data = parse_simulated(evidence.raw)
        return VerifiedEvidence(
            identity=identity,
            report_data=report_data,
            tcb_status=SIMULATED_TCB_STATUS,
            advisory_ids=(),
            simulated=True,
            verified_at=now,
        )
