"""Clients of the CAS: the enclave side (attest, fetch, launch) and the owner side.

Installable alone with the ``client`` extra (``pip install 'sgxcloud[client]'``:
cryptography and httpx): nothing here imports the service, its database or
dcap-qvl, so an enclave image carries none of them.  The enclave side talks
to the CAS with the standard library's ``http.client`` (:class:`CasConnection`);
httpx is the owners' client's.

- :func:`fetch_configuration` -> :class:`FetchedConfiguration`: attest and
  open the sealed configuration (evidence from Gramine's ``/dev/attestation``,
  or :class:`SimulatedEvidence` when explicitly asked for), over a
  :class:`CasConnection` (TLS pinned to the CAS's CA, keep-alive) that a
  caller may reuse across calls.
- :func:`launch` / :func:`main`: ``python -m sgxcloud.cas.client launch``,
  the fixed entry point of a Gramine manifest (:func:`install` then
  :func:`run_argv`).
- :class:`OwnerClient`: signed policy management for owners.
"""

from typing import TYPE_CHECKING, Any

from sgxcloud.cas.client.connection import CasConnection, pinned_tls
from sgxcloud.cas.client.enclave import (
    ATTESTATION_DIR,
    FetchedConfiguration,
    GramineEvidence,
    SimulatedEvidence,
    choose_evidence_source,
    fetch_configuration,
)
from sgxcloud.cas.client.errors import (
    AttestationRefused,
    ClientError,
    NoEvidenceSource,
    OutcomeUnknown,
    PolicyNotFound,
    ServiceUnavailable,
    UntrustedConfiguration,
)
from sgxcloud.cas.client.launcher import LAUNCH_ENV, install, launch, main, run_argv

if TYPE_CHECKING:
    from sgxcloud.cas.client.owner import OwnerClient, consent, verify_audit_round

__all__ = [
    "ATTESTATION_DIR",
    "LAUNCH_ENV",
    "AttestationRefused",
    "CasConnection",
    "ClientError",
    "FetchedConfiguration",
    "GramineEvidence",
    "NoEvidenceSource",
    "OutcomeUnknown",
    "OwnerClient",
    "PolicyNotFound",
    "ServiceUnavailable",
    "SimulatedEvidence",
    "UntrustedConfiguration",
    "choose_evidence_source",
    "consent",
    "fetch_configuration",
    "install",
    "launch",
    "main",
    "pinned_tls",
    "run_argv",
    "verify_audit_round",
]


def __getattr__(name: str) -> Any:
    # The owners' client (httpx) loads on first use: the launcher, inside an
    # enclave, never imports httpx and its dependencies.
    if name in ("OwnerClient", "consent", "verify_audit_round"):
        from sgxcloud.cas.client import owner

        return getattr(owner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
