"""Hostile review of the audit log's durability promises: each test here
failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from werkzeug.test import Client

from flask_resilience.audit import journal as journal_module
from flask_resilience.audit.api import create_audit_log, log_data_change
from flask_resilience.audit.events import AuditEventType
from flask_resilience.audit.journal import Journal
from flask_resilience.audit.service import AppAudit
from tests.audit_support import ROOT, any_database, database, hostile_app, migrated, stored, verify_ok
from tests.conftest import MakeApp

__all__ = ["any_database", "database"]  # fixtures, for pytest


@pytest.mark.parametrize(
    ("base_name", "neighbour"),
    [
        ("app.log", "app.2026-11-29.log"),  # a rotated log next to a journal named like a log
        ("audit.jsonl", "audit.jsonl.rejected.jsonl"),  # the journal's own quarantine
        ("audit-journal", "audit-journal.rejected.jsonl"),  # a base without a suffix
        ("audit.journal", "audit.old.journal"),
    ],
)
def test_adoption_leaves_files_that_are_not_journals_alone(
    tmp_path: Path, base_name: str, neighbour: str
) -> None:
    precious = tmp_path / neighbour
    precious.write_text('{"kept": true}\n')
    stored: list[Any] = []
    journal = Journal(tmp_path / base_name)
    assert journal.adopt(stored.extend) == 0
    assert precious.read_text() == '{"kept": true}\n'
    assert stored == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": NaN}',  # Python's JSON parser takes these; PostgreSQL and MariaDB refuse them
        b'{"amount": Infinity, "floor": -Infinity}',
        b'{"name": "lone \\ud800 surrogate"}',  # MariaDB's JSON_VALID refuses these
        b'{"\\udfff": "in a key"}',
        b'[{"deep": {"er": [NaN, "\\udbff"]}}]',
    ],
)
def test_hostile_json_bodies_are_stored_not_quarantined(
    make_app: MakeApp, any_database: str, body: bytes
) -> None:
    app = hostile_app(make_app, any_database)
    response = Client(app.wsgi_app).post("/api/x", data=body, content_type="application/json")
    assert response.status_code == 200
    with app.app_context():
        AppAudit.of(app).writer.flush()
        assert AppAudit.of(app).writer.counts()["rejected"] == 0
    rows = stored(any_database)
    assert [row["event_type"] for row in rows] == ["ADMIN"]
    assert rows[0]["details"]["body"] is not None
    verify_ok(app)


def test_a_commit_mark_cut_short_by_a_full_disk_does_not_hide_later_entries(tmp_path: Path) -> None:
    """A write that the file-size limit cuts short is a disk filling up in
    miniature: the commit mark must not stay half-written in front of the
    entries appended once there is room again."""
    seqs = _child(
        """
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG / short writes instead of a kill
        ends = [append(journal, chain, number) for number in range(3)]
        resource.setrlimit(resource.RLIMIT_FSIZE, (journal.end + 5, resource.RLIM_INFINITY))
        try:  # the disk fills up: the commit mark gets 5 bytes
            journal.commit(ends[0])
        except OSError:
            pass
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)  # room again
        append(journal, chain, 3)
        append(journal, chain, 4)
        with open(journal._path, "rb") as written:
            rows, _ = parse(written.read())
        print(json.dumps([row["seq"] for row, _ in rows]))
        """,
        tmp_path,
    )
    assert seqs[-4:] == [2, 3, 4, 5]


_CHILD_PREAMBLE = """
import json, os, resource, signal, sys
from datetime import datetime
from pathlib import Path
from flask_resilience.audit.chain import Chain
from flask_resilience.audit.events import AuditEntry
from flask_resilience.audit.journal import Journal, entry_record, parse
from flask_resilience.audit.intake import entry_row

def append(journal, chain, number):
    row = entry_row(AuditEntry(event_type="UPDATE", resource_id=str(number)), datetime(2026, 1, 1))
    journal.append(entry_record(row, chain.link_encoded(row)))
    return journal.end

