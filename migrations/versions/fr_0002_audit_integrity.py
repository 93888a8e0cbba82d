"""Audit integrity: each entry's key id and the signed checkpoint table.

Revision ID: fr_0002_audit_integrity
Revises: fr_0001_audit_log
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "fr_0002_audit_integrity"
down_revision = "fr_0001_audit_log"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("resilience_audit_log", sa.Column("key_id", sa.String(16)))
    op.create_table(
        "resilience_audit_checkpoint",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("chain_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("closing", sa.Boolean, nullable=False),
        sa.Column("key_id", sa.String(16)),
        sa.Column("signature", sa.String(64)),
    )
    op.create_index(
        "ix_resilience_audit_checkpoint_chain", "resilience_audit_checkpoint", ["chain_id", "seq"]
    )


def downgrade() -> None:
    op.drop_table("resilience_audit_checkpoint")
    with op.batch_alter_table("resilience_audit_log") as batch:
        batch.drop_column("key_id")
