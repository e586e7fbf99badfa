"""policies keep their validated form next to their text

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

Red team rt9 finding 4.  An attestation naming a policy this process had not
loaded recently parsed and validated its text again: a valid 247 KB policy of
3,000 identities cost 187 ms of CPU, so keyless attestations cycling 260 such
policies (more than the caches hold) cost ~270 ms each.  ``compiled`` holds the
validated document as canonical JSON, prefixed by the fingerprint of the code
that validated it (``sgxcloud.cas.policy.load.COMPILED_TAG``), written when the
policy is applied: a load whose fingerprint matches reads JSON and skips the
schema (~4 ms for the same policy).  Rows applied before this revision have
none and load from their text, as before, until their next apply.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.add_column(sa.Column("compiled", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policies") as batch:
        batch.drop_column("compiled")
