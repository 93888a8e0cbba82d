"""The ``resilience_audit_log`` table (SQLAlchemy Core). The Alembic
migration in ``migrations/`` creates exactly this."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

# Naive UTC with microseconds everywhere (MySQL/MariaDB DATETIME defaults to
# whole seconds, which would break the hash chain on the way back).
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

TABLE_NAME = "resilience_audit_log"
metadata = MetaData()

audit_log = Table(
    TABLE_NAME,
    metadata,
    Column("id", String(36), primary_key=True),
    Column("chain_id", String(36), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("occurred_at", Timestamp, nullable=False),
    Column("logged_at", Timestamp, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("user_id", String(255)),
    Column("user_email", String(320)),
    Column("resource", String(255)),
    Column("resource_id", String(255)),
    Column("method", String(16)),
    Column("path", String(2048)),
    Column("endpoint", String(255)),
    Column("http_status", Integer),
    Column("ip", String(64)),
    Column("user_agent", String(512)),
    Column("request_id", String(128)),
    Column("changes", JSON),
    Column("details", JSON),
    Column("message", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Index("ix_resilience_audit_occurred_at", "occurred_at"),
    Index("ix_resilience_audit_user_occurred", "user_id", "occurred_at"),
    Index("ix_resilience_audit_event_occurred", "event_type", "occurred_at"),
    Index("ix_resilience_audit_request_id", "request_id"),
    Index("ix_resilience_audit_chain_seq", "chain_id", "seq", unique=True),
)
