"""Create the audit log table.

Revision ID: fr_0001_audit_log (was 0001, renamed by env.py on upgrade)
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "fr_0001_audit_log"
down_revision = None
branch_labels = ("flask_resilience",)
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "resilience_audit_log",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("chain_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.Column("logged_at", Timestamp, nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(255)),
        sa.Column("user_email", sa.String(320)),
        sa.Column("resource", sa.String(255)),
        sa.Column("resource_id", sa.String(255)),
        sa.Column("method", sa.String(16)),
        sa.Column("path", sa.String(2048)),
        sa.Column("endpoint", sa.String(255)),
        sa.Column("http_status", sa.Integer),
        sa.Column("ip", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("request_id", sa.String(128)),
        sa.Column("changes", sa.JSON),
        sa.Column("details", sa.JSON),
        sa.Column("message", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_resilience_audit_occurred_at", "resilience_audit_log", ["occurred_at"])
    op.create_index("ix_resilience_audit_user_occurred", "resilience_audit_log", ["user_id", "occurred_at"])
    op.create_index(
        "ix_resilience_audit_event_occurred", "resilience_audit_log", ["event_type", "occurred_at"]
    )
    op.create_index("ix_resilience_audit_request_id", "resilience_audit_log", ["request_id"])
    op.create_index("ix_resilience_audit_chain_seq", "resilience_audit_log", ["chain_id", "seq"], unique=True)


def downgrade() -> None:
    op.drop_table("resilience_audit_log")
