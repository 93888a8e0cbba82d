"""Redaction, losslessness and tamper evidence of the audit log."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, text, update

from flask_resilience import AuditEventType, Resilience, log_auth_event, log_data_change
from flask_resilience.audit.chain import canonical
from flask_resilience.audit.intake import entry_row
from flask_resilience.audit.journal import entry_record
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.redact import MASK, Redactor, luhn_valid
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import audit_log
from tests.conftest import MakeApp

WITH_USER = audit_log.c.user_id.is_not(None)  # the app's entries, not the chains' lifecycle records

# -- redaction -----------------------------------------------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"password": "hunter2"}, {"password": MASK}),
        (
            {"user": {"profile": {"API-Key": "k", "name": "Ana"}}},
            {"user": {"profile": {"API-Key": MASK, "name": "Ana"}}},
        ),
        ([{"token": "t"}, {"cvv": "123"}, {"ok": 1}], [{"token": MASK}, {"cvv": MASK}, {"ok": 1}]),
        ({"note": "card 4111 1111 1111 1111 ok"}, {"note": "card [CARD ****1111] ok"}),
        ({"note": "order 4111 1111 1111 1112"}, {"note": "order 4111 1111 1111 1112"}),  # fails Luhn: kept
        ({"pan_as_number": 4111111111111111}, {"pan_as_number": "[CARD ****1111]"}),
        ({"note": "tok_4111111111111111;"}, {"note": "tok_[CARD ****1111];"}),
        # digits inside a hex hash or an id are not a card: masking them altered purge anchors
        ({"hash": "81ed7583ef4111111111111111bf14"}, {"hash": "81ed7583ef4111111111111111bf14"}),
        ({"id": "ord4111111111111111"}, {"id": "ord4111111111111111"}),
        ({"header": "Bearer abc.def-ghi"}, {"header": f"Bearer {MASK}"}),
        ({"text": f"sent {JWT} to api"}, {"text": f"sent {MASK} to api"}),
        ({"line": "evil\r\nINFO forged entry"}, {"line": "evil\\r\\nINFO forged entry"}),
        ({"Set-Cookie": "session=abc"}, {"Set-Cookie": MASK}),
        ({"amount": 10, "ok": True, "none": None}, {"amount": 10, "ok": True, "none": None}),
    ],
)
def test_redaction_matrix(value: Any, expected: Any) -> None:
    assert Redactor().value(value) == expected


_HEX = st.from_regex(r"[0-9a-f]{0,24}", fullmatch=True)


@given(_HEX, st.from_regex(r"[0-9]{13,19}", fullmatch=True), _HEX, st.sampled_from("abcdef"))
def test_a_hex_digest_is_never_redacted(head: str, digits: str, tail: str, letter: str) -> None:
    """Hashes and hex ids (purge anchors among them) hold digit runs that can pass the Luhn check."""
    inside = f"{head}{letter}{digits}{letter}{tail}"
    for digest in (inside, f"{digits}{letter}{tail}", f"{head}{letter}{digits}"):
        assert Redactor().text(digest) == digest


def test_configured_keys_hook_and_text_fields() -> None:
    redactor = Redactor(extra_keys=["passport_no"], hook=lambda fields: {**fields, "message": "hooked"})
    fields = redactor.fields(
        {"event_type": "LOGIN", "details": {"passport-no": "X1"}, "user_agent": "curl\nfake", "message": "x"}
    )
    assert fields["details"] == {"passport-no": MASK}
    assert fields["user_agent"] == "curl\\nfake"
    assert fields["message"] == "hooked"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


# -- losslessness -----------------------------------------------------------------------------------


@pytest.fixture
def writer_role(postgres_url: str) -> Any:
    """A PostgreSQL role that can be denied INSERT and granted it back: an
    outage of the audit database, on demand."""
    admin = sqlalchemy.create_engine(postgres_url)
    upgrade(admin)
    role = f"rt_writer_{uuid.uuid4().hex[:8]}"
    options = sqlalchemy.engine.make_url(postgres_url).query.get("options")
    schema = str(options).split("search_path=")[-1] if options else None
    with admin.begin() as connection:
        connection.execute(text("DELETE FROM resilience_audit_log"))
        connection.execute(text("DELETE FROM resilience_audit_checkpoint"))
        connection.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        if schema:
            connection.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        connection.execute(text(f'GRANT SELECT, INSERT ON resilience_audit_log TO "{role}"'))
        connection.execute(text(f'GRANT SELECT, INSERT ON resilience_audit_checkpoint TO "{role}"'))
    url = sqlalchemy.engine.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)

    class Role:
        def __init__(self) -> None:
            self.url = url

        def deny(self) -> None:
            with admin.begin() as connection:
                connection.execute(text(f'REVOKE INSERT ON resilience_audit_log FROM "{role}"'))

        def allow(self) -> None:
            with admin.begin() as connection:
                connection.execute(text(f'GRANT INSERT ON resilience_audit_log TO "{role}"'))

        def count(self) -> int:
            with admin.connect() as connection:
                return int(connection.execute(select(func.count()).select_from(audit_log)).scalar_one())

    yield Role()
    with admin.begin() as connection:
        connection.execute(text("DELETE FROM resilience_audit_log"))
        connection.execute(text("DELETE FROM resilience_audit_checkpoint"))
        connection.execute(text(f'REVOKE ALL ON resilience_audit_log FROM "{role}"'))
        connection.execute(text(f'REVOKE ALL ON resilience_audit_checkpoint FROM "{role}"'))
        if schema:
            connection.execute(text(f'REVOKE ALL ON SCHEMA "{schema}" FROM "{role}"'))
    with admin.connect() as connection:
        connection.execute(text("COMMIT"))
    with admin.begin() as connection:
        connection.execute(text(f'DROP ROLE "{role}"'))
    admin.dispose()


def test_database_outage_spills_then_replays_without_loss_or_duplicates(
    make_app: MakeApp, writer_role: Any, tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=writer_role.url, RESILIENCE_AUDIT_SPILL_PATH=str(spill))
    writer = AppAudit.of(app).writer
    with app.app_context():
        for user in range(10):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        writer.flush()
        assert writer_role.count() == 11  # and CHAIN_OPENED

        writer_role.deny()
        for user in range(10, 35):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        writer.flush()
        log_data_change(AuditEventType.UPDATE, "seat", 1, {"row": 3})
        writer.flush()
        assert writer_role.count() == 11  # and CHAIN_OPENED
        assert writer.counts()["spilled"] == 26
        assert _spilled_lines(spill) == 26

        writer_role.allow()
        for user in range(35, 40):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        writer.flush()
    assert _spilled_lines(spill) == 0
    assert writer_role.count() == 42  # CHAIN_OPENED and 10 before, 26 spilled and replayed, 5 after
    # The 5 recorded before the writer saw the database back waited in the journal too.
    assert writer.counts()["replayed"] == 31
    result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 0, result.output


def _spilled_lines(base: Path) -> int:
    """Rows waiting in the spill files of every process (one file each)."""
    return sum(len(path.read_text().splitlines()) for path in base.parent.glob(f"{base.stem}.*{base.suffix}"))


def test_replaying_rows_already_written_adds_no_duplicates(make_app: MakeApp, tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    app, _ = make_app(RESILIENCE_AUDIT_SPILL_PATH=str(spill))
    writer = AppAudit.of(app).writer
    with app.app_context():
        for user in range(5):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        writer.flush()
        engine = AppAudit.of(app).engine()
        with engine.connect() as connection:
            stored = [dict(row._mapping) for row in connection.execute(select(audit_log))]
    # As if a writer died after storing its rows but before committing its journal.
    dead = spill.with_name("spill.99999.0000dead.jsonl")
    dead.write_bytes(b"".join(entry_record(row, canonical(row)) for row in stored))
    later, _ = make_app(RESILIENCE_AUDIT_SPILL_PATH=str(spill))  # the next process adopts the file
    with later.app_context():
        log_auth_event(AuditEventType.LOGOUT, user_id=1)
        AppAudit.of(later).writer.flush()
        with engine.connect() as connection:
            # 5 entries and CHAIN_OPENED once, the later process's CHAIN_OPENED and LOGOUT, and
            # its CHAIN_CLOSED recording the adoption of the dead file's chain
            assert connection.execute(select(func.count()).select_from(audit_log)).scalar_one() == 9
    assert not dead.exists()


def test_full_queue_without_spill_drops_counts_and_records_a_gap(make_app: MakeApp) -> None:
    app, _ = make_app(
        RESILIENCE_AUDIT_SPILL_PATH="off",
        RESILIENCE_AUDIT_MAX_QUEUE=3,
        RESILIENCE_AUDIT_BUFFER_SIZE=100,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=600_000,
    )
    writer = AppAudit.of(app).writer
    with app.app_context():
        for user in range(5):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        assert writer.counts()["dropped"] == 3
        writer.flush()
        engine = AppAudit.of(app).engine()
        with engine.connect() as connection:
            kinds = connection.execute(
                select(audit_log.c.event_type, audit_log.c.details).order_by(audit_log.c.seq)
            )
            recorded = [(kind, details) for kind, details in kinds]
    # The queue bound counts the chain's CHAIN_OPENED: two of the five logins fit.
    assert [kind for kind, _ in recorded[:3]] == ["CHAIN_OPENED", "LOGIN", "LOGIN"]
    assert recorded[3] == ("AUDIT_GAP", {"dropped": 3})  # told once the database takes rows


def test_full_queue_with_spill_keeps_everything(make_app: MakeApp, tmp_path: Path) -> None:
    app, _ = make_app(
        RESILIENCE_AUDIT_SPILL_PATH=str(tmp_path / "spill.jsonl"),
        RESILIENCE_AUDIT_MAX_QUEUE=3,
        RESILIENCE_AUDIT_BUFFER_SIZE=100,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=600_000,
    )
    with app.app_context():
        for user in range(8):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        AppAudit.of(app).writer.flush()
        with AppAudit.of(app).engine().connect() as connection:
            users = connection.execute(select(audit_log.c.user_id).where(WITH_USER)).scalars().all()
    assert sorted(users, key=int) == [str(user) for user in range(8)]
    assert app.test_cli_runner().invoke(args=["resilience", "audit", "verify"]).exit_code == 0


SIGTERM_CHILD = textwrap.dedent(
    """
    import sys, time
    from flask import Flask
    from flask_resilience import AuditEventType, Resilience, log_auth_event
    app = Flask("sigterm-child", instance_path=sys.argv[2])
    app.config.update(RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1], RESILIENCE_AUDIT_BUFFER_SIZE=1000,
                      RESILIENCE_AUDIT_FLUSH_INTERVAL=600000)
    Resilience(app)
    with app.app_context():
        for user in range(50):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
    print("buffered", flush=True)
    time.sleep(60)
    """
)


def test_sigterm_flushes_the_buffer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    child = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_CHILD, url, str(tmp_path / "instance")],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"buffered"
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(audit_log)).scalar_one() == 0
        child.send_signal(signal.SIGTERM)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == 128 + signal.SIGTERM  # it still ends on the signal, after flushing
    with engine.connect() as connection:
        # the 50 entries between the chain's CHAIN_OPENED and CHAIN_CLOSED
        assert connection.execute(select(func.count()).select_from(audit_log)).scalar_one() == 52
    engine.dispose()


# -- tamper evidence -------------------------------------------------------------------------------


def _writer_process(url: str, instance: str, count: int) -> None:
    app = Flask(f"writer-{os.getpid()}", instance_path=instance)
    # The verifying app's SECRET_KEY: the chains are keyed with the key derived from it.
    app.config.update(
        RESILIENCE_AUDIT_DATABASE_URI=url, RESILIENCE_AUDIT_BUFFER_SIZE=25, SECRET_KEY="test-secret-key"
    )
    extension = Resilience(app)
    with app.app_context():
        for index in range(count):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
    extension.shutdown()


def test_four_processes_write_at_once_and_every_chain_verifies(
    make_app: MakeApp, postgres_url: str, tmp_path: Path
) -> None:
    admin = sqlalchemy.create_engine(postgres_url)
    upgrade(admin)
    with admin.begin() as connection:
        connection.execute(text("DELETE FROM resilience_audit_log"))
        connection.execute(text("DELETE FROM resilience_audit_checkpoint"))
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_writer_process, args=(postgres_url, str(tmp_path / f"w{i}"), 200))
        for i in range(4)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0, 0, 0]
    with admin.connect() as connection:
        chains = connection.execute(
            select(audit_log.c.chain_id, func.count(), func.max(audit_log.c.seq)).group_by(
                audit_log.c.chain_id
            )
        ).all()
    assert sorted((count, last) for _, count, last in chains) == [(202, 202)] * 4  # opened, closed
    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=postgres_url)
    result = app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "4 chains checked, all intact" in result.output
    with admin.begin() as connection:
        connection.execute(text("DELETE FROM resilience_audit_log"))
        connection.execute(text("DELETE FROM resilience_audit_checkpoint"))
    admin.dispose()


@pytest.fixture
def chained_app(make_app: MakeApp, tmp_path: Path) -> Flask:
    app, _ = make_app(RESILIENCE_AUDIT_HMAC_KEY="chain-key")
    with app.app_context():
        for index in range(10):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
        AppAudit.of(app).writer.flush()
    return app


def test_an_edited_row_breaks_the_chain(chained_app: Flask) -> None:
    engine = AppAudit.of(chained_app).engine()
    with engine.begin() as connection:
        connection.execute(update(audit_log).where(audit_log.c.seq == 4).values(changes={"price": 0}))
    result = chained_app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 1
    assert "BROKEN at seq 4" in result.output


def test_a_deleted_row_leaves_a_gap(chained_app: Flask) -> None:
    engine = AppAudit.of(chained_app).engine()
    with engine.begin() as connection:
        connection.execute(audit_log.delete().where(audit_log.c.seq == 6))
    result = chained_app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert result.exit_code == 1
    assert "GAP, seq 6-6 missing" in result.output


def test_a_forged_hash_without_the_key_is_detected(chained_app: Flask) -> None:
    from flask_resilience.audit.chain import link_hash

    engine = AppAudit.of(chained_app).engine()
    with engine.begin() as connection:
        row = dict(connection.execute(select(audit_log).where(audit_log.c.seq == 10)).one()._mapping)
        row["changes"] = {"price": 999}
        forged = link_hash(row["prev_hash"], row, None)  # recomputed without the HMAC key
        connection.execute(
            update(audit_log).where(audit_log.c.seq == 10).values(changes=row["changes"], entry_hash=forged)
        )
    result = chained_app.test_cli_runner().invoke(args=["resilience", "audit", "verify"])
    assert "BROKEN at seq 10" in result.output


def test_purge_keeps_chains_verifiable(chained_app: Flask) -> None:
    engine = AppAudit.of(chained_app).engine()
    with engine.begin() as connection:
        old = sqlalchemy.func.datetime("2020-01-01") if engine.dialect.name == "sqlite" else None
        assert old is not None
        connection.execute(
            update(audit_log).where(audit_log.c.seq <= 4).values(occurred_at=old, logged_at=old)
        )
    runner = chained_app.test_cli_runner()
    result = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d"])
    assert result.exit_code == 0, result.output
    assert "deleted 4 entries" in result.output
    verified = runner.invoke(args=["resilience", "audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert runner.invoke(args=["resilience", "audit", "purge", "--older-than", "soon"]).exit_code == 2


def test_row_helper_keeps_naive_utc() -> None:
    from flask_resilience.audit.events import AuditEntry

    row = entry_row(AuditEntry(event_type="LOGIN"), logged_at=__import__("datetime").datetime(2026, 1, 1))
    assert row["occurred_at"].tzinfo is None


CRASHING_CHILD = textwrap.dedent(
    """
    import os, sys
    from flask import Flask
    from flask_resilience import AuditEventType, Resilience, log_auth_event
    from flask_resilience.audit.service import AppAudit
    app = Flask("crashing-child", instance_path=sys.argv[2])
    app.config.update(RESILIENCE_AUDIT_DATABASE_URI=sys.argv[1], RESILIENCE_AUDIT_SPILL_PATH=sys.argv[3])
    Resilience(app)
    with app.app_context():
        for user in range(7):
            log_auth_event(AuditEventType.LOGIN, user_id=user)
        AppAudit.of(app).writer.flush()  # no table there: the rows go to this process's spill file
    os._exit(0)  # die without any cleanup, as a killed worker would
    """
)


def test_a_dead_workers_spill_file_is_adopted_and_a_live_ones_is_not(
    make_app: MakeApp, tmp_path: Path
) -> None:
    spill = tmp_path / "spill" / "audit.jsonl"
    no_table = f"sqlite:///{tmp_path / 'no-table.db'}"
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, no_table, str(tmp_path / "child"), str(spill)],
        cwd=Path(__file__).parent.parent,
        check=True,
        timeout=60,
    )
    assert child.returncode == 0
    assert _spilled_lines(spill) == 8  # CHAIN_OPENED and 7 entries

    database = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(sqlalchemy.create_engine(database))
    # A live worker whose database is down keeps its own spill file locked.
    live, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=no_table, RESILIENCE_AUDIT_SPILL_PATH=str(spill))
    with live.app_context():
        log_auth_event(AuditEventType.LOGOUT, user_id=99)
        AppAudit.of(live).writer.flush()
    assert _spilled_lines(spill) == 10

    healthy, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=database, RESILIENCE_AUDIT_SPILL_PATH=str(spill))
    with healthy.app_context():
        log_auth_event(AuditEventType.LOGIN, user_id=100)
        AppAudit.of(healthy).writer.flush()
        with AppAudit.of(healthy).engine().connect() as connection:
            stored = connection.execute(select(audit_log.c.user_id).where(WITH_USER)).scalars().all()
            users = sorted(stored, key=int)
    assert users == [str(user) for user in range(7)] + ["100"]  # the dead child's rows, not the live worker's
    assert _spilled_lines(spill) == 2  # the live worker's entries wait for its own database


def test_purge_prunes_old_checkpoints_but_keeps_what_verify_needs(make_app: MakeApp) -> None:
    """The heartbeat adds a checkpoint row every few seconds per live chain;
    purge must prune old ones, keeping each chain's furthest and latest."""
    from flask_resilience.audit.table import audit_checkpoint

    app, _ = make_app(RESILIENCE_AUDIT_HMAC_KEY="chain-key", RESILIENCE_AUDIT_CHECKPOINT_INTERVAL=1)
    with app.app_context():
        for index in range(12):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
            AppAudit.of(app).writer.flush()
    engine = AppAudit.of(app).engine()
    old = datetime(2020, 1, 1)
    with engine.begin() as connection:
        written = connection.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one()
        assert written >= 12
        connection.execute(update(audit_checkpoint).values(created_at=old))
        connection.execute(
            update(audit_log).where(audit_log.c.seq <= 4).values(occurred_at=old, logged_at=old)
        )
    runner = app.test_cli_runner()
    result = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"])
    assert result.exit_code == 0, result.output
    with engine.connect() as connection:
        kept = connection.execute(select(audit_checkpoint.c.seq)).scalars().all()
    chain = AppAudit.of(app).writer.chain
    # The purge's own entry was checkpointed (now): every old one can go.
    assert f"pruned {written} checkpoints" in result.output
    assert kept == [chain.seq]
    # What pruning must keep: the checkpoint verify compares the chain's head
    # with (the purge anchor's own checks are test_purge_keeps_chains_verifiable's).
    verified = runner.invoke(args=["resilience", "audit", "verify"])
    assert "checkpoint" not in verified.output and "TRUNCATED" not in verified.output, verified.output
    with engine.begin() as connection:
        connection.execute(sqlalchemy.delete(audit_log).where(audit_log.c.seq > chain.seq - 2))
    tampered = runner.invoke(args=["resilience", "audit", "verify"])
    assert tampered.exit_code == 1
    assert "TRUNCATED" in tampered.output


