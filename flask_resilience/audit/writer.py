"""The audit writer's thread: stores the queued entries in batches.

Entries arrive linked and journaled (``intake.py``). A
:class:`ProcessLocalWorker` thread stores the queue every ``flush_interval``
seconds, or as soon as ``buffer_size`` entries wait, and then commits their
journal offset. While the database is down the entries wait in the journal
and the next flush replays them; a row the database refuses is isolated and
quarantined (``store.py``), the log never stops for it. After each flush the
writer keeps partitions ahead and checkpoints its chain's stored head.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from time import perf_counter_ns
from typing import Any

from sqlalchemy import Engine

from ..histograms import Batches
from ..lifecycle import no_exit, terminating
from .chain import Chain, adoption_entry, closing_entry
from .checkpoints import CheckpointStore
from .events import AuditEntry
from .intake import AuditIntake
from .journal import Journal
from .partitions import PartitionKeeper
from .store import store
from .table import describe_error

logger = logging.getLogger("flask_resilience.audit")

_MAX_BACKOFF = 30.0
_ADOPT_EVERY = 30.0  # seconds between looks for dead processes' journals


def _note_adopted(adopted: dict[str, tuple[int, int]], rows: list[dict[str, Any]]) -> None:
    """Count a dead writer's rows by chain: (its last seq, entries adopted)."""
    for row in rows:
        last, count = adopted.get(row["chain_id"], (0, 0))
        adopted[row["chain_id"]] = (max(last, row["seq"]), count + 1)


class AuditWriter(AuditIntake):
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
        super().__init__(
            "flask-resilience-audit",
            buffer_size=buffer_size,
            max_queue=max_queue,
            journal=journal,
            hmac_key=hmac_key,
        )
        self.flush_interval = flush_interval
        # Run once on the engine before the first write (the SQLite fallback migrates itself).
        self.prepare: Callable[[Engine], None] | None = None
        self.engine: Engine | None = None
        self._prepared = False
        self.batches = Batches()  # flush durations and sizes (Prometheus histograms)
        self.last_flush: datetime | None = None
        # Where chain heads are checkpointed, and PostgreSQL partitions kept
        # ahead (set by AppAudit.from_config).
        self.checkpoints: CheckpointStore | None = None
        self.partitions: PartitionKeeper | None = None
        self.reset_process()

    def reset_process(self) -> None:
        super().reset_process()
        self._flush_lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = 0.5
        self._adopted_at = -_ADOPT_EVERY
        self._next_flush = time.monotonic() + self.flush_interval
        self._outage = False
        self._stored_head: tuple[str, int, str] | None = None  # (chain, seq, hash) last stored

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
