"""Verdict-named errors of the attestation and configuration service.

Every low-level failure (dcap-qvl, YAML, JSON Schema, HTTP) is translated into
one of these at the boundary where it happens, with ``raise ... from exc``, so
callers handle a handful of verdicts and messages never carry library internals
or secret values.  The HTTP API maps them to status codes, most specific first
(``sgxcloud.cas.service.app.STATUS``): ``MalformedEvidenceError``,
``ProtocolError`` (``MalformedAttestation``), ``PolicyError`` -> 400;
``AuthenticationError`` -> 401; ``EvidenceError`` (``AttestationRejected``),
``AccessDenied`` -> 403; ``NotFound`` -> 404; ``ConflictError`` -> 409;
``CollateralError``, ``NotReady`` (``Busy``), ``StoreError`` -> 503;
``SecretsError`` -> 500 without its message.  Any other ``CasError``
(``ConfigError``, ``TlsSetupError``) answers 400.

Every error of the CAS and its clients derives from :class:`CasError`; the
storage layer's (``StoreError``, ``DuplicateRow``, ``BackupError``) live in
``sgxcloud.cas.store.errors`` and the clients' in ``sgxcloud.cas.client.errors``.
The modules that raise them re-export them under their historical names
(``sgxcloud.cas.secrets.SecretsError``, ``sgxcloud.cas.protocol.ProtocolError``,
``sgxcloud.cas.service.core.NotFound``...).  This module imports nothing but
the standard library and :mod:`sgxcloud.errors`: the enclave client imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgxcloud.errors import InputError, SgxcloudError


class CasError(SgxcloudError):
    """Root of every error raised by ``sgxcloud.cas``."""


class EvidenceError(CasError):
    """The evidence does not prove an acceptable enclave: a verdict, not a crash.

    ``str(err)`` is one short, safe verdict sentence.  ``code`` is a stable
    machine-readable reason (``signature-invalid``, ``collateral-expired``,
    ``not-sgx-enclave``...) for audit logs and JSON output; ``detail`` keeps the
    verifier's own first line for operators' debug logs and is never shown to
    the party that submitted the evidence.
    """

    exit_code = 1

    def __init__(self, message: str, *, code: str = "invalid", detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class MalformedEvidenceError(EvidenceError):
    """The input is not evidence at all (not a quote, not simulated evidence)."""

    exit_code = 2

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message, code="malformed", detail=detail)


class CollateralError(CasError):
    """Collateral could not be loaded or fetched (bad file, PCCS unreachable)."""

    exit_code = 2


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy: where (a field path) and what."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class PolicyError(CasError):
    """A policy document is invalid; the API answers 400 with ``problems``.

    ``field`` is a path such as ``services.web.identities[0].mrenclave`` (the
    first problem's); ``problems`` lists every problem found, so an author can
    fix them all in one go.
    """

    exit_code = 2

    def __init__(self, field: str, message: str, problems: list[PolicyProblem] | None = None):
        self.problems = problems or [PolicyProblem(field, message)]
        self.field = self.problems[0].field
        self.message = self.problems[0].message
        more = len(self.problems) - 1
        text = str(self.problems[0]) + (f" (and {more} more problem(s))" if more else "")
        super().__init__(text)

    @classmethod
    def from_problems(cls, problems: list[PolicyProblem]) -> PolicyError:
        return cls(problems[0].field, problems[0].message, problems)


class AccessDenied(CasError):
    """The caller is not allowed to do this to this policy."""

    exit_code = 1


class ConflictError(CasError):
    """An update named a predecessor hash that is no longer current."""

    exit_code = 1


class AuthenticationError(AccessDenied):
    """The request is unsigned, badly signed, or too old (HTTP 401)."""


class RequestAlreadyReceived(AuthenticationError):
    """A signed owner request whose id was already spent: the same request again (a
    replay, or a proxy's second copy).  The first copy may have been carried out, so
    the CAS answers it apart (409 ``already-received``), never as a refusal (rt11 F1)."""


# -- the attestation protocol ------------------------------------------------


class ProtocolError(CasError):
    """A protocol message is malformed (bad input: HTTP 400, exit status 2)."""

    exit_code = 2


class NonceRejected(EvidenceError):
    """The nonce is unknown, already used, or expired: a replay or a stale answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="nonce")


class BindingError(EvidenceError):
    """REPORTDATA does not commit to this public key and nonce."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="binding")


class MalformedAttestation(ProtocolError):
    """An attestation request that cannot be judged (bad nonce, key or evidence format).

    Still audited (``audit_seq``, told as ``audit_ref``) and its nonce, if
    well-formed, spent.
    """

    def __init__(self, message: str, *, audit_seq: int, audit_ref: str = "") -> None:
        super().__init__(message)
        self.audit_seq = audit_seq
        self.audit_ref = audit_ref


class AttestationRejected(EvidenceError):
    """The enclave may not have this configuration; ``reasons`` says every why.

    ``audit_seq`` is the entry's position (logs, operators); ``audit_ref``
    what the caller is told.
    """

    def __init__(
        self, reasons: list[str], *, code: str = "policy", audit_seq: int = 0, audit_ref: str = ""
    ) -> None:
        super().__init__("attestation rejected: " + "; ".join(reasons), code=code)
        self.reasons = reasons
        self.audit_seq = audit_seq
        self.audit_ref = audit_ref


class RejectionsLimited(CasError):
    """An attestation naming a policy whose budget of recorded rejections is spent
    (HTTP 429): it could not be judged or was judged a rejection, and is counted in
    the next rejection recorded about the policy (``unrecorded``) instead of one of its own.
    Accepted attestations never meet this."""


# -- the service ---------------------------------------------------------------


class NotReady(CasError):
    """The service is not accepting requests (starting up or shutting down)."""


class Busy(NotReady):
    """The same work is under way for another caller; retry in a moment (HTTP 503)."""


class NotFound(CasError):
    """No such policy (or service in it)."""


class ConfigError(InputError, CasError):
    """The service configuration is invalid; names the setting at fault."""


class TlsSetupError(CasError):
    """The CAS's TLS key or certificate cannot be used."""

    exit_code = 2


class SecretsError(CasError):
    """Secret material cannot be loaded, generated or opened (no values shown).

    The HTTP API answers 500 ``internal`` without this message: a master key
    problem is the operator's, not the caller's.
    """

    exit_code = 2


class MasterKeyError(SecretsError):
    """The master key is missing, malformed, or not the one that sealed a row."""


class AnswerNotVerified(CasError):
    """An answer to a signed owner request did not carry the pinned CAS's signature."""

    exit_code = 1


class SigningKeyMismatch(CasError):
    """The configured answer signing key is not the one owners pin (e.g. after a restore)."""

    exit_code = 1
