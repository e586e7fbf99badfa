"""Choosing a verifier: one composition root dispatches on the evidence format."""

from __future__ import annotations

from sgxcloud.cas.collateral import CollateralSource
from sgxcloud.cas.errors import CollateralError, EvidenceError
from sgxcloud.cas.evidence.model import Evidence, VerifiedEvidence
from sgxcloud.cas.evidence.simulated import SimulatedVerifier


class DefaultVerifier:
    """DCAP quotes go to dcap-qvl, simulated documents to ``SimulatedVerifier``.

    Simulated evidence comes back marked ``simulated=True``; only a policy
    with ``allow_simulated`` accepts it.  Without a collateral source, DCAP
    quotes cannot be checked and raise ``CollateralError``.
    """

    def __init__(self, collateral_source: CollateralSource | None = None) -> None:
        self.collateral_source = collateral_source
        self._dcap = None
        self._simulated = SimulatedVerifier()

    def verify(self, evidence: Evidence, now: int) -> VerifiedEvidence:
        if evidence.format == "simulated":
            return self._simulated.verify(evidence, now)
        if evidence.format == "dcap":
            return self._dcap_verifier().verify(evidence, now)
        raise EvidenceError(f"unknown evidence format {evidence.format!r}", code="wrong-format")

    def _dcap_verifier(self):
        if self._dcap is None:
            if self.collateral_source is None:
                raise CollateralError("no collateral source configured: cannot verify DCAP quotes")
            from sgxcloud.cas.evidence.dcap import DcapVerifier

            self._dcap = DcapVerifier(self.collateral_source)
        return self._dcap


class RejectingVerifier:
    """Rejects everything: for services that must not accept any evidence yet."""

    def __init__(self, reason: str = "attestation is disabled on this service") -> None:
        self.reason = reason

    def verify(self, evidence: Evidence, now: int) -> VerifiedEvidence:
        raise EvidenceError(self.reason, code="disabled")
