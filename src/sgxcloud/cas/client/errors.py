"""Errors of the enclave and owner clients, under the CAS root (:class:`CasError`)."""

from __future__ import annotations

from sgxcloud.cas.errors import CasError, EvidenceError


class ClientError(CasError):
    """The configuration could not be fetched (service unreachable or refused)."""

    exit_code = 1


class ServiceUnavailable(ClientError):
    """The CAS could not be reached or answered 502/503/504: worth retrying."""


class AttestationRefused(EvidenceError):
    """The CAS judged this enclave and said no.

    The enclave is not told why (that would tell anyone what a policy
    accepts); the policy's owners read the reasons in audit entry
    ``audit_ref`` (``OwnerClient.audit_entry``, ``sgxcloud audit show --ref``).
    """

    def __init__(self, message: str, *, code: str, audit_ref: str | None) -> None:
        super().__init__(message, code=code)
        self.audit_ref = audit_ref


class OutcomeUnknown(ClientError):
    """The CAS had already received this very request (409 ``already-received``): a proxy
    or network sent it twice, and the first copy may have been carried out.  Neither a
    success nor a refusal: check the outcome (``policy show``, ``audit show``) before
    signing it again.  Its own exit code (6) so scripts never take it for a failure."""

    exit_code = 6


class PolicyNotFound(ClientError):
    """The service has no policy of that name."""


class NoEvidenceSource(ClientError):
    """Not inside an SGX enclave (no /dev/attestation) and simulation not requested."""


class UntrustedConfiguration(ClientError):
    """The CAS answered for a policy this enclave does not trust (owners or hash not pinned).

    E.g. someone else created a policy under the expected name first (a squat):
    the configuration is discarded, nothing is installed.
    """
