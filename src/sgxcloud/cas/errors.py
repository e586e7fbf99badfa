"""Verdict-named errors of the attestation and configuration service.

Every low-level failure (dcap-qvl, YAML, JSON Schema, HTTP) is translated into
one of these at the boundary where it happens, with ``raise ... from exc``, so
callers handle a handful of verdicts and messages never carry library internals
or secret values.  The HTTP API maps them to status codes: ``PolicyError`` ->
400, ``EvidenceError`` -> 403, ``AccessDenied`` -> 403, ``ConflictError`` -> 409,
``CollateralError`` -> 503.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgxcloud.errors import SgxcloudError


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
