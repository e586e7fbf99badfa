"""owners who signed; single-use signed statements

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

From this revision on, ``policies.owners`` holds only the owners who proved
possession of their key (each listed owner must sign the version that adds
them).  Rows written before could list owners on their creator's word alone,
so they keep only the one owner known to have signed: the last updater.  The
others regain access when an owner re-applies the policy with their consent.

``spent_signatures`` records owners' signed statements (consents, and request
ids) that were already used, until they expire, so none is accepted twice —
across every replica sharing the database.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spent_signatures",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spent_signatures")),
    )
    op.create_index(
        op.f("ix_spent_signatures_expires_at"), "spent_signatures", ["expires_at"], unique=False
    )
    policies = sa.table(
        "policies",
        sa.column("name", sa.String()),
        sa.column("owners", sa.Text()),
        sa.column("updated_by", sa.String()),
    )
    connection = op.get_bind()
    for name, owners, updated_by in connection.execute(
        sa.select(policies.c.name, policies.c.owners, policies.c.updated_by)
    ).all():
        signed = [updated_by] if updated_by in json.loads(owners) else []
        connection.execute(
            policies.update().where(policies.c.name == name).values(owners=json.dumps(signed))
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_spent_signatures_expires_at"), table_name="spent_signatures")
    op.drop_table("spent_signatures")
