"""Persistence of the attestation and configuration service (SQLAlchemy + Alembic)."""

from sgxcloud.cas.store.errors import StoreError
from sgxcloud.cas.store.repository import (
    REPLICA_CLOCK_MARGIN,
    AuditHead,
    Database,
    DuplicateRow,
    Repository,
    SealedSecret,
    StoredPolicy,
)

__all__ = [
    "REPLICA_CLOCK_MARGIN",
    "AuditHead",
    "Database",
    "DuplicateRow",
    "Repository",
    "SealedSecret",
    "StoreError",
    "StoredPolicy",
]
