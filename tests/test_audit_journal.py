"""The audit journal file itself: commit marks, compaction, torn records, adoption."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from flask_resilience.audit.chain import Chain
from flask_resilience.audit.events import AuditEntry
from flask_resilience.audit.intake import entry_row
from flask_resilience.audit.journal import COMPACT_AFTER, Journal, entry_record, parse


def records(chain: Chain, count: int) -> list[bytes]:
    lines = []
    for number in range(count):
        row = entry_row(AuditEntry(event_type="UPDATE", resource="fare", resource_id=str(number)), _now())
        lines.append(entry_record(row, chain.link_encoded(row)))
    return lines


def _now() -> datetime:
    return datetime(2026, 1, 1, 12, 0, 0, 123456)


def journal_files(base: Path) -> list[Path]:
    return sorted(base.parent.glob(f"{base.stem}.*{base.suffix}"))


def test_entries_round_trip_with_their_chain_place(tmp_path: Path) -> None:
    chain = Chain(None)
    journal = Journal(tmp_path / "audit.journal")
    for line in records(chain, 3):
        journal.append(line)
    rows = [row for row, _ in journal.read(0, journal.end)]
    assert [row["seq"] for row in rows] == [1, 2, 3]
    assert rows[2]["entry_hash"] == chain.prev_hash
    assert rows[0]["logged_at"] == _now() and rows[0]["resource_id"] == "0"
    journal.close()


def test_commit_truncates_marks_and_compacts_without_losing_the_tail(tmp_path: Path) -> None:
    base = tmp_path / "audit.journal"
    journal = Journal(base)
    lines = records(Chain(None), 4000)
    ends = []
    for line in lines:
        journal.append(line)
        ends.append(journal.end)
    stored = next(index for index, end in enumerate(ends) if end >= COMPACT_AFTER)
    journal.commit(ends[10])  # a mark: the file keeps growing
    assert journal.committed == ends[10] and journal.end > ends[-1]
    journal.commit(ends[stored])  # past the threshold: the tail moves to a fresh file
    assert journal.committed == 0
    tail = [row["resource_id"] for row, _ in journal.read(0, journal.end)]
    assert tail == [str(number) for number in range(stored + 1, 4000)]
    assert len(journal_files(base)) == 1
    journal.commit(journal.end)  # everything stored: emptied
    assert journal.end == 0 and journal_files(base)[0].stat().st_size == 0
    journal.close()
    assert journal_files(base) == []


def test_a_torn_last_record_ends_the_read_and_a_dead_journal_is_adopted_once(tmp_path: Path) -> None:
    base = tmp_path / "audit.journal"
    lines = records(Chain(None), 6)
    dead = base.with_name("audit.4242.0badf00d.journal")
    dead.write_bytes(b"".join(lines[:5]) + lines[5][:40])  # killed in the middle of a write
    assert [row["seq"] for row, _ in parse(dead.read_bytes())[0]] == [1, 2, 3, 4, 5]

    adopted: list[dict[str, Any]] = []
    survivor = Journal(base)
    assert survivor.adopt(adopted.extend) == 5
    assert [row["seq"] for row in adopted] == [1, 2, 3, 4, 5]
    assert not dead.exists()
    assert survivor.adopt(adopted.extend) == 0


def test_a_live_writers_journal_is_not_adopted_and_a_failed_store_keeps_a_dead_one(tmp_path: Path) -> None:
    base = tmp_path / "audit.journal"
    live = Journal(base)
    live.append(records(Chain(None), 1)[0])
    other = Journal(base)
    assert other.adopt(lambda rows: None) == 0  # locked by its writer

    live.forget()  # as if the process died: its lock goes with its file descriptor

    def database_down(rows: list[dict[str, Any]]) -> None:
        raise OSError("down")

    assert other.adopt(database_down) == 0
    assert len(journal_files(base)) == 1  # kept for the next try
    assert other.adopt(lambda rows: None) == 1
    assert journal_files(base) == []


def test_fsync_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        Journal(tmp_path / "audit.journal", fsync="sometimes")
    journal = Journal(tmp_path / "audit.journal", fsync="always")
    journal.append(records(Chain(None), 1)[0])
    journal.sync()
    assert len(journal.read(0, journal.end)) == 1
    journal.close()
