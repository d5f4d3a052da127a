"""sources: pool mode, transaction or session (issue 11); sources that exist keep session pooling

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing sources were served with session pooling: they keep it until an admin changes it.
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pool_mode", sa.String(length=16), nullable=False, server_default="session")
        )


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("pool_mode")