def test_pruning_keeps_an_idle_chains_newest_checkpoint(make_app: MakeApp) -> None:
    from flask_resilience.audit.table import audit_checkpoint

    app, extension = make_app(RESILIENCE_AUDIT_HMAC_KEY="chain-key", RESILIENCE_AUDIT_CHECKPOINT_INTERVAL=1)
    with app.app_context():
        for index in range(3):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
            AppAudit.of(app).writer.flush()
    chain = AppAudit.of(app).writer.chain
    store = AppAudit.of(app).writer.checkpoints
    assert store is not None
    engine = AppAudit.of(app).engine()
    for _ in range(5):  # idle heartbeats: the same seq again and again
        store.record(chain, engine)
    with engine.begin() as connection:
        ids = connection.execute(select(audit_checkpoint.c.id).order_by(audit_checkpoint.c.created_at)).all()
        for age, (checkpoint_id,) in enumerate(reversed(ids)):
            connection.execute(
                update(audit_checkpoint)
                .where(audit_checkpoint.c.id == checkpoint_id)
                .values(created_at=datetime(2020, 1, 1, 0, 0, 59 - age))
            )
    # The newest heartbeat is also the furthest: the one row verify reads.
    assert store.prune(engine, datetime(2026, 1, 1)) == len(ids) - 1
    with engine.connect() as connection:
        kept = connection.execute(select(audit_checkpoint.c.seq, audit_checkpoint.c.created_at)).all()
    assert [tuple(row) for row in kept] == [(chain.seq, datetime(2020, 1, 1, 0, 0, 59))]
    assert store.prune(engine, datetime(2026, 1, 1)) == 0
    extension.shutdown()


