"""how far the audit chain was verified, kept across restarts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

``GET /v1/audit/verify`` checks only what was appended since the position
verified last (red team rt5 finding 3).  That position is kept here too,
with an HMAC tag under a key derived from the master key, so a restart (or
another replica) resumes from it instead of walking the whole chain again.
A row whose tag does not check is ignored.  Seeded with the empty chain.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    checkpoint = op.create_table(
        "audit_checkpoint",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoint")),
    )
    op.bulk_insert(checkpoint, [{"id": 1, "seq": 0, "entry_hash": "0" * 64, "tag": ""}])


def downgrade() -> None:
    op.drop_table("audit_checkpoint")
