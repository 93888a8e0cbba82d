"""Regressions in the audit log's verify, journal naming, replay and purge:
each test here failed before its fix."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from flask import Flask
from freezegun import freeze_time
from sqlalchemy import text, update

from flask_resilience import AuditEventType, log_auth_event, log_data_change
from flask_resilience.audit import journal as journal_module
from flask_resilience.audit import writer as writer_module
from flask_resilience.audit.api import create_audit_log
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.store import store
from flask_resilience.audit.table import audit_log
from tests.audit_support import database, hostile_app, migrated, run_child, stored, verify_ok
from tests.conftest import MakeApp
from tests.test_audit_faults import KILLED_CHILD, _poison

__all__ = ["database"]  # a fixture, for pytest


def _verify_output(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    return result.exit_code, result.output


def _app_with_a_quarantined_row(make_app: MakeApp, url: str, logins_after: int) -> Flask:
    """A login, a row the database refuses, then ``logins_after`` logins (user ids 2..), stored."""
    app = hostile_app(make_app, url)
    poison = _poison(url)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        log_data_change(AuditEventType.UPDATE, "poison", 1, {"value": poison})
        for number in range(2, 2 + logins_after):
            log_auth_event(AuditEventType.LOGIN, user_id=number)
        writer = AppAudit.of(app).writer
        writer.flush()
        writer.flush()  # and the AUDIT_GAP entry recorded by the first
        assert writer.counts()["rejected"] == 1
    return app


def test_verify_explains_a_quarantined_row_by_its_gap_entry(make_app: MakeApp, database: str) -> None:
    app = _app_with_a_quarantined_row(make_app, database, 1)
    verify_ok(app)
    code, output = _verify_output(app)
    assert code == 0 and "quarantined" in output, output


def test_verify_still_fails_on_a_gap_no_entry_explains(make_app: MakeApp, database: str) -> None:
    app = _app_with_a_quarantined_row(make_app, database, 3)
    engine = sqlalchemy.create_engine(database)
    login = next(row for row in stored(database) if row["user_id"] == "3")
    with engine.begin() as connection:  # an entry removed behind the log's back
        connection.execute(text("DELETE FROM resilience_audit_log WHERE id = :id"), {"id": login["id"]})
    engine.dispose()
    code, output = _verify_output(app)
    assert code != 0 and f"GAP, seq {login['seq']}-{login['seq']} missing" in output, output


def test_verify_rejects_a_forged_quarantine_record(make_app: MakeApp, database: str) -> None:
    app = _app_with_a_quarantined_row(make_app, database, 1)
    gap = next(row for row in stored(database) if row["event_type"] == "AUDIT_GAP")
    engine = sqlalchemy.create_engine(database)
    with engine.begin() as connection:  # the record edited without the key
        forged = {**gap["details"], "entry_hash": "0" * 64}
        connection.execute(update(audit_log).where(audit_log.c.id == gap["id"]).values(details=forged))
    engine.dispose()
    code, output = _verify_output(app)
    assert code != 0 and "quarantine record rejected" in output, output


def test_two_apps_in_one_instance_folder_adopt_only_their_own_journals(
    make_app: MakeApp, tmp_path: Path
) -> None:
    database_a = migrated(f"sqlite:///{tmp_path / 'a.db'}")
    database_b = migrated(f"sqlite:///{tmp_path / 'b.db'}")
    child = run_child(KILLED_CHILD, database_a, str(tmp_path / "instance"), "40")
    assert child.returncode == -signal.SIGKILL
    before = len(stored(database_a, lifecycle=True))  # its thread's first flush may have stored a few
    app_b, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database_b)  # the same instance folder
    with app_b.app_context():
        AppAudit.of(app_b).engine()
        AppAudit.of(app_b).writer.flush()
        assert AppAudit.of(app_b).writer.counts()["replayed"] == 0
    assert [row for row in stored(database_b) if row["resource"] == "fare"] == []
    app_a, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database_a)
    with app_a.app_context():
        AppAudit.of(app_a).engine()
        AppAudit.of(app_a).writer.flush()
        assert AppAudit.of(app_a).writer.counts()["replayed"] == 41 - before
    assert sorted(int(row["resource_id"]) for row in stored(database_a)) == list(range(40))
    verify_ok(app_a)


def _rename_table(url: str, old: str, new: str) -> None:
    """The audit table gone and back: an outage (every write fails, not a row's fault)."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    engine.dispose()


def test_replay_after_an_outage_goes_a_chunk_at_a_time(
    make_app: MakeApp, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal" / "audit.journal"
    app = hostile_app(
        make_app, database, RESILIENCE_AUDIT_SPILL_PATH=str(journal), RESILIENCE_AUDIT_FLUSH_INTERVAL=10**8
    )
    writer = AppAudit.of(app).writer
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=0)
        writer.flush()
        _rename_table(database, "resilience_audit_log", "resilience_audit_away")
        for number in range(1, 121):
            log_data_change(AuditEventType.UPDATE, "fare", number, {"price": number})
        writer.flush()
    _rename_table(database, "resilience_audit_away", "resilience_audit_log")
    monkeypatch.setattr(journal_module, "ADOPT_CHUNK_BYTES", 8192)
    replays: list[tuple[int, int]] = []  # (rows, the commit mark when they were stored)

    def watched_store(engine: Any, rows: list[dict[str, Any]], **options: Any) -> None:
        if not options["fresh"] and rows:
            assert writer.journal is not None
            replays.append((len(rows), writer.journal.committed))
        store(engine, rows, **options)

    monkeypatch.setattr(writer_module, "store", watched_store)
    with app.app_context():
        writer.flush()
    assert len(replays) > 2 and max(count for count, _ in replays) < 40
    marks = [mark for _, mark in replays]
    assert marks == sorted(marks) and len(set(marks)) == len(marks)  # advanced after each chunk
    fares = [row for row in stored(database) if row["resource"] == "fare"]
    assert sorted(int(row["resource_id"]) for row in fares) == list(range(1, 121))
    verify_ok(app)


def test_purge_keeps_recent_entries_when_one_is_backdated(make_app: MakeApp, database: str) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database)
    writer = AppAudit.of(app).writer
    with freeze_time(datetime.now(UTC) - timedelta(days=200)), app.app_context():
        for number in range(3):
            log_data_change(AuditEventType.UPDATE, "old", number, {"price": number})
        writer.flush()
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "recent", 1, {"price": 1})
        # the caller's occurred_at says 2020: it was logged just now all the same
        create_audit_log(
            {
                "event_type": "UPDATE",
                "resource": "recent",
                "resource_id": "2",
                "occurred_at": datetime(2020, 1, 1, tzinfo=UTC),
            }
        )
        log_data_change(AuditEventType.UPDATE, "recent", 3, {"price": 3})
        writer.flush()
    runner = app.test_cli_runner()
    purged = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"])
    assert purged.exit_code == 0, purged.output
    rows = stored(database)
    kept = [(row["resource"], row["resource_id"]) for row in rows if row["event_type"] == "UPDATE"]
    assert sorted(kept) == [("recent", "1"), ("recent", "2"), ("recent", "3")], kept
    verify_ok(app)


