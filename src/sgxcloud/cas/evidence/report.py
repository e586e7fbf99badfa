"""One attestation verdict: verify evidence, optionally judge it by a service policy.

This is what ``sgxcloud attest verify`` prints and what an audit entry can
record: the verdict, every reason, and what the evidence says — verified
fields when verification succeeded, the quote's unverified claims (marked
``verified: false``) when it did not, so a rejection can still name the
enclave it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sgxcloud.cas.errors import EvidenceError
from sgxcloud.cas.evidence.model import (
    SIMULATED_WARNING,
    Evidence,
    EvidenceVerifier,
    VerifiedEvidence,
)
from sgxcloud.errors import SgxcloudError
from sgxcloud.sgx.identity import EnclaveIdentity

if TYPE_CHECKING:
    from sgxcloud.cas.policy.model import ServicePolicy

Verdict = Literal["accepted", "rejected"]

NO_POLICY_SIMULATED = (
    "simulated evidence (no SGX hardware, no security) proves nothing; only a service "
    "policy with allow_simulated: true accepts it"
)


@dataclass(frozen=True)
class AttestationReport:
    verdict: Verdict
    reasons: list[str]
    codes: list[str]
    evidence_format: str
    checked_at: int
    verified: VerifiedEvidence | None = None
    claimed: EnclaveIdentity | None = None
    claimed_report_data: bytes | None = None
    service: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    @property
    def simulated(self) -> bool:
        return self.evidence_format == "simulated"

    @property
    def exit_code(self) -> int:
        return 0 if self.accepted else 1

    @property
    def identity(self) -> EnclaveIdentity | None:
        return self.verified.identity if self.verified else self.claimed

    def to_dict(self) -> dict[str, Any]:
        identity = self.identity
        report_data = self.verified.report_data if self.verified else self.claimed_report_data
        out: dict[str, Any] = {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "reason_codes": list(self.codes),
            "simulated": self.simulated,
            "evidence_format": self.evidence_format,
            # Simulated evidence is never "verified": nothing was checked but its shape.
            "verified": self.verified is not None and not self.simulated,
            "tcb_status": self.verified.tcb_status if self.verified else None,
            "advisory_ids": list(self.verified.advisory_ids) if self.verified else [],
            "mrenclave": identity.mrenclave if identity else None,
            "mrsigner": identity.mrsigner if identity else None,
            "isvprodid": identity.isvprodid if identity else None,
            "isvsvn": identity.isvsvn if identity else None,
            "debug": identity.debug if identity else None,
            "attributes": identity.attributes if identity else None,
            "report_data": report_data.hex() if report_data is not None else None,
            "fmspc": self.verified.fmspc if self.verified and self.verified.fmspc else None,
            "service": self.service,
            "checked_at": self.checked_at,
        }
        if self.simulated:
            out["WARNING"] = SIMULATED_WARNING
        out.update(self.extra)
        return out


def check_evidence(
    evidence: Evidence,
    verifier: EvidenceVerifier,
    now: int,
    service: ServicePolicy | None = None,
) -> AttestationReport:
    """Verify ``evidence`` at ``now`` and, with a ``service``, evaluate its policy.

    Without a service the verdict is whether the evidence is cryptographically
    valid; simulated evidence is then always rejected.  ``CollateralError``
    propagates: without collateral there is no verdict to give.
    """
    name = service.name if service else None
    try:
        verified = verifier.verify(evidence, now)
    except EvidenceError as exc:
        claimed, claimed_data = _claims(evidence)
        return AttestationReport(
            "rejected", [str(exc)], [exc.code], evidence.format, now,
            claimed=claimed, claimed_report_data=claimed_data, service=name,
        )  # fmt: skip
    if service is None:
        if verified.simulated:
            return AttestationReport(
                "rejected", [NO_POLICY_SIMULATED], ["simulated"], evidence.format, now, verified
            )
        return AttestationReport("accepted", [], [], evidence.format, now, verified)
    from sgxcloud.cas.policy.decision import evaluate

    decision = evaluate(service, verified)
    return AttestationReport(
        "accepted" if decision.accepted else "rejected",
        list(decision.reasons), list(decision.codes), evidence.format, now, verified,
        service=name,
    )  # fmt: skip


def _claims(evidence: Evidence) -> tuple[EnclaveIdentity | None, bytes | None]:
    """What rejected evidence claims, if it can be read at all (never trusted)."""
    try:
        if evidence.format == "simulated":
            from sgxcloud.cas.evidence.simulated import parse_simulated

            return parse_simulated(evidence.raw)
        from sgxcloud.sgx.quote import parse_sgx_quote

        parsed = parse_sgx_quote(evidence.raw)
        return parsed.identity, parsed.report_data
    except SgxcloudError:
        return None, None
