"""Tables of the attestation and configuration service.

Rows hold only what may rest on disk: policy texts (which name secrets but
never carry their values), secrets sealed under the master key, nonces, and
the hash-chained audit log.  The schema itself is owned by the Alembic
migrations in :mod:`sgxcloud.cas.migrations`; these classes must match them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names keep Alembic migrations identical on SQLite and
# PostgreSQL.
NAMING = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PolicyRow(Base):
    """The current version of one named policy."""

    __tablename__ = "policies"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    policy_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    # JSON list of the principal ids of the owners who signed (see migration 0002)
    owners: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_by: Mapped[str] = mapped_column(String(200), nullable=False)
    # the validated document, tagged with the code that validated it (migration 0008)
    compiled: Mapped[str | None] = mapped_column(Text, nullable=True)


class PolicyAccessRow(Base):
    """Whose audit view a current policy is in: its signed owners and consenting readers.

    A reader listed without their consent may read the policy document but does
    not get its entries in their audit list or verify (red team rt7 finding 4/5:
    anyone could otherwise fill a stranger's audit view, one row each).

    Keyed by principal first, so finding the policies a caller may read is an
    index range over that caller's rows, whatever other tenants store (see
    migration 0004).
    """

    __tablename__ = "policy_access"

    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    policy: Mapped[str] = mapped_column(String(200), primary_key=True)


class PolicyVersionRow(Base):
    """Every version a policy ever had, deletions included (``text`` empty)."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_policy_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    policy_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    predecessor_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    applied_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    applied_by: Mapped[str] = mapped_column(String(200), nullable=False)


class SecretRow(Base):
    """One secret of one policy, sealed (envelope encryption, see secrets.py)."""

    __tablename__ = "secrets"

    policy: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    master_key_id: Mapped[str] = mapped_column(String(32), nullable=False)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    spec_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


class NonceRow(Base):
    """A challenge handed to an enclave; usable once, until ``expires_at``."""

    __tablename__ = "nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    issued_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    used_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class SpentSignatureRow(Base):
    """An owner's signed statement already used (a consent, a request id), until it expires."""

    __tablename__ = "spent_signatures"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)


class AuditSweepRow(Base):
    """Where each principal's verify stopped re-checking its older entries (migration 0007).

    ``tag``: HMAC under the master key over the principal and position; a row
    whose tag does not check (a database writer's) restarts the sweep from the
    first entry, which costs a longer round, never a skipped entry.
    """

    __tablename__ = "audit_sweeps"

    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    round: Mapped[int] = mapped_column(BigInteger, nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    tag: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditCheckpointRow(Base):
    """How far the audit chain was verified, tagged under the master key (migration 0005).

    One row.  Only ever moves forward; a tag that does not check (a database
    writer's) is ignored, which costs a longer walk, never a missed break.
    """

    __tablename__ = "audit_checkpoint"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    entry_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    tag: Mapped[str] = mapped_column(String(64), nullable=False)


class DeploymentRow(Base):
    """The single row naming this deployment (migration 0003): owners' signatures bind it."""

    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    deployment_id: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AuditHeadRow(Base):
    """The single row that every audit append locks: it serialises the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    entry_hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditEntryRow(Base):
    """One link of the audit chain; ``seq`` is unique, so a fork cannot commit.

    Indexed by (subject, seq) too (migration 0006; on PostgreSQL with the
    "C" collation, so prefix ranges are bytewise): an owner's entries are
    found by ranges over their policies' subjects, not by a scan of everyone's.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject_seq", "subject", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    subject: Mapped[str] = mapped_column(String(400), nullable=False)
    actor: Mapped[str] = mapped_column(String(200), nullable=False)
    outcome: Mapped[str] = mapped_column(String(20), nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    entry_hash: Mapped[str] = mapped_column(String(64), nullable=False)