chain, journal = Chain(None), Journal(Path(sys.argv[1]) / "audit.journal")
"""


def _child(script: str, tmp_path: Path, *, expect_output: bool = True) -> Any:
    """Run ``script`` (after the preamble) in a process of its own (it sets
    resource limits) and return what it printed, as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD_PREAMBLE + textwrap.dedent(script), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if expect_output else None


def test_a_compaction_that_cannot_open_its_new_file_keeps_the_old_one(tmp_path: Path) -> None:
    """No file descriptor left (or no inode, or no room) when the committed
    part is compacted away: the uncommitted tail must stay readable here."""
    result = _child(
        """
        from flask_resilience.audit.journal import COMPACT_AFTER
        ends = []
        while not ends or ends[-1] < COMPACT_AFTER:
            ends.append(append(journal, chain, len(ends)))
        tail = [append(journal, chain, len(ends) + number) for number in range(2)]
        free = os.dup(0)
        os.close(free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            journal.commit(ends[-1])
        except OSError:
            pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (free + 64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        seqs = [row["seq"] for row, _ in journal.read(journal.committed, journal.end)]
        print(json.dumps([len(ends), seqs]))
        """,
        tmp_path,
    )
    count, seqs = result
    assert seqs == [count + 1, count + 2]


def test_an_entry_over_max_allowed_packet_is_quarantined_and_the_log_goes_on(
    make_app: MakeApp, mysql_url: str
) -> None:
    """MariaDB hangs up on a row over ``max_allowed_packet`` (16 MiB by default):
    seen as "server gone away", the batch was retried for ever."""
    url = migrated(mysql_url)
    app = hostile_app(make_app, url)
    huge = {f"field{number}": "x" * 9_000 for number in range(2_000)}  # 18 MB, each string kept
    with app.app_context():
        writer = AppAudit.of(app).writer
        log_data_change(AuditEventType.UPDATE, "document", "1", {"title": {"old": "a", "new": "b"}})
        log_data_change(AuditEventType.UPDATE, "document", "2", huge)
        log_data_change(AuditEventType.UPDATE, "document", "3", {"title": {"old": "b", "new": "c"}})
        writer.flush()
        log_data_change(AuditEventType.UPDATE, "document", "4", None)
        writer.flush()
        assert writer.counts()["rejected"] == 1
        assert writer.queue_size() == 0
    rows = stored(url)
    assert sorted(row["resource_id"] for row in rows if row["resource_id"]) == ["1", "3", "4"]
    assert [row["event_type"] for row in rows].count("AUDIT_GAP") == 1


def test_adoption_stores_the_entries_after_a_damaged_record(tmp_path: Path) -> None:
    """A damaged record in the middle of a dead process's journal (a bad
    block, zeroes after a machine crash): the intact records after it are
    still stored before the file is removed."""
    _child(
        """
        for number in range(3):
            append(journal, chain, number)
        os._exit(0)  # like a killed process: the journal stays
        """,
        tmp_path,
        expect_output=False,
    )
    (dead,) = tmp_path.glob("audit.*.journal")
    lines = dead.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:40] + b"\x00" * 16 + lines[1][56:]
    dead.write_bytes(b"".join(lines))
    stored_rows: list[dict[str, Any]] = []
    assert Journal(tmp_path / "audit.journal").adopt(stored_rows.extend) == 2
    assert [row["seq"] for row in stored_rows] == [1, 3]


class _Name(str):
    """A str subclass, like markupsafe.Markup or an app's own text type."""


def test_text_fields_that_are_not_plain_str_are_made_storable_too(
    make_app: MakeApp, any_database: str
) -> None:
    app = hostile_app(make_app, any_database)
    with app.app_context():
        create_audit_log({"event_type": "UPDATE", "resource": _Name("r" * 300), "resource_id": 10**300})
        create_audit_log({"event_type": "UPDATE", "user_agent": _Name("nul\x00" * 200)})
        writer = AppAudit.of(app).writer
        writer.flush()
        assert writer.counts()["rejected"] == 0
    rows = stored(any_database)
    assert len(rows) == 2
    assert len(rows[0]["resource"]) == 255 and rows[0]["resource"].endswith("chars]")
    assert len(rows[0]["resource_id"]) == 255
    assert "\x00" not in rows[1]["user_agent"]
    verify_ok(app)


