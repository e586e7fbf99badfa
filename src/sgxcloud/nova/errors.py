"""Errors of the Nova layer (usage, Placement reads), under one root."""

from __future__ import annotations

from sgxcloud.errors import SgxcloudError


class NovaLayerError(SgxcloudError):
    """Root of the errors the Nova layer raises to its callers."""

    exit_code = 1


class UsageError(NovaLayerError):
    """Usage could not be computed from what the cloud returned."""
