"""MySQL / MariaDB: store the audit tables in utf8mb4 whatever the database's default.

A database created with a latin1 (or 3-byte utf8) default made the first two
revisions create latin1 tables, which refuse text outside latin1 (an accented
name in a user id, an emoji in a captured body): such entries were
quarantined. Other databases are left as they are.

Revision ID: fr_0003_utf8mb4
Revises: fr_0002_audit_integrity
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "fr_0003_utf8mb4"
down_revision = "fr_0002_audit_integrity"
branch_labels = None
depends_on = None

TABLES = ("resilience_audit_log", "resilience_audit_checkpoint")


def upgrade() -> None:
    if op.get_context().dialect.name not in ("mysql", "mariadb"):
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")


def downgrade() -> None:
    """Nothing: converting back could not keep text outside the old character set."""
