"""What ``flask resilience audit verify`` catches: truncation, deleted chains,
chains forged without the key, forged purge anchors (SQLite and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from click.testing import Result
from flask import Flask
from freezegun import freeze_time
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.sql import Executable

from flask_resilience import AuditEventType, log_data_change
from flask_resilience.audit.chain import GENESIS, link_hash
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import audit_log, metadata
from tests.conftest import MakeApp


def clear_audit_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(delete(table))


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    clear_audit_tables(engine)
    yield url
    clear_audit_tables(engine)
    engine.dispose()


def write_entries(app: Flask, count: int, start: int = 0) -> None:
    with app.app_context():
        for index in range(start, start + count):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
        AppAudit.of(app).writer.flush()


def verify(app: Flask) -> Result:
    return app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])


def tamper_then_verify(make_app: MakeApp, url: str, statement: Executable) -> Result:
    """Run ``statement`` on the audit database, then verify from a fresh app."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(statement)
    engine.dispose()
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=url)
    return verify(app)


def rows_of(engine: Engine, chain_id: str | None = None) -> list[dict[str, Any]]:
    query = select(audit_log).order_by(audit_log.c.chain_id, audit_log.c.seq)
    if chain_id is not None:
        query = query.where(audit_log.c.chain_id == chain_id)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


@pytest.fixture
def closed_chain(make_app: MakeApp, audit_url: str) -> Iterator[tuple[Engine, str]]:
    """One chain of ten entries, written and closed cleanly by its writer."""
    app, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url)
    write_entries(app, 10)
    chain_id = AppAudit.of(app).writer.chain.chain_id
    extension.shutdown()
    engine = sqlalchemy.create_engine(audit_url)
    yield engine, chain_id
    engine.dispose()


def test_a_clean_closed_chain_verifies(
    make_app: MakeApp, audit_url: str, closed_chain: tuple[Engine, str]
) -> None:
    engine, chain_id = closed_chain
    kinds = [row["event_type"] for row in rows_of(engine, chain_id)]
    assert kinds[0] == "CHAIN_OPENED"
    assert kinds[-1] == "CHAIN_CLOSED"
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url)
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert f"chain {chain_id}: ok" in result.output


def test_truncating_the_tail_of_a_chain_is_reported(
    make_app: MakeApp, audit_url: str, closed_chain: tuple[Engine, str]
) -> None:
    engine, chain_id = closed_chain
    with engine.begin() as connection:
        last = connection.execute(select(sqlalchemy.func.max(audit_log.c.seq))).scalar_one()
    result = tamper_then_verify(make_app, audit_url, delete(audit_log).where(audit_log.c.seq > last - 3))
    assert result.exit_code == 1, result.output
    assert f"chain {chain_id}: TRUNCATED" in result.output


def test_deleting_a_whole_chain_is_reported(
    make_app: MakeApp, audit_url: str, closed_chain: tuple[Engine, str]
) -> None:
    _, chain_id = closed_chain
    result = tamper_then_verify(
        make_app, audit_url, delete(audit_log).where(audit_log.c.chain_id == chain_id)
    )
    assert result.exit_code == 1, result.output
    assert f"chain {chain_id}: MISSING" in result.output
    assert "all intact" not in result.output


def _rechain(engine: Engine, rows: list[dict[str, Any]], key: bytes | None) -> None:
    """Recompute every hash of ``rows`` from the first one on, as a forger would."""
    prev = rows[0]["prev_hash"]
    with engine.begin() as connection:
        for row in rows:
            row["prev_hash"] = prev
            row["entry_hash"] = link_hash(prev, row, key)
            prev = row["entry_hash"]
            connection.execute(
                update(audit_log)
                .where(audit_log.c.id == row["id"])
                .values(changes=row["changes"], prev_hash=row["prev_hash"], entry_hash=row["entry_hash"])
            )


def test_an_edited_row_with_every_later_hash_recomputed_is_reported_without_a_configured_key(
    make_app: MakeApp, audit_url: str, closed_chain: tuple[Engine, str]
) -> None:
    """No RESILIENCE_AUDIT_HMAC_KEY: the key derived from SECRET_KEY still signs."""
    engine, chain_id = closed_chain
    rows = rows_of(engine, chain_id)[4:]
    rows[0]["changes"] = {"price": 0}
    _rechain(engine, rows, None)
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url)
    result = verify(app)
    assert result.exit_code == 1, result.output
    assert f"chain {chain_id}: BROKEN at seq {rows[0]['seq']}" in result.output


