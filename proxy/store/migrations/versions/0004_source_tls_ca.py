"""sources: verify-ca / verify-full TLS modes and a per-source CA bundle

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `tls` is a VARCHAR(16) without a CHECK constraint (models._enum): the new values
    # verify-ca and verify-full need no DDL.
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tls_ca_pem", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE sources SET tls = 'require' WHERE tls IN ('verify-ca', 'verify-full')")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("tls_ca_pem")
