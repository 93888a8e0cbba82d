"""The seed's audit functions, as thin calls on the current app's audit log.

Inside a request they fill in the request id, IP, user agent, method, path
and principal themselves; outside one (a script, a job) they still work in
an app context.
"""

from __future__ import annotations

from typing import Any

from .events import AuditEntry, AuditEventType, AuditStatus, Severity
from .service import current_audit


def create_audit_log(entry: AuditEntry | dict[str, Any], *, durable: bool = False) -> AuditEntry | None:
    """Record an entry (a dict of entry fields, or an :class:`AuditEntry`).

    Returns the recorded (redacted) entry, or None when auditing is off.
    Raises TypeError for unknown fields or a missing event_type. Each call
    records a new entry with a new ``id`` (an ``id`` given is replaced: it is
    the row's storage key, and a second row under it would be skipped, a
    hole in the hash chain).
    """
    fields = entry.as_row() if isinstance(entry, AuditEntry) else dict(entry)
    for writer_field in ("id", "chain_id", "seq", "logged_at", "prev_hash", "entry_hash"):
        fields.pop(writer_field, None)
    return current_audit().record(fields, durable=durable)


def log_auth_event(
    event_type: AuditEventType | str,
    user_id: str | int | None = None,
    email: str | None = None,
    status: AuditStatus | str = AuditStatus.SUCCESS,
    details: dict[str, Any] | None = None,
) -> AuditEntry | None:
    """A login, logout, failed login, password or MFA change."""
    fields: dict[str, Any] = {
        "event_type": str(event_type),
        "status": status,
        "severity": Severity.INFO if status == AuditStatus.SUCCESS else Severity.WARNING,
        "user_email": email,
        "details": details,
    }
    if user_id is not None:
        fields["user_id"] = str(user_id)
    return current_audit().record(fields)


def log_data_change(
    event_type: AuditEventType | str,
    resource: str,
    resource_id: str | int | None,
    changes: dict[str, Any] | None,
    user_id: str | int | None = None,
    *,
    on_commit: bool = False,
) -> AuditEntry | None:
    """A create, update or delete of ``resource``; ``changes`` as ``{field: {"old": ..., "new": ...}}``.

    Written on the audit log's own connection at once, so an attempt is
    recorded even if the app's transaction rolls back. ``on_commit=True``
    waits for the Flask-SQLAlchemy session instead: recorded when it
    commits, or as ROLLED_BACK when it rolls back (returns None then).
    """
    fields: dict[str, Any] = {
        "event_type": str(event_type),
        "resource": resource,
        "resource_id": None if resource_id is None else str(resource_id),
        "changes": changes,
    }
    if user_id is not None:
        fields["user_id"] = str(user_id)
    return current_audit().record(fields, on_commit=on_commit)


def log_security_alert(
    message: str, severity: Severity | str = Severity.WARNING, details: dict[str, Any] | None = None
) -> AuditEntry | None:
    """A SECURITY_ALERT entry, written before this returns (alerts must not wait in a buffer)."""
    return current_audit().record(
        {
            "event_type": AuditEventType.SECURITY_ALERT,
            "status": AuditStatus.FAILURE,
            "severity": severity,
            "message": message,
            "details": details,
        },
        durable=True,
    )


def get_audit_stats() -> dict[str, Any]:
    """Totals, success/failure rates, per event type, user and resource, and the writer's figures."""
    return dict(current_audit().stats(include_users=True))


def reset_audit_stats() -> None:
    current_audit().reset_stats()


def start_audit_log_flushing() -> None:
    """Start the background flush thread now (it otherwise starts with the first entry)."""
    audit = current_audit()
    audit.engine()
    audit.writer.start()


def stop_audit_log_flushing() -> None:
    """Stop the flush thread and write what remains."""
    current_audit().writer.stop()
