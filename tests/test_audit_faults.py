"""Audit log durability under faults: hostile input, killed processes,
signals, database outages, an unwritable journal directory.

Against real SQLite, PostgreSQL (a throwaway cluster where the server is
killed) and MariaDB where SQL is involved; real processes and signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from flask import Flask
from sqlalchemy import text
from werkzeug.test import Client

from flask_resilience import AuditEventType, log_auth_event, log_data_change
from flask_resilience.audit.service import AppAudit
from tests.audit_support import (
    ROOT,
    any_database,
    database,
    hostile_app,
    migrated,
    run_child,
    stored,
    verify_ok,
)
from tests.conftest import MakeApp
from tests.services import ThrowawayPostgres

__all__ = ["any_database", "database"]  # fixtures, for pytest


# -- 1. one bad entry never blocks the log -------------------------------------------------------


def test_hostile_fields_are_made_storable_and_every_row_is_stored(
    make_app: MakeApp, any_database: str
) -> None:
    app = hostile_app(make_app, any_database)
    client = Client(app.wsgi_app)
    hostile = [
        {"User-Agent": "A" * 600},
        {"User-Agent": "nul\x00byte"},
        {"User-Agent": "ok"},
    ]
    for headers in hostile:
        assert client.get("/api/x", headers=headers).status_code == 200
    assert client.get("/api/" + "p" * 3000).status_code == 200
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "r" * 300, "i" * 300, {"k": "v"}, user_id="u" * 300)
        log_data_change(AuditEventType.UPDATE, "surrogate", "\ud800lone", None)
        for number in range(5):
            log_auth_event(AuditEventType.LOGIN, user_id=number)
        AppAudit.of(app).writer.flush()
    rows = stored(any_database)
    assert len(rows) == 11
    agents = [row["user_agent"] for row in rows if row["user_agent"]]
    assert agents[0].startswith("A" * 100) and agents[0].endswith("…[truncated 110 chars]")
    assert len(agents[0]) == 512
    assert "\x00" not in agents[1] and agents[1].startswith("nul")
    long_path = next(row["path"] for row in rows if row["path"] and len(row["path"]) > 100)
    assert len(long_path) == 2048 and "truncated" in long_path
    change = next(row for row in rows if row["event_type"] == "UPDATE" and len(row["resource"]) > 100)
    assert len(change["resource_id"]) == 255 and len(change["user_id"]) == 255
    assert next(row["resource_id"] for row in rows if row["resource"] == "surrogate") == "\ufffdlone"
    assert AppAudit.of(app).writer.counts()["rejected"] == 0
    verify_ok(app)


def test_severity_and_status_are_validated_at_the_call_site(make_app: MakeApp, tmp_path: Path) -> None:
    app, _ = make_app()
    with app.app_context():
        with pytest.raises(ValueError, match="status"):
            log_auth_event(AuditEventType.LOGIN, user_id=1, status="X" * 40)
        from flask_resilience import create_audit_log, log_security_alert

        with pytest.raises(ValueError, match="severity"):
            log_security_alert("alert", severity="LOUD")
        with pytest.raises(ValueError, match="severity"):
            create_audit_log({"event_type": "LOGIN", "severity": "s" * 20})


def _poison(url: str) -> Any:
    """Something the database refuses in one row, and only that row: a
    trigger refusing rows about the resource 'poison', as a data error."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        if url.startswith("sqlite"):
            statements = [
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON resilience_audit_log "
                "WHEN NEW.resource = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            ]
        elif url.startswith("postgresql"):
            statements = [
                "CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "IF NEW.resource = 'poison' THEN RAISE EXCEPTION 'poisoned row' USING ERRCODE = '22023'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
                "DROP TRIGGER IF EXISTS refuse_poison ON resilience_audit_log",
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON resilience_audit_log "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
            ]
        else:
            statements = [
                "DROP TRIGGER IF EXISTS refuse_poison",
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON resilience_audit_log FOR EACH ROW "
                "IF NEW.resource = 'poison' THEN "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned row'; END IF",
            ]
        for statement in statements:
            connection.execute(text(statement))
    engine.dispose()
    return {"value": "poison"}


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_stored(
    make_app: MakeApp, any_database: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal" / "audit.journal"
    app = hostile_app(make_app, any_database, RESILIENCE_AUDIT_SPILL_PATH=str(journal))
    poison = _poison(any_database)
    with app.app_context():
        for number in range(20):
            log_auth_event(AuditEventType.LOGIN, user_id=number)
            if number == 7:
                log_data_change(AuditEventType.UPDATE, "poison", 1, {"value": poison})
        writer = AppAudit.of(app).writer
        writer.flush()
        log_auth_event(AuditEventType.LOGOUT, user_id=1)
        writer.flush()
        counts = writer.counts()
    rows = stored(any_database)
    logins = [row for row in rows if row["event_type"] in ("LOGIN", "LOGOUT")]
    assert len(logins) == 21
    assert counts["rejected"] == 1
    gaps = [row for row in rows if row["event_type"] == "AUDIT_GAP"]
    assert len(gaps) == 1 and gaps[0]["details"]["rejected"] == 1 and gaps[0]["details"]["reason"]
    rejected = journal.with_name(journal.name + ".rejected.jsonl")
    assert len(rejected.read_text().splitlines()) == 1
    assert '"poison"' in rejected.read_text()


def test_the_journal_has_a_byte_bound_and_drops_are_recorded(make_app: MakeApp, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'late.db'}"  # no table yet: the database cannot take rows
    journal = tmp_path / "journal" / "audit.journal"
    app, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=url,
        RESILIENCE_AUDIT_SPILL_PATH=str(journal),
        RESILIENCE_AUDIT_SPILL_MAX_BYTES=8192,
        RESILIENCE_AUDIT_MAX_QUEUE=5,
    )
    writer = AppAudit.of(app).writer
    with app.app_context():
        for number in range(200):
            log_data_change(AuditEventType.UPDATE, "fare", number, {"price": number})
            if number % 50 == 0:
                writer.flush()
        dropped = writer.counts()["dropped"]
        assert 0 < dropped < 200
        size = sum(path.stat().st_size for path in journal.parent.glob("audit.*.journal"))
        assert size <= 8192 + 2048
    database_returns_and_drops_are_told(app, url, recorded=200)


def database_returns_and_drops_are_told(app: Flask, url: str, recorded: int) -> None:
    """Create the missing table, flush: every entry is stored or counted as
    dropped, the drops are told in AUDIT_GAP entries, the chain verifies."""
    writer = AppAudit.of(app).writer
    dropped = writer.counts()["dropped"]
    migrated(url)
    with app.app_context():
        writer.flush()
    rows = stored(url)
    gaps = [row for row in rows if row["event_type"] == "AUDIT_GAP"]
    assert sum(gap["details"]["dropped"] for gap in gaps) == dropped
    assert len(rows) - len(gaps) + dropped == recorded
    verify_ok(app)


# -- 2. a killed worker loses nothing ------------------------------------------------------------------

KILLED_CHILD = """
    import os, signal, sys
    from flask import Flask
    from flask_resilience import AuditEventType, Resilience, log_data_change
    app = Flask("killed", instance_path=sys.argv[2])
    app.config.update(SECRET_KEY="test-secret-key", RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1],
                      RESILIENCE_AUDIT_BUFFER_SIZE=10**6,
                      RESILIENCE_AUDIT_FLUSH_INTERVAL=10**8, RESILIENCE_AUDIT_MAX_QUEUE=10**6)
    Resilience(app)
    with app.app_context():
        for number in range(int(sys.argv[3])):
            log_data_change(AuditEventType.UPDATE, "fare", number, {"price": number})
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_of_a_writer_process_loses_nothing(make_app: MakeApp, database: str, tmp_path: Path) -> None:
    child = run_child(KILLED_CHILD, database, str(tmp_path / "instance"), "250")
    assert child.returncode == -signal.SIGKILL
    before = len(stored(database, lifecycle=True))  # its thread's first flush may have stored a few
    assert before < 251  # the 250 and its chain's CHAIN_OPENED
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database)  # the same instance folder
    with app.app_context():
        AppAudit.of(app).engine()  # as the first entry of a new worker would
        AppAudit.of(app).writer.flush()
        assert AppAudit.of(app).writer.counts()["replayed"] == 251 - before
        AppAudit.of(app).writer.flush()
    rows = stored(database)
    assert sorted(int(row["resource_id"]) for row in rows) == list(range(250))
    verify_ok(app)


# -- 3. signals never run I/O ------------------------------------------------------------------------

DURABLE_CHILD = """
    import sys
    from flask import Flask
    from flask_resilience import Resilience, log_security_alert
    app = Flask("durable", instance_path=sys.argv[2])
    app.config.update(SECRET_KEY="test-secret-key", RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1])
    Resilience(app)
    with app.test_request_context("/pay"):
        while True:
            log_security_alert("durable entry")
            sys.stdout.write("ok\\n")
            sys.stdout.flush()
