"""Attestation evidence: what an enclave offers, and what a verifier vouches for.

``load_evidence`` recognises a DCAP quote (binary or hex) or a simulated
document; an ``EvidenceVerifier`` turns ``Evidence`` into ``VerifiedEvidence``
or raises ``EvidenceError``.  ``DefaultVerifier(collateral_source)`` is the
composition root: DCAP quotes to dcap-qvl (``DcapVerifier``), simulated
documents to ``SimulatedVerifier`` (always marked ``simulated``).
"""

from sgxcloud.cas.evidence.composite import DefaultVerifier, RejectingVerifier
from sgxcloud.cas.evidence.dcap import DcapVerifier
from sgxcloud.cas.evidence.model import (
    SIMULATED_FORMAT,
    SIMULATED_TCB_STATUS,
    SIMULATED_WARNING,
    Evidence,
    EvidenceFormat,
    EvidenceVerifier,
    VerifiedEvidence,
    load_evidence,
)
from sgxcloud.cas.evidence.report import AttestationReport, check_evidence
from sgxcloud.cas.evidence.simulated import SimulatedVerifier, make_simulated_evidence

__all__ = [
    "SIMULATED_FORMAT",
    "SIMULATED_TCB_STATUS",
    "SIMULATED_WARNING",
    "AttestationReport",
    "DcapVerifier",
    "DefaultVerifier",
    "Evidence",
    "EvidenceFormat",
    "EvidenceVerifier",
    "RejectingVerifier",
    "SimulatedVerifier",
    "VerifiedEvidence",
    "check_evidence",
    "load_evidence",
    "make_simulated_evidence",
]
