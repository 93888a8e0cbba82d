"""The audit writer: entries are linked and journaled at once, stored in batches.

On the request side, :meth:`AuditWriter.submit` gives the entry its place in
this process's hash chain and appends it to the journal (one ``write()``)
before it returns, then queues it in memory. A :class:`ProcessLocalWorker`
thread stores the queue every ``flush_interval`` seconds, or as soon as
``buffer_size`` entries wait, and then commits their journal offset.

While the database cannot take rows, entries stay in the journal (the spill
and the journal are the same file): memory then holds at most ``max_queue``
entries and the next flush reads the rest from disk. Entries are linked once,
when they enter the journal, so no replay ever renumbers them. A row the
database refuses is isolated and quarantined; the log never stops for it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter_ns
from typing import Any

from sqlalchemy import Engine

from ..histograms import Batches
from ..lifecycle import ProcessLocalWorker, no_exit, terminating
from .chain import Chain, adoption_entry, closing_entry, opening_entry
from .checkpoints import CheckpointStore
from .events import AuditEntry, AuditEventType, AuditStatus, Severity
from .journal import Journal, entry_record
from .partitions import PartitionKeeper
from .store import store
from .table import describe_error

logger = logging.getLogger("flask_resilience.audit")

_MAX_BACKOFF = 30.0
_ADOPT_EVERY = 30.0  # seconds between looks for dead processes' journals
COUNTS = ("written", "spilled", "replayed", "dropped", "rejected", "flush_errors", "journal_errors")


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value.replace(tzinfo=None)
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _note_adopted(adopted: dict[str, tuple[int, int]], rows: list[dict[str, Any]]) -> None:
    """Count a dead writer's rows by chain: (its last seq, entries adopted)."""
    for row in rows:
        last, count = adopted.get(row["chain_id"], (0, 0))
        adopted[row["chain_id"]] = (max(last, row["seq"]), count + 1)


def _row(entry: AuditEntry, logged_at: datetime) -> dict[str, Any]:
    row = vars(entry).copy()
    row["occurred_at"] = _naive_utc(entry.occurred_at)
    row["logged_at"] = logged_at
    row["event_type"] = str(row["event_type"])
    row["status"] = str(row["status"])
    row["severity"] = str(row["severity"])
    return row


