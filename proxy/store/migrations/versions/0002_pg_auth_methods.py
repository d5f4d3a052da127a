"""per-user PostgreSQL authentication method (scram, md5, password)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pg_auth", sa.String(length=16), nullable=False, server_default="scram")
        )
        batch_op.add_column(sa.Column("md5_verifier", sa.String(length=35), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("md5_verifier")
        batch_op.drop_column("pg_auth")