"""


def test_sigterm_during_durable_writes_exits_promptly_and_loses_nothing(
    make_app: MakeApp, database: str, tmp_path: Path
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DURABLE_CHILD), database, str(tmp_path / "instance")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    acknowledged = 0
    try:
        while acknowledged < 30:
            assert child.stdout.readline() == b"ok\n"
            acknowledged += 1
        child.send_signal(signal.SIGTERM)
        started = time.monotonic()
        acknowledged += child.stdout.read().count(b"ok\n")
        child.wait(10)
        assert time.monotonic() - started < 10
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == 128 + signal.SIGTERM
    count = len(stored(database))
    assert acknowledged <= count <= acknowledged + 1  # the entry in flight may be stored too
    verify_ok(make_app(RESILIENCE_AUDIT_DATABASE_URI=database)[0])


LATE_ENTRY_CHILD = """
    import os, signal, sys
    from flask import Flask
    from flask_resilience import AuditEventType, Resilience, log_auth_event
    terminations = []
    signal.signal(signal.SIGTERM, lambda *_: terminations.append(1))  # as gunicorn's worker does
    app = Flask("late", instance_path=sys.argv[2])
    app.config.update(SECRET_KEY="test-secret-key", RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1],
                      RESILIENCE_AUDIT_FLUSH_INTERVAL=10**8)
    Resilience(app)
    with app.test_request_context("/late"):
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-request
        log_auth_event(AuditEventType.LOGOUT, user_id=1)
    assert terminations == [1]
    sys.exit(0)
