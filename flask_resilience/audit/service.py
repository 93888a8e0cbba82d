"""One app's audit log: builds entries from the request, redacts, counts, queues."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from flask import has_request_context, request
from sqlalchemy import Engine, inspect

from .. import config as cfg
from ..context import current_principal, current_request_id
from ..state import Feature, ResilienceState
from ..stores.sql import Database, process_safe_engine
from . import transaction
from .checkpoints import store_from_config
from .events import AuditEntry, AuditStatus
from .journal import Journal
from .keys import Keyring
from .partitions import PartitionKeeper
from .redact import Redactor
from .storable import storable
from .table import TABLE_NAME, check_tables, missing_tables
from .writer import AuditWriter

_MAX_TRACKED = 1000  # distinct users / resources counted one by one; the rest as "(other)"


class AuditStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.total = 0
            self.statuses: Counter[str] = Counter()
            self.event_types: Counter[str] = Counter()
            self.users: Counter[str] = Counter()
            self.resources: Counter[str] = Counter()

    def count(self, entry: AuditEntry) -> None:
        with self._lock:
            self.total += 1
            self.statuses[str(entry.status)] += 1
            self.event_types[str(entry.event_type)] += 1
            if entry.user_id is not None:
                _bounded(self.users, entry.user_id)
            if entry.resource is not None:
                _bounded(self.resources, entry.resource)

    def snapshot(self, include_users: bool) -> dict[str, Any]:
        with self._lock:
            total = self.total
            success, failure = self.statuses[AuditStatus.SUCCESS], self.statuses[AuditStatus.FAILURE]
            data: dict[str, Any] = {
                "total": total,
                "success": success,
                "failure": failure,
                "rolled_back": self.statuses[AuditStatus.ROLLED_BACK],
                "success_rate": round(success / total, 4) if total else 0.0,
                "failure_rate": round(failure / total, 4) if total else 0.0,
                "by_event_type": dict(self.event_types),
                "by_resource": dict(self.resources),
            }
            if include_users:
                data["by_user"] = dict(self.users)
            return data


class AuditStatsSnapshot(TypedDict):
    """What ``/audit`` and ``get_audit_stats()`` report."""

    total: int
    success: int
    failure: int
    rolled_back: int
    success_rate: float
    failure_rate: float
    by_event_type: dict[str, int]
    by_resource: dict[str, int]
    by_user: NotRequired[dict[str, int]]
    written: int
    spilled: int
    replayed: int
    dropped: int
    rejected: int
    flush_errors: int
    journal_errors: int
    queue_size: int
    last_flush_at: str | None
    enabled: bool


def default_journal(instance_path: Path, engine: Engine) -> Path:
    """``<instance>/resilience-audit.<hash of the database URL>.journal``
    (the password masked: it may change, the database stays the same)."""
    url = engine.url.render_as_string(hide_password=True)
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return instance_path / f"resilience-audit.{digest}.journal"


def _bounded(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < _MAX_TRACKED:
        counter[key] += 1
    else:
        counter["(other)"] += 1


FEATURE = "audit"


class AppAudit(Feature):
    feature_name = FEATURE

    def __init__(
        self,
        *,
        enabled: bool,
        database: Database,
        writer: AuditWriter,
        redactor: Redactor,
        max_body_bytes: int,
        fallback_sqlite: Path,
    ) -> None:
        self.enabled = enabled
        self.database = database
        self.writer = writer
        self.redactor = redactor
        self.max_body_bytes = max_body_bytes
        self.fallback_sqlite = fallback_sqlite
        # The default journal (no RESILIENCE_AUDIT_SPILL_PATH) is named after the
        # database once it is known: apps sharing an instance folder must never
        # adopt each other's journals into the wrong database.
        self.journal_named_by_database = False
        self.counters = AuditStats()
        self._engine_lock = threading.Lock()

    @classmethod
    def from_config(
        cls, config: cfg.Config, database: Database, instance_path: Path, keyring: Keyring | None = None
    ) -> AppAudit:
        """``keyring``: the app's (``keys.app_keyring``); None: only the configured key."""
        spill = config[cfg.AUDIT_SPILL_PATH]
        journal = None
        if spill is None or spill.lower() != "off":
            journal = Journal(
                instance_path / "resilience-audit.journal" if spill is None else Path(spill),
                fsync=config[cfg.AUDIT_JOURNAL_FSYNC],
                max_bytes=config[cfg.AUDIT_SPILL_MAX_BYTES],
            )
        if keyring is None:
            key = config[cfg.AUDIT_HMAC_KEY]
            keyring = Keyring.of(key.encode() if key else None)
        redact_keys: tuple[str, ...] = config[cfg.AUDIT_REDACT_KEYS]
        writer = AuditWriter(
            buffer_size=config[cfg.AUDIT_BUFFER_SIZE],
            flush_interval=config[cfg.AUDIT_FLUSH_INTERVAL] / 1000,
            max_queue=config[cfg.AUDIT_MAX_QUEUE],
            journal=journal,
            hmac_key=keyring.signing,
        )
        writer.checkpoints = store_from_config(config)
        writer.partitions = PartitionKeeper(config[cfg.AUDIT_PARTITION])
        app_audit = cls(
            enabled=config[cfg.AUDIT_ENABLED],
            database=database,
            writer=writer,
            redactor=Redactor(redact_keys, config[cfg.AUDIT_REDACTOR]),
            max_body_bytes=config[cfg.AUDIT_MAX_BODY_BYTES],
            fallback_sqlite=instance_path / "resilience-audit.db",
        )
        app_audit.journal_named_by_database = journal is not None and spill is None
        return app_audit

    # -- the engine ---------------------------------------------------------------

    def engine(self) -> Engine:
        """The audit database: RESILIENCE_AUDIT_DATABASE_URI, the app's
        Flask-SQLAlchemy engine, or SQLite in the instance folder."""
        if self.writer.engine is None:
            with self._engine_lock:
                if self.writer.engine is None:
                    engine = self.database.engine()
                    if engine is None:
                        # A bare machine: SQLite in the instance folder, migrated by us.
                        self.fallback_sqlite.parent.mkdir(parents=True, exist_ok=True)
                        engine = process_safe_engine(
                            f"sqlite:///{self.fallback_sqlite}", hide_parameters=True
                        )
                        self.writer.prepare = _migrate_if_missing
                    else:  # integrity hook: one clear error when the tables were never created
                        self.writer.prepare = check_tables
                    if self.journal_named_by_database and self.writer.journal is not None:
                        self.writer.journal.rebase(default_journal(self.fallback_sqlite.parent, engine))
                    self.writer.engine = engine
        return self.writer.engine

    # -- recording --------------------------------------------------------------------

    def record(
        self, fields: dict[str, Any], *, durable: bool = False, on_commit: bool = False
    ) -> AuditEntry | None:
        """Build, redact, make storable and queue an entry; None when auditing
        is off (or, with ``on_commit``, until the app's transaction ends).

        Raises TypeError for unknown fields and ValueError for a severity or
        status outside their enums (bugs in the caller, not input).
        """
        if not self.enabled:
            return None
        if has_request_context():
            fields = {**self._from_request(), **fields}
        if on_commit:
            storable(dict(fields))  # a caller's bug shows at the call, not at the commit
            session = transaction.app_session()
            transaction.defer(session, lambda later: self.record(later, durable=durable), fields)
            return None
        return self._enqueue(AuditEntry.from_mapping(storable(self.redactor.fields(fields))), durable)

    def record_own(self, fields: dict[str, Any]) -> AuditEntry:
        """Record, durably, an entry of the extension's own whose fields hold
        only what it built (chain ids, seqs, hashes: a purge's anchors). No
        redaction, the app's redactor included: altering one would make
        ``verify`` reject what the entry states. Recorded with auditing off
        too: the log was changed (a purge from a maintenance app), and
        without the record ``verify`` could not tell the purge from a gap."""
        return self._enqueue(AuditEntry.from_mapping(storable(fields)), durable=True)

    def _enqueue(self, entry: AuditEntry, durable: bool) -> AuditEntry:
        if self.writer.engine is None:
            self.engine()
        self.counters.count(entry)
        if durable:
            self.writer.write_now(entry)
        else:
            self.writer.submit(entry)
        return entry

    def _from_request(self) -> dict[str, Any]:
        principal = current_principal()
        return {
            "method": request.method,
            "path": request.path,
            "endpoint": request.endpoint,
            "ip": request.remote_addr,
            "user_agent": (request.user_agent.string or None),
            "request_id": current_request_id(),
            "user_id": principal.user_id if principal is not None else None,
        }

    def capture_body(self) -> dict[str, Any]:
        """The request body for ``details``: JSON (redacted later) up to the
        size limit, else its size and type only."""
        length = request.content_length or 0
        content_type = request.mimetype or None
        if length > self.max_body_bytes:
            return {"body_omitted": {"bytes": length, "content_type": content_type, "reason": "too large"}}
        body = request.get_json(silent=True, cache=True)
        if body is None:
            if not length:
                return {}
            return {"body_omitted": {"bytes": length, "content_type": content_type, "reason": "not JSON"}}
        return {"body": body}

    def register(self, state: ResilienceState) -> None:
        """Become ``state``'s audit log: its stats, its background work."""
        super().register(state)
        state.stats_providers["audit"] = self.stats
        state.add_background(self)

    def stats(self, include_users: bool = False) -> AuditStatsSnapshot:
        """Counts of recorded entries and the writer's figures; per-user ones
        only with ``include_users`` (the caller is an admin)."""
        last = self.writer.last_flush
        data: dict[str, Any] = {
            **self.counters.snapshot(include_users),
            **self.writer.counts(),
            "queue_size": self.writer.queue_size(),
            "last_flush_at": last.isoformat() if isinstance(last, datetime) else None,
            "enabled": self.enabled,
        }
        return cast(AuditStatsSnapshot, data)

    def reset_stats(self) -> None:
        self.counters.reset()
        self.writer.reset_counts()

    def stop(self) -> None:
        self.writer.stop()


def table_exists(engine: Engine) -> bool:
    return inspect(engine).has_table(TABLE_NAME)


def _migrate_if_missing(engine: Engine) -> None:
    from .migrate import upgrade  # noqa: PLC0415 (Alembic is only needed here)

    if missing_tables(engine):
        upgrade(engine)


def current_audit() -> AppAudit:
    return AppAudit.of()
