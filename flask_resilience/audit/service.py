"""One app's audit log: builds entries from the request, redacts, counts, queues."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import has_request_context, request
from sqlalchemy import Engine, create_engine, inspect

from ..context import current_principal, current_request_id
from ..state import get_state
from ..stores.sql import Database
from .events import AuditEntry, AuditStatus
from .redact import Redactor
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
                "success_rate": round(success / total, 4) if total else 0.0,
                "failure_rate": round(failure / total, 4) if total else 0.0,
                "by_event_type": dict(self.event_types),
                "by_resource": dict(self.resources),
            }
            if include_users:
                data["by_user"] = dict(self.users)
            return data


def _bounded(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < _MAX_TRACKED:
        counter[key] += 1
    else:
        counter["(other)"] += 1


class AppAudit:
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
        self.stats = AuditStats()
        self._engine_lock = threading.Lock()

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
                        engine = create_engine(f"sqlite:///{self.fallback_sqlite}")
                        self.writer.prepare = _migrate_if_missing
                    else:  # integrity hook: one clear error when the tables were never created
                        self.writer.prepare = check_tables
                    self.writer.engine = engine
        return self.writer.engine

    # -- recording --------------------------------------------------------------------

    def record(self, fields: dict[str, Any], *, durable: bool = False) -> AuditEntry | None:
        """Build, redact and queue an entry; None when auditing is off.

        Raises TypeError for unknown fields (a bug in the caller, not input).
        """
        if not self.enabled:
            return None
        if has_request_context():
            fields = {**self._from_request(), **fields}
        entry = AuditEntry.from_mapping(self.redactor.fields(fields))
        if self.writer.engine is None:
            self.engine()
        self.stats.count(entry)
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

    def snapshot(self, include_users: bool) -> dict[str, Any]:
        last = self.writer.last_flush
        return {
            **self.stats.snapshot(include_users),
            **self.writer.counts(),
            "queue_size": self.writer.queue_size(),
            "last_flush_at": last.isoformat() if isinstance(last, datetime) else None,
            "enabled": self.enabled,
        }

    def stop(self) -> None:
        self.writer.stop()


def table_exists(engine: Engine) -> bool:
    return inspect(engine).has_table(TABLE_NAME)


def _migrate_if_missing(engine: Engine) -> None:
    from .migrate import upgrade  # noqa: PLC0415 (Alembic is only needed here)

    if missing_tables(engine):
        upgrade(engine)


def current_audit() -> AppAudit:
    return get_state().audit
