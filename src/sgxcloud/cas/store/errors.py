"""Storage failures, as sgxcloud errors (never carrying row contents)."""

from __future__ import annotations

from sgxcloud.errors import SgxcloudError


class StoreError(SgxcloudError):
    """The database cannot be reached, migrated or used as configured."""

    exit_code = 2
