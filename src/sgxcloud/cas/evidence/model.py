"""The shapes every verifier shares: evidence in, verified evidence out."""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from sgxcloud.cas.errors import MalformedEvidenceError
from sgxcloud.errors import InputError
from sgxcloud.sgx.identity import EnclaveIdentity
from sgxcloud.sgx.quote import QuoteFormatError, read_header

EvidenceFormat = Literal["dcap", "simulated"]

SIMULATED_FORMAT = "sgxcloud-simulated-v1"
"""The ``format`` value of simulated evidence documents."""

SIMULATED_WARNING = "SIMULATED — no SGX hardware, no security"
"""Carried verbatim by every simulated evidence document and shown with it."""

SIMULATED_TCB_STATUS = "Simulated"
"""TCB status of simulated evidence: there is no platform, so no real status."""

MAX_EVIDENCE_BYTES = 1 << 20  # real quotes are ~5 KiB; refuse to read anything huge


@dataclass(frozen=True)
class Evidence:
    """Bytes an enclave offers as proof, tagged with how to check them."""

    format: EvidenceFormat
    raw: bytes

    @property
    def simulated(self) -> bool:
        return self.format == "simulated"


@dataclass(frozen=True)
class VerifiedEvidence:
    """What a verifier vouches for after checking evidence at ``verified_at``.

    ``simulated`` evidence vouches for nothing: it only says what a test
    claimed.  Policies reject it unless they set ``allow_simulated``.
    """

    identity: EnclaveIdentity
    report_data: bytes
    tcb_status: str
    advisory_ids: tuple[str, ...]
    simulated: bool
    verified_at: int
    quote_version: int = 0
    fmspc: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, named as in ``sgxcloud attest verify --json``."""
        return {
            "simulated": self.simulated,
            "evidence_format": "simulated" if self.simulated else "dcap",
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "mrenclave": self.identity.mrenclave,
            "mrsigner": self.identity.mrsigner,
            "isvprodid": self.identity.isvprodid,
            "isvsvn": self.identity.isvsvn,
            "debug": self.identity.debug,
            "attributes": self.identity.attributes,
            "report_data": self.report_data.hex(),
            "fmspc": self.fmspc,
            "quote_version": self.quote_version,
            "verified_at": self.verified_at,
        }


@runtime_checkable
class EvidenceVerifier(Protocol):
    """Checks evidence at time ``now`` (Unix seconds).

    Returns what the evidence proves, or raises ``EvidenceError`` (a verdict)
    or ``CollateralError`` (could not decide: collateral unavailable).
    """

    def verify(self, evidence: Evidence, now: int) -> VerifiedEvidence: ...


def load_evidence(path_or_bytes: bytes | bytearray | memoryview | str | os.PathLike) -> Evidence:
    """Evidence from a file path or bytes, recognising its format by content.

    A DCAP quote may be binary (as ``/dev/attestation/quote`` gives it) or hex
    text; simulated evidence is a JSON document with ``format`` =
    ``sgxcloud-simulated-v1``.  Anything else raises ``MalformedEvidenceError``.
    """
    if isinstance(path_or_bytes, str | os.PathLike):
        raw = _read_file(Path(path_or_bytes))
    else:
        raw = bytes(path_or_bytes)
    return sniff_evidence(raw)


def sniff_evidence(raw: bytes) -> Evidence:
    if len(raw) > MAX_EVIDENCE_BYTES:
        raise MalformedEvidenceError(f"evidence of {len(raw)} bytes is too large to be a quote")
    stripped = raw.strip()
    if stripped.startswith(b"{"):
        return _sniff_json(stripped)
    if stripped and _is_hex_text(stripped):
        raw = bytes.fromhex(stripped.decode("ascii"))
    try:
        read_header(raw)
    except QuoteFormatError as exc:
        raise MalformedEvidenceError(str(exc)) from exc
    return Evidence("dcap", raw)


def _sniff_json(text: bytes) -> Evidence:
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvidenceError("evidence looks like JSON but does not parse") from exc
    if not isinstance(document, dict) or document.get("format") != SIMULATED_FORMAT:
        raise MalformedEvidenceError(
            f"JSON evidence must be simulated evidence (format {SIMULATED_FORMAT!r})"
        )
    return Evidence("simulated", text)


def _is_hex_text(data: bytes) -> bool:
    return len(data) % 2 == 0 and all(chr(b) in string.hexdigits for b in data)


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_EVIDENCE_BYTES:
            raise MalformedEvidenceError(f"{path}: {size} bytes is too large to be a quote")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read evidence file {path}: {exc.strerror or exc}") from exc
