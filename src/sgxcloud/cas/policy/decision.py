"""May this verified enclave run this service?  Every reason it may not.

Evaluation is pure: verified evidence and a service policy in, a ``Decision``
out.  It never stops at the first failure, so an operator sees at once that an
enclave is both the wrong build and a debug enclave on an outdated platform.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sgxcloud.cas.evidence.model import VerifiedEvidence
from sgxcloud.cas.policy.model import (
    MrenclaveIdentity,
    Policy,
    ServicePolicy,
    SignerIdentity,
)
from sgxcloud.cas.policy.placeholders import find_placeholders

ANY_ADVISORY = "*"


@dataclass(frozen=True)
class Decision:
    """``accepted`` iff ``reasons`` is empty; ``codes`` name each reason for machines.

    Codes: identity (the service lists none), mrenclave, mrsigner, isvprodid,
    isvsvn, debug, simulated, tcb_status, advisory.
    """

    accepted: bool
    reasons: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)


def evaluate(service: ServicePolicy, evidence: VerifiedEvidence) -> Decision:
    reasons = _identity_reasons(service, evidence) + _evidence_reasons(service, evidence)
    return Decision(
        accepted=not reasons,
        reasons=[text for _, text in reasons],
        codes=[code for code, _ in reasons],
    )


def evaluate_strength(
    policy: Policy, evidence: VerifiedEvidence, secret: str | None = None
) -> Decision:
    """Would ``policy`` give ``secret`` to evidence this strong, from an enclave of its own?

    The floor an exported secret keeps wherever it goes: an importer's enclave
    has its own identity, but its evidence (hardware or simulated, debug, TCB
    status, advisories) must satisfy *every* service of the exporting policy
    that uses the secret (names it in a placeholder), i.e. the strictest of
    them.  Any one of them would not do: a simulated ``dev`` service next to a
    hardware-only ``prod`` would lower ``prod``'s secret to simulated
    evidence.  A secret no service uses (or ``secret=None``) must satisfy every
    service of the policy: with no user to learn the owners' intent from, the
    strictest floor they set anywhere applies.  Otherwise one policy's
    ``allow_simulated`` (or a looser TCB tolerance) would hand out another
    policy's secret on weaker evidence than its owners accept.
    """
    services = list(policy.services.values())
    if secret is not None:
        users = [s for s in services if secret in services_secrets(s)]
        services = users or services
    if not services:
        return Decision(accepted=False, reasons=["the policy has no service"], codes=["identity"])
    reasons: list[tuple[str, str]] = []
    for service in services:
        for reason in _evidence_reasons(service, evidence):
            if reason not in reasons:
                reasons.append(reason)
    return Decision(
        accepted=not reasons,
        reasons=[text for _, text in reasons],
        codes=[code for code, _ in reasons],
    )


def services_secrets(service: ServicePolicy) -> frozenset[str]:
    """Names of the secrets ``service`` places in its argv, environment or files."""
    texts = [*service.command, *service.environment.values(), *service.files.values()]
    return frozenset(p.secret for text in texts for p in find_placeholders(text))


def _evidence_reasons(service: ServicePolicy, evidence: VerifiedEvidence) -> list[tuple[str, str]]:
    """What ``service`` holds against the evidence itself, whoever the enclave is."""
    reasons: list[tuple[str, str]] = []
    identity = evidence.identity
    if identity.debug and not service.allow_debug:
        reasons.append(
            (
                "debug",
                "debug enclave (its memory is readable by the host); "
                "the policy does not allow debug",
            )
        )
    if evidence.simulated:
        if not service.allow_simulated:
            reasons.append(
                (
                    "simulated",
                    "simulated evidence (no SGX hardware, no security); "
                    "the policy allows hardware evidence only",
                )
            )
    else:
        reasons += _tcb_reasons(service, evidence)
    return reasons


def _identity_reasons(service: ServicePolicy, evidence: VerifiedEvidence) -> list[tuple[str, str]]:
    """Empty if any accepted identity matches; otherwise why none does.

    A service with no accepted identity accepts nothing: the schema demands
    one, but a policy built any other way must not fail open.
    """
    identity = evidence.identity
    if not service.identities:
        return [("identity", "the service accepts no enclave identity")]
    by_enclave = [i for i in service.identities if isinstance(i, MrenclaveIdentity)]
    by_signer = [i for i in service.identities if isinstance(i, SignerIdentity)]
    if any(i.mrenclave == identity.mrenclave for i in by_enclave):
        return []
    signer_failures = [_signer_mismatches(i, evidence) for i in by_signer]
    if any(not failures for failures in signer_failures):
        return []
    reasons: list[tuple[str, str]] = []
    if by_enclave:
        reasons.append(
            (
                "mrenclave",
                f"MRENCLAVE {identity.mrenclave} is not one of the "
                f"{len(by_enclave)} accepted by the policy",
            )
        )
    same_signer = [
        f
        for f, i in zip(signer_failures, by_signer, strict=True)
        if i.mrsigner == identity.mrsigner
    ]
    if by_signer and not same_signer:
        reasons.append(("mrsigner", f"MRSIGNER {identity.mrsigner} is not an accepted signer"))
        # Still say what else is off, against the policy's first signer entry.
        reasons += [r for r in signer_failures[0] if r[0] != "mrsigner"]
    elif same_signer:
        closest = min(same_signer, key=len)
        reasons += closest
    return reasons


def _signer_mismatches(
    accepted: SignerIdentity, evidence: VerifiedEvidence
) -> list[tuple[str, str]]:
    identity = evidence.identity
    out: list[tuple[str, str]] = []
    if accepted.mrsigner != identity.mrsigner:
        out.append(("mrsigner", f"MRSIGNER {identity.mrsigner} is not an accepted signer"))
    if accepted.isvprodid != identity.isvprodid:
        out.append(
            (
                "isvprodid",
                f"ISVPRODID {identity.isvprodid} is not the accepted product {accepted.isvprodid}",
            )
        )
    if identity.isvsvn < accepted.min_isvsvn:
        out.append(
            ("isvsvn", f"ISVSVN {identity.isvsvn} is below the minimum {accepted.min_isvsvn}")
        )
    return out


def _tcb_reasons(service: ServicePolicy, evidence: VerifiedEvidence) -> list[tuple[str, str]]:
    reasons: list[tuple[str, str]] = []
    if evidence.tcb_status not in service.tolerated_tcb_statuses:
        tolerated = ", ".join(service.tolerated_tcb_statuses) or "none"
        reasons.append(
            (
                "tcb_status",
                f"TCB status {evidence.tcb_status} is not tolerated (tolerated: {tolerated})",
            )
        )
    if ANY_ADVISORY not in service.tolerated_advisories:
        untolerated = [a for a in evidence.advisory_ids if a not in service.tolerated_advisories]
        if untolerated:
            reasons.append(("advisory", f"advisories not tolerated: {', '.join(untolerated)}"))
    return reasons
