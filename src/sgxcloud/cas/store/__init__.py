"""Persistence of the attestation and configuration service (SQLAlchemy + Alembic)."""

from sgxcloud.cas.store.errors import StoreError
from sgxcloud.cas.store.repository import (
    Database,
    DuplicateRow,
    Repository,
    SealedSecret,
    StoredPolicy,
)

__all__ = ["Database", "DuplicateRow", "Repository", "SealedSecret", "StoreError", "StoredPolicy"]