"""


def test_an_entry_recorded_after_sigterm_is_flushed_at_exit(database: str, tmp_path: Path) -> None:
    child = run_child(LATE_ENTRY_CHILD, database, str(tmp_path / "instance"))
    assert child.returncode == 0
    assert [row["event_type"] for row in stored(database)] == ["LOGIN", "LOGOUT"]


def test_shutdown_is_idempotent_and_keeps_its_services(make_app: MakeApp, database: str) -> None:
    app, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=database, RESILIENCE_AUDIT_FLUSH_INTERVAL=10**8)
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        extension.shutdown()
        log_auth_event(AuditEventType.LOGOUT, user_id=1)  # recorded after the first shutdown
    extension.shutdown()  # what atexit does
    rows = sorted(stored(database), key=lambda row: row["occurred_at"])
    assert [row["event_type"] for row in rows] == ["LOGIN", "LOGOUT"]
    # The entry recorded after the first shutdown opened a new chain, closed by the second.
    chains: dict[str, list[str]] = {}
    for row in stored(database, lifecycle=True):
        chains.setdefault(row["chain_id"], []).append(row["event_type"])
    assert sorted(chains.values()) == [
        ["CHAIN_OPENED", "LOGIN", "CHAIN_CLOSED"],
        ["CHAIN_OPENED", "LOGOUT", "CHAIN_CLOSED"],
    ]
    verify_ok(app)


# -- 4 and 5. outages, replays and the chain ---------------------------------------------------------------


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    migrated(server.url)
    yield server
    server.close()


def test_long_outage_with_a_tiny_queue_stores_exactly_once_and_verifies(
    make_app: MakeApp, throwaway_postgres: ThrowawayPostgres
) -> None:
    app, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=throwaway_postgres.url,
        RESILIENCE_AUDIT_MAX_QUEUE=3,
        RESILIENCE_AUDIT_BUFFER_SIZE=4,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=10**8,
    )
    writer = AppAudit.of(app).writer
    recorded = 0

    def record(count: int) -> None:
        nonlocal recorded
        with app.app_context():
            for _ in range(count):
                log_data_change(AuditEventType.UPDATE, "fare", 1, {"price": 1})
        recorded += count

    record(10)
    writer.flush()
    assert writer.engine is not None
    writer.engine.dispose()  # no pooled connection dies with the server (a ResourceWarning)
    throwaway_postgres.kill()
    for _ in range(6):  # every flush fails while the server is down
        threads = [threading.Thread(target=record, args=(5,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        writer.flush()
        for thread in threads:
            thread.join()
    assert writer.counts()["dropped"] == 0
    throwaway_postgres.start()
    writer.flush()
    writer.flush()
    rows = stored(throwaway_postgres.url)
    assert len(rows) == recorded == 100
    assert len({row["id"] for row in rows}) == 100
    verify_ok(app)


def test_unwritable_journal_and_database_down_never_fail_a_request(make_app: MakeApp, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the journal directory should be")
    url = f"sqlite:///{tmp_path / 'late.db'}"  # no table yet: the database cannot take rows
    app = hostile_app(
        make_app,
        url,
        RESILIENCE_AUDIT_SPILL_PATH=str(blocker / "journal" / "audit.journal"),
        RESILIENCE_AUDIT_MAX_QUEUE=5,
        RESILIENCE_AUDIT_BUFFER_SIZE=3,
    )
    client = Client(app.wsgi_app)
    writer = AppAudit.of(app).writer
    for number in range(30):
        assert client.get(f"/api/item/{number}").status_code == 200
        if number % 4 == 0:
            writer.flush()
    assert writer.counts()["dropped"] > 0
    database_returns_and_drops_are_told(app, url, recorded=30)


def test_journals_vanishing_while_listed_are_tolerated(
    make_app: MakeApp, tmp_path: Path, database: str
) -> None:
    journal = tmp_path / "journal" / "audit.journal"
    journal.parent.mkdir()
    (journal.parent / "audit.12345.deadbeef.journal").symlink_to(tmp_path / "gone")  # listed, then gone
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database, RESILIENCE_AUDIT_SPILL_PATH=str(journal))
    with app.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=1)
        AppAudit.of(app).writer.flush()
        AppAudit.of(app).writer.flush()
    assert len(stored(database)) == 1