def test_purge_on_an_insert_only_checkpoint_table_keeps_checkpoints_and_goes_on(
    make_app: MakeApp, writer_role: Any, postgres_url: str
) -> None:
    """The recommended grant: the app's role may only SELECT and INSERT
    checkpoints. Purging entries still works; old checkpoints stay, said so."""
    from flask_resilience.audit.table import audit_checkpoint

    app, _ = make_app(
        RESILIENCE_AUDIT_DATABASE_URI=postgres_url,
        RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI=writer_role.url,
        RESILIENCE_AUDIT_HMAC_KEY="chain-key",
        RESILIENCE_AUDIT_CHECKPOINT_INTERVAL=1,
    )
    with app.app_context():
        for index in range(6):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": index})
            AppAudit.of(app).writer.flush()
    engine = AppAudit.of(app).engine()
    old = datetime(2020, 1, 1)
    with engine.begin() as connection:  # the admin's connection: it may age them
        written = connection.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one()
        assert written >= 6
        connection.execute(update(audit_checkpoint).values(created_at=old))
    with app.app_context():  # a checkpoint of today, furthest and newest: the one verify reads
        log_data_change(AuditEventType.UPDATE, "fare", 99, {"price": 99})
        AppAudit.of(app).writer.flush()
    # Only old checkpoints: entries purged beside them are the other purge tests' part.
    runner = app.test_cli_runner()
    result = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "90d", "--yes"])
    assert result.exit_code == 0, result.output
    assert "old checkpoints kept: they cannot be deleted here (ProgrammingError)" in result.output
    assert "deleted 0 entries" in result.output
    with engine.connect() as connection:
        kept = connection.execute(select(func.count()).select_from(audit_checkpoint)).scalar_one()
    assert kept >= written  # none went (the purge's own entry may add one)
    verified = runner.invoke(args=["resilience", "audit", "verify"])
    assert verified.exit_code == 0, verified.output
