"""Wire shapes of the HTTP API (pydantic models, hence the OpenAPI document)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Model):
    error: str = Field(
        description="error class: bad-request, unauthenticated, forbidden, "
        "attestation-rejected, not-found, timeout, conflict, already-received (409: the "
        "signed request was received before and may have been carried out), too-large, "
        "too-many-requests, unavailable, internal"
    )
    message: str
    field: str | None = Field(None, description="the offending field (policies, requests)")
    problems: list[dict[str, str]] | None = Field(None, description="every policy problem")
    code: str | None = Field(
        None,
        description="'rejected' for every rejected attestation (reasons are never sent to "
        "the enclave: read audit entry audit_ref as an owner of the policy)",
    )
    audit_ref: str | None = Field(
        None,
        description="opaque name of the audit entry recording the decision (GET /v1/audit?ref=); "
        "replaces audit_seq, the entry's position in the chain all tenants share",
    )


class ProbeResponse(_Model):
    """A liveness or readiness probe's answer (load balancers, systemd, Kubernetes)."""

    ok: bool
    check: str
    problem: str | None = None


class HealthResponse(_Model):
    state: str
    database: str
    deployment: str = Field(
        description="this CAS deployment's id (shared by its replicas): owners' signed "
        "requests and consents must name it"
    )


class NonceResponse(_Model):
    nonce: str = Field(description="32 bytes, hex; single use")
    expires_at: int = Field(description="Unix seconds")


NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # policy and service names (policy schema)

MAX_EVIDENCE_CHARS = 64 << 10
"""Base64 characters of evidence: a DCAP quote with its PCK certificate chain
is ~4.6-5 KB (~6.7 K characters), simulated evidence ~0.5 KB; this allows
48 KiB, ten times a real quote, and nothing an enclave would never send."""


class AttestBody(_Model):
    # Five string fields: 10 separators.  Bounded before parsing (sgxcloud.web.routing).
    max_json_values: ClassVar[int] = 32

    policy: str = Field(pattern=NAME_PATTERN)
    service: str = Field(pattern=NAME_PATTERN)
    nonce: str = Field(max_length=64, description="as returned by POST /v1/nonces")
    public_key: str = Field(
        max_length=4096, description="the enclave's fresh EC P-256 public key, PEM"
    )
    evidence: str = Field(
        max_length=MAX_EVIDENCE_CHARS,
        description="base64 of a DCAP quote or of simulated evidence",
    )


class AttestResponse(_Model):
    policy: str
    service: str
    policy_hash: str
    nonce: str
    hpke_suite: str
    sealed_configuration: str = Field(
        description="base64 HPKE ciphertext of the configuration JSON, for the enclave key"
    )
    certificate: str = Field(description="PEM certificate for the enclave key, from the policy CA")
    ca_certificate: str = Field(description="PEM certificate of the policy CA")
    simulated: bool = Field(description="true if the evidence was SIMULATED (no SGX)")
    tcb_status: str
    audit_ref: str = Field(description="opaque name of the audit entry recording the decision")


class ConsentBody(_Model):
    """A co-owner's or reader's signed consent (made by 'sgxcloud policy consent')."""

    deployment: str | None = Field(
        None,
        max_length=64,
        description="id of the CAS deployment it is for (GET /v1/health); "
        "required: consents without it are of an older form and refused",
    )
    audience: str = Field(max_length=300, description="origin of the service it is for")
    principal: str | None = Field(
        None,
        max_length=80,
        description="principal id of the credential it is made with (key:sha256:<hex> of "
        "'key', cert:sha256:<hex> of 'certificate'), covered by the signature; "
        "required: consents without it (sgxcloud-cas-owner-consent-v2) are refused",
    )
    policy: str = Field(pattern=NAME_PATTERN)
    policy_hash: str = Field(pattern="^[0-9a-f]{64}$")
    expires_at: int = Field(description="Unix seconds; at most 7 days ahead")
    key: str | None = Field(
        None, max_length=8192, description="base64 DER SubjectPublicKeyInfo of the signer"
    )
    certificate: str | None = Field(
        None, max_length=16384, description="base64 DER client certificate of the signer"
    )
    signature: str = Field(max_length=2048, description="base64 signature over the statement")


class PolicyApplyBody(_Model):
    # The policy text is one string; 32 consents of 9 fields: ~600 separators.
    max_json_values: ClassVar[int] = 1024

    policy: str = Field(max_length=1 << 20, description="the policy document (YAML or JSON text)")
    consents: list[ConsentBody] = Field(
        default_factory=list,
        max_length=32,
        description="one consent per owner the policy adds, other than the signer of the request",
    )


class PolicyApplyResponse(_Model):
    name: str
    version: int
    policy_hash: str
    created: bool
    generated_secrets: list[str]


class SecretMetadata(_Model):
    name: str
    kind: str
    imported_from: str | None
    created_at: int | None
    master_key_id: str | None


class PolicyResponse(_Model):
    name: str
    version: int
    policy_hash: str
    text: str
    updated_at: int
    updated_by: str
    secrets: list[SecretMetadata] = Field(description="metadata only; values never leave")
    ca_certificate: str


class AuditEntryModel(_Model):
    """An audit entry about a policy the caller owns or reads.

    Named by ``ref``; its position in the chain (and the hashes, which would
    give the position away) are the operator's: ``sgxcloud audit show``.
    """

    ref: str = Field(description="opaque name of the entry (what an enclave is told)")
    at: int
    kind: str
    subject: str
    actor: str
    outcome: str
    detail: dict[str, Any]


class AuditVerifyResponse(_Model):
    """Whether what this call checks of the audit chain is intact (entries appended
    since the last verified position, and the caller's own latest older entries
    with their successors' links; docs/cas/protocol.md); never where a break is
    or how long the chain is."""

    ok: bool
    problems: list[dict[str, str]] = Field(
        description="one {'problem': kind} per kind of break found (operators see where with "
        "'sgxcloud audit verify'); empty when ok"
    )
    round: int = Field(
        description="the caller's re-check round this call worked in (each round re-checks "
        "every entry about the caller's policies once, 1000 older ones per call)"
    )
    round_complete: bool = Field(
        description="this call finished the round: with ok, every entry about the caller's "
        "policies was re-checked in it and the chain since the last verified position is "
        "intact; the next call starts round + 1"
    )
    round_left: int = Field(
        description="entries about the caller's policies the round still has to re-check "
        "(0 when complete; counted up to 100000, which then means at least that many); "
        "each call re-checks up to 1000 of them"
    )
