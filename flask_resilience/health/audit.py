"""Audit endpoints of the health blueprint."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Response, jsonify
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ..audit.service import current_audit
from ..audit.table import audit_log
from ..problems import Problem
from .auth import admin_required, stats_access
from .blueprint import health_blueprint, no_store
from .inputs import query_text, query_time

logger = logging.getLogger("flask_resilience.health")


@health_blueprint.get("/audit")
def audit_stats() -> Response:
    """Audit statistics; per-user figures for admins only."""
    include_users = stats_access()
    return no_store(jsonify(current_audit().stats(include_users)))


@health_blueprint.post("/audit/reset")
@admin_required
def reset_audit_stats() -> Response:
    current_audit().reset_stats()
    return no_store(jsonify(reset=True))


@health_blueprint.get("/audit/entries")
@admin_required
def audit_entries() -> Response:
    """Admin: newest first; ``user_id``, ``event_type``, ``since``, ``until``
    (ISO 8601 with any offset, or an age such as ``7d``), ``limit`` (1-1000,
    default 100); ``next_until`` pages on."""
    try:
        limit = int(query_text("limit") or "100")
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise Problem(400, "invalid-query", "Invalid query", "'limit' must be an integer from 1 to 1000.")
    query = select(audit_log).order_by(audit_log.c.occurred_at.desc(), audit_log.c.id).limit(limit)
    for name in ("user_id", "event_type"):
        value = query_text(name)
        if value:
            query = query.where(audit_log.c[name] == value)
    since, until = query_time("since"), query_time("until")
    if since is not None:
        query = query.where(audit_log.c.occurred_at >= since)
    if until is not None:
        query = query.where(audit_log.c.occurred_at < until)
    audit = current_audit()
    audit.writer.flush()  # what was recorded before this request is visible in it
    try:
        with audit.engine().connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
    except SQLAlchemyError as exc:  # down, or not migrated yet: an outage, not a crash
        logger.warning("audit entries cannot be read: %s", exc)
        raise Problem(
            503,
            "audit-database-unavailable",
            "Audit database unavailable",
            f"The audit table cannot be read ({type(exc).__name__}); is the database up and migrated?",
            headers={"Retry-After": "5"},
        ) from None
    entries = [
        {key: value.isoformat() + "Z" if isinstance(value, datetime) else value for key, value in row.items()}
        for row in rows
    ]
    next_until = entries[-1]["occurred_at"] if len(entries) == limit else None
    return no_store(jsonify(entries=entries, next_until=next_until))