def _forge_anchor(engine: Engine, victim: str, first_kept: dict[str, Any]) -> None:
    """A purge record, in a chain of its own, hashed without the key."""
    forged: dict[str, Any] = {
        "id": "00000000-0000-4000-8000-000000000001",
        "chain_id": "00000000-0000-4000-8000-0000000000ff",
        "seq": 1,
        "occurred_at": datetime(2026, 1, 1),
        "logged_at": datetime(2026, 1, 1),
        "event_type": "ADMIN",
        "severity": "INFO",
        "status": "SUCCESS",
        **dict.fromkeys(
            ("user_id", "user_email", "resource", "resource_id", "method", "path", "endpoint"), None
        ),
        **dict.fromkeys(("http_status", "ip", "user_agent", "request_id", "changes"), None),
        "details": {
            "audit_purge": {victim: {"first_seq": first_kept["seq"], "prev_hash": first_kept["prev_hash"]}}
        },
        "message": "audit purge",
        "prev_hash": GENESIS,
    }
    forged["entry_hash"] = link_hash(GENESIS, forged, None)
    with engine.begin() as connection:
        connection.execute(insert(audit_log).values(**forged))


def test_a_forged_purge_anchor_is_reported(
    make_app: MakeApp, audit_url: str, closed_chain: tuple[Engine, str]
) -> None:
    engine, chain_id = closed_chain
    rows = rows_of(engine, chain_id)
    with engine.begin() as connection:
        connection.execute(delete(audit_log).where(audit_log.c.seq < 5))
    _forge_anchor(engine, chain_id, rows[4])
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url)
    result = verify(app)
    assert result.exit_code == 1, result.output
    assert f"chain {chain_id}: GAP, seq 1-4 missing" in result.output


def test_an_unclosed_chain_is_live_while_checkpointed_then_reported_as_ended_without_close(
    make_app: MakeApp, audit_url: str
) -> None:
    writer_app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url, RESILIENCE_AUDIT_CHECKPOINT_SECONDS=60)
    write_entries(writer_app, 5)  # the writer stays up: no close yet
    chain_id = AppAudit.of(writer_app).writer.chain.chain_id
    checker, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url)
    result = verify(checker)
    assert result.exit_code == 0, result.output
    assert f"chain {chain_id}: ok" in result.output
    assert "open, writer live" in result.output
    with freeze_time(datetime.now(UTC) + timedelta(minutes=10)):
        later = verify(checker)
    assert later.exit_code == 1, later.output
    assert f"chain {chain_id}: ENDED without close (crash or truncation)" in later.output


CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    from flask import Flask
    from flask_resilience import AuditEventType, Resilience, log_auth_event
    from flask_resilience.audit.service import AppAudit
    app = Flask("crashing-writer", instance_path=sys.argv[2])
    app.config.update(SECRET_KEY="test-secret-key", RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1],
                      RESILIENCE_AUDIT_SPILL_PATH=sys.argv[3])
    Resilience(app)
    with app.app_context():
        for user in range(3):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        AppAudit.of(app).writer.flush()  # no table there: into this process's spill file
        print(AppAudit.of(app).writer.chain.chain_id, flush=True)
    os._exit(0)  # killed: no close
    """
)


def test_a_crashed_chain_adopted_by_a_later_writer_is_a_known_crash(
    make_app: MakeApp, tmp_path: Path
) -> None:
    spill = tmp_path / "spill" / "audit.jsonl"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_WRITER,
            f"sqlite:///{tmp_path / 'none.db'}",
            str(tmp_path / "c"),
            str(spill),
        ],
        cwd=Path(__file__).parent.parent,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    dead_chain = child.stdout.strip()
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(sqlalchemy.create_engine(url))
    adopter, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=url, RESILIENCE_AUDIT_SPILL_PATH=str(spill))
    write_entries(adopter, 1)  # replays the dead writer's spill first
    write_entries(adopter, 1)  # and records the adoption
    adopter_chain = AppAudit.of(adopter).writer.chain.chain_id
    result = verify(adopter)
    assert result.exit_code == 0, result.output
    known_crash = f"ended without close: a crash, adopted by chain {adopter_chain}"
    assert f"chain {dead_chain}: ok (4 entries, seq 1-4; {known_crash})" in result.output


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from flask import Flask
    from flask_resilience import AuditEventType, Resilience, log_auth_event
    from flask_resilience.audit.service import AppAudit
    app = Flask("killed-writer", instance_path=sys.argv[2])
    app.config.update(SECRET_KEY="test-secret-key", RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1])
    Resilience(app)
    with app.app_context():
        for user in range(5):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        AppAudit.of(app).writer.flush()
        for user in range(5, 8):
            log_auth_event(AuditEventType.LOGIN, user_id=user)  # queued, never flushed: lost
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_a_sigkilled_writers_chain_does_not_read_intact(
    make_app: MakeApp, audit_url: str, tmp_path: Path
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, audit_url, str(tmp_path / "killed")],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
    finally:
        child.kill()
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    checker, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=audit_url)
    with freeze_time(datetime.now(UTC) + timedelta(minutes=10)):
        result = verify(checker)
    assert result.exit_code == 1, result.output
    assert "ENDED without close (crash or truncation)" in result.output
    assert "all intact" not in result.output
