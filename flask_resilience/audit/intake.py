"""The request side of the audit writer: an entry is linked and journaled
at once, then queued in memory for the writer thread (``writer.py``).

:meth:`AuditIntake.submit` gives the entry its place in this process's hash
chain and appends it to the journal (one ``write()``) before it returns.
While the database cannot take rows, entries stay in the journal (the spill
and the journal are the same file): memory then holds at most ``max_queue``
entries and the next flush reads the rest from disk. Entries are linked once,
when they enter the journal, so no replay ever renumbers them. Everything
here runs under ``_lock``; storing runs under the writer's ``_flush_lock``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

from ..lifecycle import ProcessLocalWorker, no_exit
from .chain import Chain, opening_entry
from .events import AuditEntry, AuditEventType, AuditStatus, Severity
from .journal import Journal, entry_record

logger = logging.getLogger("flask_resilience.audit")

COUNTS = ("written", "spilled", "replayed", "dropped", "rejected", "flush_errors", "journal_errors")


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value.replace(tzinfo=None)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def entry_row(entry: AuditEntry, logged_at: datetime) -> dict[str, Any]:
    row = vars(entry).copy()
    row["occurred_at"] = _naive_utc(entry.occurred_at)
    row["logged_at"] = logged_at
    row["event_type"] = str(row["event_type"])
    row["status"] = str(row["status"])
    row["severity"] = str(row["severity"])
    return row


class AuditIntake(ProcessLocalWorker):
    """Links, journals and queues entries; :class:`~.writer.AuditWriter`
    adds the thread that stores them."""

    def __init__(
        self, name: str, *, buffer_size: int, max_queue: int, journal: Journal | None, hmac_key: bytes | None
    ) -> None:
        super().__init__(name)
        self.buffer_size = buffer_size
        self.max_queue = max_queue
        self.journal = journal
        self._hmac_key = hmac_key
        self._counts: Counter[str] = Counter()

    def reset_process(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[dict[str, Any], bool]] = deque()  # (row, on disk too)
        self._disk_only = False  # entries past the journal's commit mark may be on disk only
        self._on_disk_only = 0
        self._dropped = 0  # dropped and not yet told in an AUDIT_GAP entry
        self._journal_failing = False
        self.chain = Chain(self._hmac_key)  # one chain per writer process
        if self.journal is not None:
            self.journal.forget()

    def submit(self, entry: AuditEntry) -> bool:
        """Link, journal and queue an entry (already redacted and storable);
        False when it had to be dropped (counted, and told in an AUDIT_GAP entry)."""
        self.in_this_process()
        row = entry_row(entry, datetime.now(UTC).replace(tzinfo=None))
        with no_exit, self._lock:
            accepted = self._accept(row)
            due = len(self._queue) + self._on_disk_only >= self.buffer_size
        if due:
            self.wake()
        self.ensure_running()
        return accepted

    def _link(self, row: dict[str, Any]) -> bytes:
        """The one place an entry joins the chain: once, as it enters the journal.
        A chain's first entry (or the first after a clean close) is preceded by
        CHAIN_OPENED, linked as its seq 1."""
        self._open_chain_if_due(row["occurred_at"])
        return self.chain.link_encoded(row)

    def _open_chain_if_due(self, opened_at: datetime) -> None:
        if self.chain.seq and not self.chain.closed:
            return
        if self.chain.closed:  # entries recorded after a clean stop open a new chain
            self.chain = Chain(self._hmac_key)
        opening = entry_row(opening_entry(self.chain, opened_at), datetime.now(UTC).replace(tzinfo=None))
        self._enqueue_linked(opening, self.chain.link_encoded(opening))

    def _enqueue_linked(self, row: dict[str, Any], encoded: bytes) -> None:
        """Journal and queue a linked row the writer adds itself (never dropped:
        memory may exceed ``max_queue`` by these few)."""
        on_disk = self.journal is not None and self._journal_append(self.journal, entry_record(row, encoded))
        if on_disk and self._disk_only:
            self._on_disk_only += 1
        else:
            self._queue.append((row, on_disk))

    def _accept(self, row: dict[str, Any]) -> bool:
        journal = self.journal
        memory_full = len(self._queue) >= self.max_queue
        disk_usable = journal is not None and not self._journal_failing
        if (memory_full and not disk_usable) or (journal is not None and journal.end >= journal.max_bytes):
            self._drop(1)
            return False
        self._open_chain_if_due(row["occurred_at"])  # kept even if this entry is taken back
        saved = self.chain.seq, self.chain.prev_hash
        encoded = self._link(row)
        on_disk = journal is not None and self._journal_append(journal, entry_record(row, encoded))
        if on_disk and (memory_full or self._disk_only):
            if not self._disk_only:
                self._disk_only = True
                self._queue = deque(item for item in self._queue if not item[1])
            self._on_disk_only += 1
            self._counts["spilled"] += 1
        elif not memory_full:
            self._queue.append((row, on_disk))
        else:  # neither the journal nor memory can keep it: take it back out of the chain
            self.chain.seq, self.chain.prev_hash = saved
            self._drop(1)
            return False
        return True

    def _journal_append(self, journal: Journal, record: bytes) -> bool:
        try:
            journal.append(record)
        except OSError as exc:
            self._counts["journal_errors"] += 1
            if not self._journal_failing:
                logger.error(
                    "audit journal %s cannot be written (%s): entries wait in memory", journal.base, exc
                )
            self._journal_failing = True
            return False
        if self._journal_failing:
            logger.warning("audit journal %s is writable again", journal.base)
            self._journal_failing = False
        return True

    def _drop(self, count: int) -> None:
        self._dropped += count
        self._counts["dropped"] += count

    def _add_linked_entry(self, entry: AuditEntry) -> None:
        """Link, journal and queue an entry of the writer's own (lock held)."""
        row = entry_row(entry, datetime.now(UTC).replace(tzinfo=None))
        self._enqueue_linked(row, self._link(row))

    def _add_gap_locked(self, count: int, kind: str, **details: Any) -> None:
        if kind == "dropped":
            self._dropped = 0
            message = f"{count} audit entries were dropped: neither the journal nor memory could keep them"
        else:
            message = f"{count} audit entry was refused by the database and quarantined"
        gap = AuditEntry(
            event_type=AuditEventType.AUDIT_GAP,
            status=AuditStatus.FAILURE,
            severity=Severity.CRITICAL,
            message=message,
            details={kind: count, **details},
        )
        self._add_linked_entry(gap)

    # -- statistics ------------------------------------------------------------------------

    def queue_size(self) -> int:
        with self._lock:
            return len(self._queue) + self._on_disk_only

    def counts(self) -> dict[str, int]:
        return {name: self._counts.get(name, 0) for name in COUNTS}

    def reset_counts(self) -> None:
        self._counts.clear()
