"""The ``resilience_audit_log`` and ``resilience_audit_checkpoint`` tables
(SQLAlchemy Core). The Alembic migrations in ``migrations/`` create exactly these."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL

# MySQL / MariaDB: utf8mb4 whatever the database's default (a latin1 table
# refuses an emoji or a CJK name); binary collation, so lookups are exact.
MYSQL_TEXT: dict[str, Any] = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# Naive UTC with microseconds everywhere (MySQL/MariaDB DATETIME defaults to
# whole seconds, which would break the hash chain on the way back).
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

TABLE_NAME = "resilience_audit_log"
CHECKPOINT_TABLE_NAME = "resilience_audit_checkpoint"
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
    Column("key_id", String(16)),  # of the HMAC key; NULL: unkeyed SHA-256
    Index("ix_resilience_audit_occurred_at", "occurred_at"),
    Index("ix_resilience_audit_user_occurred", "user_id", "occurred_at"),
    Index("ix_resilience_audit_event_occurred", "event_type", "occurred_at"),
    Index("ix_resilience_audit_request_id", "request_id"),
    Index("ix_resilience_audit_chain_seq", "chain_id", "seq", unique=True),
    **MYSQL_TEXT,
)

# Signed chain heads. Kept apart from the log so the app's role can be granted
# INSERT (and SELECT) only here: a writer that rewrites the log cannot rewrite these.
audit_checkpoint = Table(
    CHECKPOINT_TABLE_NAME,
    metadata,
    Column("id", String(36), primary_key=True),
    Column("chain_id", String(36), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("closing", Boolean, nullable=False),
    Column("key_id", String(16)),
    Column("signature", String(64)),
    Index("ix_resilience_audit_checkpoint_chain", "chain_id", "seq"),
    **MYSQL_TEXT,
)


logger = logging.getLogger("flask_resilience.audit")


def masked(url: URL) -> str:
    """``url`` for people to read: the password hidden."""
    return url.render_as_string(hide_password=True)


def describe_error(exc: BaseException) -> str:
    """A database error for a log line: the driver's error class and the first
    line of its message (SQLAlchemy's own text adds the SQL and its parameters)."""
    cause = getattr(exc, "orig", None) or exc
    message = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {message[0]}" if message else type(cause).__name__


def missing_tables(engine: Engine) -> list[str]:
    inspector = inspect(engine)
    return [name for name in (TABLE_NAME, CHECKPOINT_TABLE_NAME) if not inspector.has_table(name)]


def check_tables(engine: Engine) -> None:
    """Run once before the first write to a database we do not migrate
    ourselves: one clear error (no SQL) when the tables were never created."""
    if engine.dialect.name == "sqlite":
        return
    missing = missing_tables(engine)
    if missing:
        logger.error(
            "the audit log cannot be written: %s missing in %s; run 'flask resilience db upgrade'",
            ", ".join(missing),
            masked(engine.url),
        )
