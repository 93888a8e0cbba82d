"""``@audited`` and blueprint-wide auditing: the Flask glue of the audit log."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

from flask import Blueprint, Response, current_app, make_response, request
from werkzeug.exceptions import HTTPException

from . import transaction
from .events import AuditEventType, AuditStatus, Severity
from .service import current_audit

F = TypeVar("F", bound=Callable[..., Any])
_TRANSACTIONS_ENDED = "\x00transactions ended"  # never a view argument's name


def audited(
    event_type: AuditEventType | str,
    *,
    resource: str | None = None,
    resource_id_from: str | Callable[..., Any] | None = None,
    include_body: bool = False,
    include_query: bool = False,
    durable: bool = False,
    on_commit: bool = False,
) -> Callable[[F], F]:
    """Record one entry per call of the view, with its response status.

    ``resource_id_from`` names a view argument (``"payment_id"``) or is a
    callable given the view's keyword arguments. ``durable=True`` writes the
    entry before the response leaves. An exception is recorded as a FAILURE
    before it propagates. ``on_commit=True`` follows the Flask-SQLAlchemy
    session: an entry whose transaction rolled back (in the view, or later
    when it ends) is recorded as ROLLED_BACK.
    """

    def decorator(view: F) -> F:
        def record(kwargs: dict[str, Any], status: int, error: BaseException | None) -> None:
            details = _request_details(include_body, include_query)
            if error is not None:
                details["error"] = type(error).__name__
            fields = {
                "event_type": str(event_type),
                "status": AuditStatus.SUCCESS if status < 400 else AuditStatus.FAILURE,
                "severity": Severity.INFO if status < 500 else Severity.ERROR,
                "resource": resource,
                "resource_id": _resource_id(resource_id_from, kwargs),
                "http_status": status,
                "details": details or None,
            }
            ended = kwargs.pop(_TRANSACTIONS_ENDED, None)
            if on_commit and ended is not None:
                outcome = transaction.outcome_since(transaction.app_session(), ended)
                if outcome is None:  # the view left its transaction open: follow it
                    current_audit().record(fields, durable=durable, on_commit=True)
                    return
                if outcome is AuditStatus.ROLLED_BACK:
                    fields["status"] = AuditStatus.ROLLED_BACK
            current_audit().record(fields, durable=durable)

        def before(kwargs: dict[str, Any]) -> dict[str, Any]:
            if not on_commit:
                return kwargs
            return {**kwargs, _TRANSACTIONS_ENDED: transaction.transactions_ended(transaction.app_session())}

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            seen = before(kwargs)
            try:
                # Async views run through Flask's own route (ensure_sync): one wrapper for both.
                response = make_response(current_app.ensure_sync(view)(*args, **kwargs))
            except BaseException as exc:
                record(seen, _status_of(exc), exc)
                raise
            record(seen, response.status_code, None)
            return response

        return cast(F, wrapper)

    return decorator


def audit_blueprint(
    blueprint: Blueprint,
    event_type: AuditEventType | str = AuditEventType.ADMIN,
    *,
    include_body: bool = True,
    include_query: bool = True,
) -> Blueprint:
    """Audit every request to the views of ``blueprint`` (the seed's
    ``auditMiddleware`` on ``/api/admin``); returns the blueprint."""

    def record(response: Response) -> Response:
        record_request(event_type, response.status_code, include_body, include_query)
        return response

    blueprint.after_request(record)
    return blueprint


def record_request(
    event_type: AuditEventType | str, status: int, include_body: bool, include_query: bool
) -> None:
    """One entry for the current request (used by blueprint and prefix auditing)."""
    details = _request_details(include_body, include_query)
    current_audit().record(
        {
            "event_type": str(event_type),
            "status": AuditStatus.SUCCESS if status < 400 else AuditStatus.FAILURE,
            "severity": Severity.INFO if status < 500 else Severity.ERROR,
            "http_status": status,
            "details": details or None,
        }
    )


def _request_details(include_body: bool, include_query: bool) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if include_query and request.query_string:
        try:
            query = request.args.to_dict(flat=False)
        except UnicodeDecodeError:
            # Raw bytes that are not UTF-8 (werkzeug cannot build request.args):
            # recorded as decoded with replacement, never a 500 after the view ran.
            query = parse_qs(request.query_string.decode("utf-8", "replace"), keep_blank_values=True)
        if query:
            details["query"] = query
    if include_body:
        details.update(current_audit().capture_body())
    return details


def _resource_id(source: str | Callable[..., Any] | None, kwargs: dict[str, Any]) -> str | None:
    if source is None:
        return None
    value = source(**kwargs) if callable(source) else kwargs.get(source)
    return None if value is None else str(value)


def _status_of(error: BaseException) -> int:
    return error.code or 500 if isinstance(error, HTTPException) else 500
