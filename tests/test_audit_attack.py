"""Hostile review of the audit log's durability promises: each test here
failed before its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flask_resilience.audit.journal import Journal


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
