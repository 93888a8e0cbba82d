"""Settings of the audit log."""

from __future__ import annotations

from typing import Any

from ..validators import (
    boolean,
    database_url,
    one_of,
    optional_callable,
    optional_str,
    positive_int,
    positive_number,
    string_list,
)
from .setting import Setting

AUDIT_ENABLED = Setting(
    "RESILIENCE_AUDIT_ENABLED",
    True,
    boolean,
    "False turns audit logging off.",
    env="ENABLE_AUDIT_LOGGING",
)
AUDIT_BUFFER_SIZE = Setting(
    "RESILIENCE_AUDIT_BUFFER_SIZE",
    100,
    positive_int,
    "Audit entries waiting that trigger a flush.",
    env="AUDIT_BUFFER_SIZE",
)
AUDIT_FLUSH_INTERVAL = Setting(
    "RESILIENCE_AUDIT_FLUSH_INTERVAL",
    5000,
    positive_int,
    "Milliseconds between audit flushes.",
    env="AUDIT_FLUSH_INTERVAL",
)
AUDIT_MAX_QUEUE = Setting(
    "RESILIENCE_AUDIT_MAX_QUEUE",
    10_000,
    positive_int,
    "Entries held in memory; beyond it they wait in the journal only (without one they are dropped "
    "and counted).",
)
AUDIT_SPILL_PATH = Setting(
    "RESILIENCE_AUDIT_SPILL_PATH",
    None,
    optional_str,
    "Base path of the per-process audit journals (write-ahead, and where entries wait while the "
    "database is down); default <instance>/resilience-audit.<hash of the database URL>.journal; 'off' "
    "keeps entries in memory only.",
)
AUDIT_SPILL_MAX_BYTES = Setting(
    "RESILIENCE_AUDIT_SPILL_MAX_BYTES",
    256 * 1024 * 1024,
    positive_int,
    "Bytes one process's journal (and, separately, its quarantine file) may hold; past it new entries "
    "are dropped, counted and told in an AUDIT_GAP entry.",
)
AUDIT_JOURNAL_FSYNC = Setting(
    "RESILIENCE_AUDIT_JOURNAL_FSYNC",
    "never",
    one_of("never", "interval", "always"),
    "fsync of the audit journal: 'never' (survives a killed process), 'interval' (about once a "
    "second) or 'always' (every entry; survives a machine crash).",
)
AUDIT_HMAC_KEY = Setting(
    "RESILIENCE_AUDIT_HMAC_KEY",
    None,
    optional_str,
    "Key for HMAC-SHA-256 entry hashes; unset: derived from SECRET_KEY (HKDF); neither: plain SHA-256.",
)
AUDIT_PREVIOUS_HMAC_KEYS = Setting[tuple[str, ...]](
    "RESILIENCE_AUDIT_PREVIOUS_HMAC_KEYS",
    (),
    string_list,
    "Retired audit HMAC keys that verify still accepts (key rotation).",
)
AUDIT_CHECKPOINT_INTERVAL = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_INTERVAL",
    1000,
    positive_int,
    "Entries between two signed checkpoints of a chain's head.",
)
AUDIT_CHECKPOINT_SECONDS = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_SECONDS",
    60.0,
    positive_number,
    "Seconds between two signed checkpoints (also while idle: verify treats a chain as live for twice this).",
)
AUDIT_CHECKPOINT_DATABASE_URI = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI",
    None,
    database_url,
    "SQLAlchemy URL of a second database for the checkpoint table; unset: the audit database.",
)
AUDIT_CHECKPOINT_SINK = Setting(
    "RESILIENCE_AUDIT_CHECKPOINT_SINK",
    None,
    optional_callable,
    "Callable (or 'module:function') also given each signed checkpoint as a dict.",
)
AUDIT_PARTITION = Setting(
    "RESILIENCE_AUDIT_PARTITION",
    "none",
    one_of("none", "month", "day"),
    "PostgreSQL range partitions of the audit table on occurred_at: none, month or day.",
)
AUDIT_REDACT_KEYS = Setting[tuple[str, ...]](
    "RESILIENCE_AUDIT_REDACT_KEYS",
    (),
    string_list,
    "Extra field names masked at any depth, besides password, token, card_number, ...",
)
AUDIT_REDACTOR = Setting(
    "RESILIENCE_AUDIT_REDACTOR",
    None,
    optional_callable,
    "Callable (or 'module:function') taking and returning an entry's fields, after the built-in redaction.",
)
AUDIT_MAX_BODY_BYTES = Setting(
    "RESILIENCE_AUDIT_MAX_BODY_BYTES",
    4096,
    positive_int,
    "Captured request bodies larger than this are recorded by size and type only.",
)

SECTION: tuple[Setting[Any], ...] = (
    AUDIT_ENABLED,
    AUDIT_BUFFER_SIZE,
    AUDIT_FLUSH_INTERVAL,
    AUDIT_MAX_QUEUE,
    AUDIT_SPILL_PATH,
    AUDIT_SPILL_MAX_BYTES,
    AUDIT_JOURNAL_FSYNC,
    AUDIT_HMAC_KEY,
    AUDIT_PREVIOUS_HMAC_KEYS,
    AUDIT_CHECKPOINT_INTERVAL,
    AUDIT_CHECKPOINT_SECONDS,
    AUDIT_CHECKPOINT_DATABASE_URI,
    AUDIT_CHECKPOINT_SINK,
    AUDIT_PARTITION,
    AUDIT_REDACT_KEYS,
    AUDIT_REDACTOR,
    AUDIT_MAX_BODY_BYTES,
)