class AuditWriter(ProcessLocalWorker):
    """``engine`` is set by the service the first time an entry is recorded."""

    def __init__(
        self,
        *,
        buffer_size: int,
        flush_interval: float,
        max_queue: int,
        journal: Journal | None,
        hmac_key: bytes | None,
    ) -> None:
        super().__init__("flask-resilience-audit")
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.journal = journal
        self._hmac_key = hmac_key
        # Run once on the engine before the first write (the SQLite fallback migrates itself).
        self.prepare: Callable[[Engine], None] | None = None
        self.engine: Engine | None = None
        self._prepared = False
        self._counts: Counter[str] = Counter()
        self.batches = Batches()  # flush durations and sizes (Prometheus histograms)
        self.last_flush: datetime | None = None
        # Where chain heads are checkpointed, and PostgreSQL partitions kept
        # ahead (set by AppAudit.from_config).
        self.checkpoints: CheckpointStore | None = None
        self.partitions: PartitionKeeper | None = None
        self.reset_process()

    def reset_process(self) -> None:
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._queue: deque[tuple[dict[str, Any], bool]] = deque()  # (row, on disk too)
        self._disk_only = False  # entries past the journal's commit mark may be on disk only
        self._on_disk_only = 0
        self._dropped = 0  # dropped and not yet told in an AUDIT_GAP entry
        self._retry_at = 0.0
        self._backoff = 0.5
        self._adopted_at = -_ADOPT_EVERY
        self._next_flush = time.monotonic() + self.flush_interval
        self._journal_failing = False
        self._outage = False
        self.chain = Chain(self._hmac_key)  # one chain per writer process
        self._stored_head: tuple[str, int, str] | None = None  # (chain, seq, hash) last stored
        if self.journal is not None:
            self.journal.forget()

    # -- request side ----------------------------------------------------------------

    def submit(self, entry: AuditEntry) -> bool:
        """Link, journal and queue an entry (already redacted and storable);
        False when it had to be dropped (counted, and told in an AUDIT_GAP entry)."""
        self.in_this_process()
        row = _row(entry, datetime.now(UTC).replace(tzinfo=None))
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
        opening = _row(opening_entry(self.chain, opened_at), datetime.now(UTC).replace(tzinfo=None))
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

    def write_now(self, entry: AuditEntry) -> None:
        """Record and store at once; when the database cannot take it, the
        entry is in the journal (fsynced) when this returns."""
        self.submit(entry)
        self.flush()
        if self._disk_only and self.journal is not None:
            with self._lock:
                self.journal.sync()

    # -- the worker thread -----------------------------------------------------------------

    def run(self) -> None:
        self._adopt_logged()  # on start: store what dead processes left in their journals
        interval_sync = self.journal is not None and self.journal.fsync == "interval"
        while not self.wait(min(self.flush_interval, 1.0) if interval_sync else self.flush_interval):
            now = time.monotonic()
            due = now >= self._next_flush or terminating()
            if (due or len(self._queue) + self._on_disk_only >= self.buffer_size) and now >= self._retry_at:
                self._flush_logged()
            if interval_sync:
                with self._lock:
                    self._sync_journal()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.exception("audit flush failed unexpectedly")

    def _adopt_logged(self) -> None:
        if self.engine is None or self.journal is None:
            return
        with self._flush_lock:
            try:
                self._counts["written"] += self._adopt(self._engine())
            except Exception as exc:  # the database is down: the next flush tries again
                logger.warning("audit: dead processes' journals not stored yet (%s)", exc)
                self._adopted_at = -_ADOPT_EVERY

    def _sync_journal(self) -> None:
        assert self.journal is not None
        try:
            self.journal.sync()
        except OSError as exc:
            logger.warning("audit journal fsync failed: %s", exc)

    def start(self) -> None:
        self.ensure_running()

    def stop(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Stop the thread, store what is queued, and close the journal
        (what could not be stored stays there for the next process)."""
        self._adopted_at = -_ADOPT_EVERY  # a last look for dead siblings' journals
        super().stop(flush=flush, timeout=timeout)
        if flush:
            self._close_chain()
        if self.checkpoints is not None:
            self.checkpoints.dispose()
        if self.journal is not None:
            with self._lock:
                try:
                    self.journal.close()
                except OSError as exc:
                    logger.warning("audit journal close failed: %s", exc)

    # -- storing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Store what is queued (and what waits on disk) now."""
        self.in_this_process()
        with no_exit, self._flush_lock:
            began = perf_counter_ns()
            self.batches.record(began, self._flush())

    def _take(self) -> tuple[list[tuple[dict[str, Any], bool]], bool, int, int]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            from_disk, self._disk_only, self._on_disk_only = self._disk_only, False, 0
            journal = self.journal
            return items, from_disk, journal.committed if journal else 0, journal.end if journal else 0

    def _flush(self) -> int:
        self._next_flush = time.monotonic() + self.flush_interval
        if self.engine is None:
            return 0  # a process that never audited has nothing to store
        items, from_disk, committed, end = self._take()
        written = replayed = 0
        try:
            engine = self._engine()
            adopted = self._adopt(engine)
            written += adopted
            if from_disk and self.journal is not None:
                replayed = self._replay(engine, committed, end)  # counts itself
            memory = [row for row, on_disk in items if not (from_disk and on_disk)]
            store(engine, memory, fresh=not from_disk, reject=self._reject)
            written += len(memory)
            self._note_stored(memory)
        except BaseException as exc:  # even an interrupt must not lose the batch taken
            self._failed(items, exc)
            if not isinstance(exc, Exception):
                raise
            return 0
        with self._lock:
            if self.journal is not None:
                self.journal.commit(end)
            gap = self._dropped
            if gap:  # told once the database takes rows again
                self._add_gap_locked(gap, "dropped")
        self._counts["written"] += written
        self._recovered()
        self._after_write()
        return written + replayed + (self._flush() if gap or adopted else 0)

    def _replay(self, engine: Engine, start: int, stop: int) -> int:
        """Store this process's journaled entries between two offsets a chunk
        at a time, advancing the commit mark after each: memory stays bounded
        and a failure (or a kill) mid-replay repeats at most one chunk."""
        replayed = 0
        assert self.journal is not None
        for chunk in self.journal.read_chunks(start, stop):
            rows = [row for row, _ in chunk]
            store(engine, rows, fresh=False, reject=self._reject)
            self._note_stored(rows)
            self._counts["replayed"] += len(rows)
            self._counts["written"] += len(rows)  # counted even if a later chunk fails
            replayed += len(rows)
            if chunk:
                with self._lock:  # no compaction until the replay ends: offsets stay valid
                    self.journal.commit(chunk[-1][1], compact=False)
        return replayed

    def _engine(self) -> Engine:
        if self.engine is None:
            raise OSError("the audit writer has no database engine yet")
        if not self._prepared:
            if self.prepare is not None:
                self.prepare(self.engine)
            self._prepared = True
        return self.engine

    def _adopt(self, engine: Engine) -> int:
        if self.journal is None or time.monotonic() - self._adopted_at < _ADOPT_EVERY:
            return 0
        dead_chains: dict[str, tuple[int, int]] = {}  # chain -> (last seq, entries adopted)

        def store_dead(rows: list[dict[str, Any]]) -> None:
            store(engine, rows, fresh=False, reject=self._reject)
            _note_adopted(dead_chains, rows)

        adopted = self.journal.adopt(store_dead)
        self._adopted_at = time.monotonic()
        if dead_chains:  # recorded in our chain: each of those chains ended in a known crash
            with self._lock:
                for chain_id, (last_seq, count) in dead_chains.items():
                    self._add_linked_entry(adoption_entry(chain_id, last_seq, count))
        if adopted:
            self._counts["replayed"] += adopted
            logger.info("audit: stored %d entries from dead processes' journals", adopted)
        return adopted

    def _failed(self, items: list[tuple[dict[str, Any], bool]], error: BaseException) -> None:
        """The database cannot take rows: journaled ones wait on disk, the rest in memory."""
        self._counts["flush_errors"] += 1
        with self._lock:
            on_disk = self.journal is not None
            keep = [item for item in items if not (on_disk and item[1])]
            self._counts["spilled"] += len(items) - len(keep)
            if on_disk:
                self._disk_only = True
                self._queue = deque(item for item in self._queue if not item[1])
            # Linked rows go back whole (dropping one would leave a hole in the
            # chain): memory holds at most twice max_queue, as new entries
            # are refused at max_queue.
            self._queue.extendleft(reversed(keep))
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        if not self._outage:
            logger.error(  # the error's kind and first line, never its SQL or bind parameters
                "audit entries cannot be stored (%s); they wait in the journal and memory",
                describe_error(error),
            )
            self._outage = True

    def _recovered(self) -> None:
        self._backoff = 0.5
        self._retry_at = 0.0
        self.last_flush = datetime.now(UTC)
        if self._outage:
            logger.warning("audit entries are being stored again")
            self._outage = False

    def _reject(self, row: dict[str, Any], error: BaseException) -> None:
        """A row the database refuses on its own: quarantine it, record why, go on."""
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]
        self._counts["rejected"] += 1
        logger.error("audit entry %s refused by the database (%s); quarantined", row.get("id"), reason)
        if self.journal is not None:
            try:
                self.journal.reject(row, reason)
            except OSError as exc:
                logger.error("audit quarantine file cannot be written (%s): entry %r lost", exc, row)
        with self._lock:
            # Naming the row's place and hash lets verify account for its seq
            # and check the next row's link across it.
            self._add_gap_locked(
                1,
                "rejected",
                reason=reason,
                entry_id=row.get("id"),
                chain_id=row.get("chain_id"),
                seq=row.get("seq"),
                entry_hash=row.get("entry_hash"),
            )

    def _add_linked_entry(self, entry: AuditEntry) -> None:
        """Link, journal and queue an entry of the writer's own (lock held)."""
        row = _row(entry, datetime.now(UTC).replace(tzinfo=None))
        self._enqueue_linked(row, self._link(row))

    # -- integrity: chain lifecycle records and signed checkpoints ------------------------

    def _note_stored(self, *batches: list[dict[str, Any]]) -> None:
        """Remember the furthest stored entry of this process's chain (what a checkpoint may sign)."""
        own = self.chain.chain_id
        for rows in batches:
            for row in rows:
                if row["chain_id"] == own and (
                    self._stored_head is None or row["seq"] > self._stored_head[1]
                ):
                    self._stored_head = (own, row["seq"], row["entry_hash"])

    def _stored_chain(self) -> Chain | None:
        """This process's chain as far as it is stored (linking runs ahead of storing)."""
        head = self._stored_head
        if head is None or head[0] != self.chain.chain_id:
            return None
        stored = copy.copy(self.chain)
        stored.seq, stored.prev_hash = head[1], head[2]
        return stored

    def _after_write(self) -> None:
        """After each successful flush (an idle one too: the heartbeat): keep
        partitions created ahead, and checkpoint the stored head when due."""
        if self.engine is None:
            return
        if self.partitions is not None:
            self.partitions.keep_ahead(self.engine)
        stored = self._stored_chain()
        if self.checkpoints is not None and stored is not None and self.checkpoints.due(stored):
            self.checkpoints.record(stored, self.engine)

    def _close_chain(self) -> None:
        """At a clean stop: end an opened chain with CHAIN_CLOSED and a closing
        checkpoint, once everything before it is stored."""
        with self._lock:
            chain = self.chain
            if self.engine is None or not chain.seq or chain.closed:
                return
            self._add_linked_entry(closing_entry(chain))
            # Closed at once: an entry recorded meanwhile opens a new chain rather
            # than following CHAIN_CLOSED (a close not stored yet is in the journal).
            chain.closed = True
        self.flush()
        stored = self._stored_head == (chain.chain_id, chain.seq, chain.prev_hash)
        if stored and self.checkpoints is not None:
            self.checkpoints.record(chain, self.engine, closing=True)

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
