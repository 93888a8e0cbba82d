"""Audit endpoints of the health blueprint."""

from __future__ import annotations

from datetime import datetime

from flask import Response, jsonify, request
from sqlalchemy import select

from ..audit.service import current_audit
from ..audit.table import audit_log
from ..problems import Problem
from .auth import admin_required, stats_access
from .blueprint import health_blueprint, no_store


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


def _time(name: str) -> datetime | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        raise Problem(400, "invalid-query", "Invalid query", f"'{name}' must be an ISO 8601 time.") from None


@health_blueprint.get("/audit/entries")
@admin_required
def audit_entries() -> Response:
    """Admin: newest first; ``user_id``, ``event_type``, ``since``, ``until``
    (ISO 8601, UTC), ``limit`` (1-1000, default 100); ``next_until`` pages on."""
    try:
        limit = int(request.args.get("limit", "100"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise Problem(400, "invalid-query", "Invalid query", "'limit' must be an integer from 1 to 1000.")
    query = select(audit_log).order_by(audit_log.c.occurred_at.desc(), audit_log.c.id).limit(limit)
    for name in ("user_id", "event_type"):
        if request.args.get(name):
            query = query.where(audit_log.c[name] == request.args[name])
    since, until = _time("since"), _time("until")
    if since is not None:
        query = query.where(audit_log.c.occurred_at >= since)
    if until is not None:
        query = query.where(audit_log.c.occurred_at < until)
    audit = current_audit()
    audit.writer.flush()  # what was recorded before this request is visible in it
    with audit.engine().connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(query)]
    entries = [
        {key: value.isoformat() + "Z" if isinstance(value, datetime) else value for key, value in row.items()}
        for row in rows
    ]
    next_until = entries[-1]["occurred_at"] if len(entries) == limit else None
    return no_store(jsonify(entries=entries, next_until=next_until))
