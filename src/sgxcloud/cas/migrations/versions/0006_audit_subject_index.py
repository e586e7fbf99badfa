"""audit entries indexed by subject

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

``GET /v1/audit`` lists the entries about the caller's policies.  It filtered
every entry after the cursor by subject, so each request cost what all
tenants had logged (~0.25 µs per entry on SQLite: 78 ms at 300,000 entries,
for an owner with none).  With an index on (subject, seq) each policy's
entries are index ranges.  On PostgreSQL the index uses the "C" collation:
the prefix range ``name/`` .. ``name0`` is then bytewise whatever the
database's locale (the queries use the same collation).  Building it reads
the whole log once, at the first start after the upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_audit_log_subject_seq", "audit_log", [sa.text('subject COLLATE "C"'), "seq"]
        )
    else:
        op.create_index("ix_audit_log_subject_seq", "audit_log", ["subject", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_subject_seq", table_name="audit_log")
