"""Entries that follow the app's Flask-SQLAlchemy transaction (``on_commit=True``).

By default an entry is written on its own connection at once: an attempt is
auditable even when the app's transaction rolls back. With ``on_commit=True``
it waits for the session: recorded as given when the transaction commits,
recorded as ``ROLLED_BACK`` when it rolls back or the session closes without
a commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from flask import appcontext_tearing_down, current_app
from flask.globals import app_ctx
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from .events import AuditStatus

Record = Callable[[dict[str, Any]], object]

_PENDING = "flask_resilience.audit.pending"
_ENDS = "flask_resilience.audit.ends"  # (root transactions ended, the last one's outcome)
_COMMITTED = "flask_resilience.audit.committed"
_WATCHED = "flask_resilience.audit.watched"  # the app context whose end settles idle entries


def app_session() -> Session:
    """The current Flask-SQLAlchemy session (RuntimeError when there is none)."""
    extension = current_app.extensions.get("sqlalchemy")
    if extension is None:
        raise RuntimeError("on_commit=True needs Flask-SQLAlchemy registered on the app")
    session: Session = extension.session()
    _hook(session)
    return session


def _hook(session: Session) -> None:
    if _ENDS in session.info:
        return
    session.info[_ENDS] = (0, AuditStatus.SUCCESS)
    session.info[_PENDING] = []

    def committed(session: Session) -> None:
        session.info[_COMMITTED] = True

    def ended(session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is None:  # the outermost transaction: commit, rollback or close
            committed = session.info.pop(_COMMITTED, False)
            _settle(session, AuditStatus.SUCCESS if committed else AuditStatus.ROLLED_BACK)

    event.listen(session, "after_commit", committed)
    event.listen(session, "after_transaction_end", ended)


def _settle(session: Session, outcome: AuditStatus) -> None:
    """Record what waited for the transaction that just ended."""
    ends, _ = session.info[_ENDS]
    pending: list[tuple[Record, dict[str, Any]]] = session.info[_PENDING]
    session.info[_PENDING] = []
    session.info[_ENDS] = (ends + 1, outcome)
    for record, fields in pending:
        record(fields if outcome is AuditStatus.SUCCESS else {**fields, "status": outcome})


def defer(session: Session, record: Record, fields: dict[str, Any]) -> None:
    """Record ``fields`` when the session's transaction ends."""
    session.info[_PENDING].append((record, fields))
    if not session.in_transaction():
        _settle_when_context_ends(session)


def _current_context() -> object:
    return cast(Any, app_ctx)._get_current_object()  # the context itself, not the proxy


def _settle_when_context_ends(session: Session) -> None:
    """No transaction yet, and none is begun here (the app's own
    ``with session.begin():`` would then be refused): if none has ended them
    when this app context ends, the entries are recorded as ROLLED_BACK."""
    context = _current_context()
    if session.info.get(_WATCHED) is context:
        return
    session.info[_WATCHED] = context
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def settle(sender: object, **_extra: object) -> None:
        if _current_context() is not context:
            return  # another context of the app (another request, a nested one)
        appcontext_tearing_down.disconnect(settle, sender=app)
        session.info.pop(_WATCHED, None)
        if session.info[_PENDING] and not session.in_transaction():
            _settle(session, AuditStatus.ROLLED_BACK)

    appcontext_tearing_down.connect(settle, sender=app, weak=False)


def transactions_ended(session: Session) -> int:
    ends: int = session.info[_ENDS][0]
    return ends


def outcome_since(session: Session, ends_before: int) -> AuditStatus | None:
    """How the last transaction that ended after ``ends_before`` ended, or None."""
    ends, last = session.info[_ENDS]
    return last if ends != ends_before else None
