"""Typed failures of the clean room core.

Every message is safe to show to any party: it names fields, datasets,
counts and reasons, never an identifier (raw or keyed-hashed), a key or a
data value that could single out a person.
"""

from __future__ import annotations

from typing import Any

from sgxcloud.errors import InputError, SgxcloudError


class CleanroomError(SgxcloudError):
    """Root of every clean room failure."""


class DefinitionError(InputError, CleanroomError):
    """The collaboration definition is invalid; ``field`` is a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"definition: {field}: {message}" if field else f"definition: {message}")


class ApprovalError(CleanroomError):
    """Approvals are missing or do not match the definition and enclaves."""

    exit_code = 3

    def __init__(
        self, message: str, *, missing: tuple[str, ...] = (), invalid: tuple[str, ...] = ()
    ) -> None:
        self.missing = missing
        self.invalid = invalid
        super().__init__(message)


class QueryError(InputError, CleanroomError):
    """A query document is malformed (bad JSON shape, unknown attribute...)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"query: {field}: {message}" if field else f"query: {message}")


REFUSAL_REASONS = ("not_allowed", "budget", "collaboration_budget", "differencing", "suppressed")
"""Why a well-formed query released nothing.

``not_allowed``: the analyst may not run this template, or it is not in the
definition; ``budget``: the analyst's differential-privacy budget would be
exceeded (its ε or, under the Gaussian mechanism, its δ);
``collaboration_budget``: the collaboration-wide budget (every analyst
together, ``budget_per_collaboration``) would be exceeded; ``differencing``:
together with an earlier release, this one would determine a count over
fewer than k people (e.g. its cohort differs from an
earlier released one by fewer than k people); ``suppressed``: every cell would
cover fewer than k people (under DP: every noisy count is below k), so there is
nothing to release.  Under DP, ``differencing`` and ``suppressed`` refusals
have spent the query's ε.
"""


class QueryRefused(CleanroomError):
    """The engine refused to release anything for this query."""

    exit_code = 4

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.message = message
        super().__init__(f"query refused ({reason}): {message}")


class IngestError(InputError, CleanroomError):
    """A batch could not be ingested; nothing of it was kept.

    ``report`` is a JSON-able summary: counts per problem and row numbers,
    never the offending values.
    """

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        self.report = report or {}
        super().__init__(message)


class EngineLimitError(CleanroomError):
    """The engine hit its configured memory limit; nothing was released or kept."""

    exit_code = 5


class ResultSignatureError(CleanroomError):
    """A result document's signature or content does not verify."""

    exit_code = 3


class ResultDigestError(ResultSignatureError):
    """A result does not match (or cannot be checked against) an audit entry's digest."""


class AuditChainError(CleanroomError):
    """The audit log's hash chain is broken at ``seq``."""

    exit_code = 3

    def __init__(self, seq: int, message: str) -> None:
        self.seq = seq
        super().__init__(f"audit log broken at entry {seq}: {message}")


class LocalProcessError(CleanroomError):
    """A local node or coordinator process failed to start."""

    exit_code = 3


class CoordinatorUnavailable(CleanroomError):
    """The coordinator could not be reached or did not prove who it is."""
