"""who may read each policy, indexed by principal

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

``policy_access`` holds one row per (principal, current policy) for the
policy's signed owners and the readers its text lists.  The audit endpoints
find the policies a caller may read with one index range over the caller's
rows; before, they loaded and parsed every tenant's policy on each request,
so anyone who created many policies (creation is open by default) made every
owner's audit request slow.  Existing policies are backfilled here: owners
from ``policies.owners``, readers from the text (a text that no longer loads
under today's schema gives its owners only, as its attestations fail closed
until an owner re-applies it).
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    access = op.create_table(
        "policy_access",
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("policy", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("principal", "policy", name=op.f("pk_policy_access")),
    )
    policies = sa.table(
        "policies",
        sa.column("name", sa.String()),
        sa.column("text", sa.Text()),
        sa.column("owners", sa.Text()),
    )
    rows = []
    for name, text, owners in (
        op.get_bind().execute(sa.select(policies.c.name, policies.c.text, policies.c.owners)).all()
    ):
        principals = {*json.loads(owners), *_readers(text)}
        rows.extend({"principal": p, "policy": name} for p in sorted(principals))
    if rows:
        op.bulk_insert(access, rows)


def _readers(text: str) -> list[str]:
    from sgxcloud.cas.errors import PolicyError
    from sgxcloud.cas.policy import load_policy

    try:
        return [p.id for p in load_policy(text).access.readers]
    except PolicyError:
        return []


def downgrade() -> None:
    op.drop_table("policy_access")
