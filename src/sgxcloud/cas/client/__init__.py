"""Clients of the CAS: the enclave side (attest, fetch, launch) and the owner side.

Installable alone with the ``client`` extra (``pip install 'sgxcloud[client]'``:
cryptography and httpx): nothing here imports the service, its database or
dcap-qvl, so an enclave image carries none of them.

- :func:`fetch_configuration` -> :class:`FetchedConfiguration`: attest and
  open the sealed configuration (evidence from Gramine's ``/dev/attestation``,
  or :class:`SimulatedEvidence` when explicitly asked for).
- :func:`launch` / :func:`main`: ``python -m sgxcloud.cas.client launch``,
  the fixed entry point of a Gramine manifest (:func:`install` then
  :func:`run_argv`).
- :class:`OwnerClient`: signed policy management for owners.
"""

from sgxcloud.cas.client.enclave import (
    ATTESTATION_DIR,
    FetchedConfiguration,
    GramineEvidence,
    SimulatedEvidence,
    choose_evidence_source,
    fetch_configuration,
    pinned_tls,
)
from sgxcloud.cas.client.errors import (
    AttestationRefused,
    ClientError,
    NoEvidenceSource,
    PolicyNotFound,
    ServiceUnavailable,
    UntrustedConfiguration,
)
from sgxcloud.cas.client.launcher import LAUNCH_ENV, install, launch, main, run_argv
from sgxcloud.cas.client.owner import OwnerClient, consent

__all__ = [
    "ATTESTATION_DIR",
    "LAUNCH_ENV",
    "AttestationRefused",
    "ClientError",
    "FetchedConfiguration",
    "GramineEvidence",
    "NoEvidenceSource",
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
]
