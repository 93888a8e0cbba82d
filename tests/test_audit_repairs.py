"""Regressions in the audit log's verify, journal naming, replay and purge:
each test here failed before its fix."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy import text, update

from flask_resilience import AuditEventType, log_auth_event, log_data_change
from flask_resilience.audit.table import audit_log
from flask_resilience.state import get_state
from tests.audit_support import database, hostile_app, stored, verify_ok
from tests.conftest import MakeApp
from tests.test_audit_faults import _poison

__all__ = ["database"]  # a fixture, for pytest


def _verify_output(app: object) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])  # type: ignore[attr-defined]
    return result.exit_code, result.output


def test_verify_explains_a_quarantined_row_by_its_gap_entry(make_app: MakeApp, database: str) -> None:
    app = hostile_app(make_app, database)
    poison = _poison(database)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        log_data_change(AuditEventType.UPDATE, "poison", 1, {"value": poison})
        log_auth_event(AuditEventType.LOGIN, user_id=2)
        writer = get_state(app).audit.writer
        writer.flush()
        writer.flush()
        assert writer.counts()["rejected"] == 1
    verify_ok(app)
    code, output = _verify_output(app)
    assert code == 0 and "quarantined" in output, output


def test_verify_still_fails_on_a_gap_no_entry_explains(make_app: MakeApp, database: str) -> None:
    app = hostile_app(make_app, database)
    poison = _poison(database)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        log_data_change(AuditEventType.UPDATE, "poison", 1, {"value": poison})
        for number in range(2, 5):
            log_auth_event(AuditEventType.LOGIN, user_id=number)
        writer = get_state(app).audit.writer
        writer.flush()
        writer.flush()
    engine = sqlalchemy.create_engine(database)
    login = next(row for row in stored(database) if row["user_id"] == "3")
    with engine.begin() as connection:  # an entry removed behind the log's back
        connection.execute(text("DELETE FROM resilience_audit_log WHERE id = :id"), {"id": login["id"]})
    engine.dispose()
    code, output = _verify_output(app)
    assert code != 0 and f"GAP, seq {login['seq']}-{login['seq']} missing" in output, output


def test_verify_rejects_a_forged_quarantine_record(make_app: MakeApp, database: str) -> None:
    app = hostile_app(make_app, database)
    poison = _poison(database)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        log_data_change(AuditEventType.UPDATE, "poison", 1, {"value": poison})
        log_auth_event(AuditEventType.LOGIN, user_id=2)
        writer = get_state(app).audit.writer
        writer.flush()
        writer.flush()
    gap = next(row for row in stored(database) if row["event_type"] == "AUDIT_GAP")
    engine = sqlalchemy.create_engine(database)
    with engine.begin() as connection:  # the record edited without the key
        forged = {**gap["details"], "entry_hash": "0" * 64}
        connection.execute(update(audit_log).where(audit_log.c.id == gap["id"]).values(details=forged))
    engine.dispose()
    code, output = _verify_output(app)
    assert code != 0 and "quarantine record rejected" in output, output
