"""the deployment id: which CAS owners' signatures are for

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

One random id per deployment, made once, when this revision first runs on
the database (at its creation, or on the upgrade of an older one).  Every
replica sharing the database therefore shares it, a restart keeps it, and a
backup carries it to the restored database.  Owners' signed requests and
co-owners' consents name it (``sgxcloud-cas-request-v3``,
``sgxcloud-cas-owner-consent-v2``), so what was signed for one deployment is
refused by every other, even one reached at the same origin.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    deployment = op.create_table(
        "deployment",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployment")),
    )
    # 128 random bits: two deployments never draw the same id.
    op.bulk_insert(
        deployment,
        [{"id": 1, "deployment_id": os.urandom(16).hex(), "created_at": int(time.time())}],
    )


def downgrade() -> None:
    op.drop_table("deployment")