PURGE_90D = ["resilience", "audit", "purge", "--older-than", "90d", "--yes"]


def _old_and_recent(app: Flask) -> None:
    """One entry logged 200 days ago (a purge at 90 days takes it), one now (kept)."""
    writer = AppAudit.of(app).writer
    with freeze_time(datetime.now(UTC) - timedelta(days=200)), app.app_context():
        log_data_change(AuditEventType.UPDATE, "old", 1, {"price": 1})
        writer.flush()
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "recent", 1, {"price": 2})
        writer.flush()


def _mask_every_string(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _mask_every_string(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask_every_string(item) for item in value]
    return "[MASKED]" if isinstance(value, str) else value


def _masking_redactor(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "details": _mask_every_string(fields.get("details"))}


def test_an_apps_redactor_cannot_alter_the_purge_anchor(make_app: MakeApp, database: str) -> None:
    """The purge record holds chain ids, seqs and hashes, nothing of a user's:
    an app redactor that masks every string in ``details`` (or the built-in
    card check, which once read digits inside a hash as a card number) must
    not change it, or verify rejects the anchor and reports the purge a gap."""
    app, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=database,
        RESILIENCE_AUDIT_REDACTOR=_masking_redactor,
    )
    _old_and_recent(app)
    purged = app.test_cli_runner().invoke(args=PURGE_90D)
    assert purged.exit_code == 0, purged.output
    assert [row["resource"] for row in stored(database) if row["event_type"] == "UPDATE"] == ["recent"]
    verify_ok(app)


def test_a_purge_signed_with_another_key_than_the_writers_says_so(make_app: MakeApp, database: str) -> None:
    """A maintenance app whose audit key is not the writers' signs the purge
    record with it: the writers' verify will reject the anchor and report the
    purged entries as a gap. The purge says so when it runs, not months later."""
    writers, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database, RESILIENCE_AUDIT_HMAC_KEY="writers-key")
    _old_and_recent(writers)
    maintenance, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database, RESILIENCE_AUDIT_HMAC_KEY="another-key")
    purged = maintenance.test_cli_runner().invoke(args=PURGE_90D)
    assert purged.exit_code == 0, purged.output
    assert "warning: this app signs audit entries with key" in purged.output, purged.output
    code, output = _verify_output(writers)  # what the warning foretells
    assert code == 1 and "purge anchor rejected" in output, output


def test_a_purge_signed_with_the_writers_key_says_nothing_of_keys(make_app: MakeApp, database: str) -> None:
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database, RESILIENCE_AUDIT_HMAC_KEY="writers-key")
    _old_and_recent(app)
    purged = app.test_cli_runner().invoke(args=PURGE_90D)
    assert purged.exit_code == 0 and "deleted" in purged.output, purged.output
    assert "warning" not in purged.output, purged.output
    verify_ok(app)
