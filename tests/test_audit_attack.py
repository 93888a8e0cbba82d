"""Hostile review of the audit log's durability promises: each test here
failed before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from flask_resilience.audit.journal import Journal
from flask_resilience.state import get_state
from tests.audit_support import any_database, hostile_app, stored, verify_ok
from tests.conftest import MakeApp

__all__ = ["any_database"]  # a fixture, for pytest


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
        get_state(app).audit.writer.flush()
        assert get_state(app).audit.writer.counts()["rejected"] == 0
    rows = stored(any_database)
    assert [row["event_type"] for row in rows] == ["ADMIN"]
    assert rows[0]["details"]["body"] is not None
    verify_ok(app)
