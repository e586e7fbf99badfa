"""Storage failures, as sgxcloud errors (never carrying row contents).

Under the CAS root (:class:`~sgxcloud.cas.errors.CasError`); the HTTP API
answers 503 ``unavailable`` for every one of them.  ``DuplicateRow`` is
re-exported by ``sgxcloud.cas.store`` (and ``.repository``), ``BackupError``
by ``sgxcloud.cas.backup``.
"""

from __future__ import annotations

from sgxcloud.cas.errors import CasError


class StoreError(CasError):
    """The database cannot be reached, migrated or used as configured."""

    exit_code = 2


class DuplicateRow(StoreError):
    """A row that must be unique already exists (a concurrent writer won)."""


class BackupError(StoreError):
    """A backup or restore could not be made; nothing was left half-written."""