def test_a_big_dead_journal_is_adopted_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A journal left after a long outage is hundreds of MB; parsed whole it
    took several times that in memory, in the worker adopting it."""
    _child(
        """
        for number in range(300):
            end = append(journal, chain, number)
            if number == 99:
                journal.commit(end)  # the first hundred were stored
        os._exit(0)
        """,
        tmp_path,
        expect_output=False,
    )
    monkeypatch.setattr(journal_module, "ADOPT_CHUNK_BYTES", 8192)
    batches: list[list[dict[str, Any]]] = []
    assert Journal(tmp_path / "audit.journal").adopt(batches.append) == 200
    assert [row["seq"] for batch in batches for row in batch] == list(range(101, 301))
    assert max(len(batch) for batch in batches) < 40
    assert not list(tmp_path.glob("audit.*.journal"))


def test_on_commit_before_the_app_begins_its_own_transaction(make_app: MakeApp, tmp_path: Path) -> None:
    """``log_data_change(on_commit=True)`` and then ``with db.session.begin():``
    (Flask-SQLAlchemy's documented pattern): the audit call must not start a
    transaction the app's own ``begin()`` then refuses."""
    from flask_sqlalchemy import SQLAlchemy

    url = f"sqlite:///{tmp_path / 'app.db'}"
    app, extension = make_app(SQLALCHEMY_DATABASE_URI=url, RESILIENCE_AUDIT_DATABASE_URI=migrated(url))
    db = SQLAlchemy(app)
    try:
        with app.app_context():
            log_data_change(AuditEventType.UPDATE, "seat", 1, {"row": 1}, on_commit=True)
            with db.session.begin():
                db.session.execute(text("SELECT 1"))
            log_data_change(AuditEventType.UPDATE, "seat", 2, {"row": 2}, on_commit=True)
            try:
                with db.session.begin():
                    raise LookupError("the app's own failure")
            except LookupError:
                pass
            log_data_change(AuditEventType.UPDATE, "seat", 3, {"row": 3}, on_commit=True)
            db.session.remove()  # the request ended without a transaction
            AppAudit.of(app).writer.flush()
    finally:
        extension.shutdown()
    outcome = {row["resource_id"]: row["status"] for row in stored(url)}
    assert outcome == {"1": "SUCCESS", "2": "ROLLED_BACK", "3": "ROLLED_BACK"}


def test_the_quarantine_file_has_the_journal_byte_bound(tmp_path: Path) -> None:
    """Rows a database refuses for a reason a client controls (a character
    set the table cannot hold, say) must not fill the disk one file over."""
    journal = Journal(tmp_path / "audit.journal", max_bytes=4096)
    row = {"id": "x", "user_agent": "u" * 200}
    kept = 0
    for _ in range(100):
        try:
            journal.reject(row, "DataError: refused")
            kept += 1
        except OSError:
            pass
    assert 0 < kept < 100
    assert journal.rejected_path.stat().st_size <= 4096


def test_an_entry_recorded_twice_is_stored_twice_and_verify_stays_intact(
    make_app: MakeApp, database: str
) -> None:
    """``create_audit_log`` returns the entry; recording it again (a retry)
    or giving an ``id`` twice reused the storage key: the database skipped
    the second row silently and verify reported the chain BROKEN."""
    app = hostile_app(make_app, database)
    with app.app_context():
        entry = create_audit_log({"event_type": "PAYMENT", "resource_id": "1"})
        assert entry is not None
        again = create_audit_log(entry)
        create_audit_log({"event_type": "PAYMENT", "resource_id": "2", "id": "order-42"})
        create_audit_log({"event_type": "PAYMENT", "resource_id": "3", "id": "order-42"})
        AppAudit.of(app).writer.flush()
    assert again is not None and again.id != entry.id
    assert sorted(row["resource_id"] for row in stored(database)) == ["1", "1", "2", "3"]
    verify_ok(app)
