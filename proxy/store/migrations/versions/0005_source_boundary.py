"""sources: the last `source test` finding about the read login's own privileges

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("boundary_checked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("boundary_report", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("boundary_report")
        batch_op.drop_column("boundary_checked_at")
