"""readers' consent for the audit view; per-principal re-check sweeps

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Red team rt7 findings 4 and 5.  Listing a reader needed no consent, and every
policy listing a principal put its entries in that principal's audit list and
verify: anyone could fill a stranger's audit view (and make each of their audit
calls cost ~100 µs per policy) and push their own entries out of the verify
window.  From here ``policy_access`` holds a policy's signed owners and the
readers who consented (with ``sgxcloud policy consent``, as co-owners do);
readers listed before this version never consented, so their rows go (they
still read the policy document; an owner re-applies with their consent to give
them its entries again).

``audit_sweeps`` keeps, per principal, where its verify stopped re-checking
its older entries, with an HMAC tag under the master key; a row whose tag does
not check restarts that principal's sweep from the first entry.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_sweeps",
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("round", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("principal", name=op.f("pk_audit_sweeps")),
    )
    bind = op.get_bind()
    policies = sa.table("policies", sa.column("name", sa.String()), sa.column("owners", sa.Text()))
    access = sa.table(
        "policy_access", sa.column("principal", sa.String()), sa.column("policy", sa.String())
    )
    owners = {
        name: set(json.loads(listed))
        for name, listed in bind.execute(sa.select(policies.c.name, policies.c.owners)).all()
    }
    for principal, policy in bind.execute(sa.select(access.c.principal, access.c.policy)).all():
        if principal not in owners.get(policy, set()):
            bind.execute(
                sa.delete(access).where(access.c.principal == principal, access.c.policy == policy)
            )


def downgrade() -> None:
    op.drop_table("audit_sweeps")
