"""The audit writer: a bounded queue, a flush thread, a spill file.

The request thread only appends to the queue. A background thread (started
lazily in each process) flushes every ``flush_interval`` seconds, or as soon
as ``buffer_size`` entries wait, in one batched statement. Entries get their
place in the process's hash chain when flushed. When the database fails,
the batch is appended to the spill file (fsynced) and retried with backoff;
the spill is replayed, in order, before anything newer is written, and rows
that were already written are skipped by their unique id, so nothing is lost
or duplicated.
"""

from __future__ import annotations

import json
import logging
import operator
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..lifecycle import fork_generation
from .chain import Chain, adoption_entry, closing_entry, opening_entry
from .checkpoints import CheckpointStore
from .events import AuditEntry, AuditEventType, AuditStatus, Severity
from .partitions import PartitionKeeper
from .spill import SpillFiles
from .table import audit_log, describe_error

logger = logging.getLogger("flask_resilience")

_MAX_BACKOFF = 30.0


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _row(entry: AuditEntry, logged_at: datetime) -> dict[str, Any]:
    row = entry.as_row()
    row["occurred_at"] = _naive_utc(entry.occurred_at)
    row["logged_at"] = logged_at
    row["event_type"] = str(row["event_type"])
    row["status"] = str(row["status"])
    row["severity"] = str(row["severity"])
    return row


_COLUMNS = [column.name for column in audit_log.columns]
_COPY = f"COPY {audit_log.name} ({', '.join(_COLUMNS)}) FROM STDIN"
_column_values = operator.itemgetter(*_COLUMNS)
_JSON_INDEXES = (_COLUMNS.index("changes"), _COLUMNS.index("details"))


def _copy(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's fastest bulk path. Only for fresh rows: COPY cannot skip
    duplicates, so replays of the spill file use INSERT ... ON CONFLICT."""
    driver = connection.connection.driver_connection
    assert driver is not None
    driver_error = connection.dialect.loaded_dbapi.Error
    try:
        with driver.cursor() as cursor, cursor.copy(_COPY) as copy:
            for row in rows:
                values = list(_column_values(row))
                for index in _JSON_INDEXES:
                    if values[index] is not None:
                        values[index] = json.dumps(values[index])
                copy.write_row(values)
    except driver_error as exc:
        # Raised by the driver itself (COPY bypasses SQLAlchemy): report it as
        # SQLAlchemy would, so callers handle one family of database errors.
        raise DBAPIError.instance(_COPY, None, exc, driver_error) from exc


def insert_ignoring_duplicates(engine: Engine) -> Insert:
    """An INSERT that skips rows whose id is already stored (safe replays)."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        # No conflict target: a partitioned table's key is (id, occurred_at), a plain one's id.
        return pg_insert(audit_log).on_conflict_do_nothing()
    if dialect == "sqlite":
        return insert(audit_log).prefix_with("OR IGNORE")
    if dialect in ("mysql", "mariadb"):
        return insert(audit_log).prefix_with("IGNORE")
    return insert(audit_log)


class AuditWriter:
    """``engine`` is found lazily (``engine_provider``, called from a thread
    that has an app context the first time an entry is submitted)."""

    def __init__(
        self,
        *,
        buffer_size: int,
        flush_interval: float,
        max_queue: int,
        spill_path: Path | None,
        hmac_key: bytes | None,
    ) -> None:
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self._spill_files = SpillFiles(spill_path) if spill_path is not None else None
        self._hmac_key = hmac_key
        # Run once on the engine before the first write (the SQLite fallback migrates itself).
        self.prepare: Callable[[Engine], None] | None = None
        self.engine: Engine | None = None
        self._prepared = False
        self._counts: Counter[str] = Counter()
        self.last_flush: datetime | None = None
        # Integrity hook: where chain heads are checkpointed (set by the extension).
        self.checkpoints: CheckpointStore | None = None
        self.partitions: PartitionKeeper | None = None  # PostgreSQL partitions kept ahead
        self._reset_process()

    def _reset_process(self) -> None:
        self._generation = fork_generation()
        self._queue: deque[AuditEntry] = deque()
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self.chain = Chain(self._hmac_key)  # one chain per writer process

    # -- request side ------------------------------------------------------------

    def submit(self, entry: AuditEntry) -> bool:
        """Queue an entry (already redacted); False when it had to be dropped."""
        if self._generation != fork_generation():
            self._reset_process()
        with self._lock:
            if len(self._queue) >= self.max_queue:
                if self._spill_files is None:
                    self._dropped += 1
                    self._counts["dropped"] += 1
                    return False
                spill_now = True
            else:
                self._queue.append(entry)
                spill_now = False
                if len(self._queue) >= self.buffer_size:
                    self._wake.notify()
        if spill_now:  # queue full: keep it, on disk, rather than lose it
            self._spill([_row(entry, datetime.now(UTC).replace(tzinfo=None))])
        self._ensure_thread()
        return True

    def write_now(self, entry: AuditEntry) -> None:
        """Queue and flush at once: the entry is in the database (or the spill
        file) when this returns."""
        self.submit(entry)
        self.flush()

    # -- the flush thread ------------------------------------------------------------

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                # A daemon, because stop() flushes it at shutdown and at exit.
                self._thread = threading.Thread(target=self._run, name="flask-resilience-audit", daemon=True)
                self._thread.start()

    def start(self) -> None:
        self._ensure_thread()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._stopping and len(self._queue) < self.buffer_size:
                    self._wake.wait(self.flush_interval)
                stopping = self._stopping
            if time.monotonic() >= self._retry_at:
                self.flush()
            if stopping:
                return

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and flush what is queued (to the database or the spill)."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        self._retry_at = 0.0
        self._close_chain()
        if self._spill_files is not None:
            self._spill_files.close()

    # -- writing ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything queued (and any spill first); returns rows written."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                dropped, self._dropped = self._dropped, 0
            if dropped:
                batch.insert(0, _gap_entry(dropped))
            if batch and (self.chain.seq == 0 or self.chain.closed):  # integrity hook: chains start
                if self.chain.closed:  # with CHAIN_OPENED; entries after a stop open a new one
                    self.chain = Chain(self._hmac_key)
                batch.insert(
                    0, opening_entry(self.chain, min(_naive_utc(entry.occurred_at) for entry in batch))
                )
            now = datetime.now(UTC).replace(tzinfo=None)
            rows = [self.chain.link(_row(entry, now)) for entry in batch]
            if not rows and (self.engine is None or not self._has_spill()):
                self._after_write()  # integrity hook: an idle live writer's heartbeat
                return 0  # nothing to write (a process that never audited has no engine)
            try:
                written = self._write(rows)
            except Exception as exc:  # any failure to write means: keep the rows on disk
                if not isinstance(exc, (SQLAlchemyError, OSError)):
                    logger.exception("unexpected error while writing audit entries")
                self._counts["flush_errors"] += 1
                self._spill(rows)
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
                # integrity hook: the error's kind and first line, never its SQL or bind parameters
                logger.error(
                    "audit flush failed (%s); %d entries kept in the spill file",
                    describe_error(exc),
                    len(rows),
                )
                return 0
            self._backoff = 0.5
            self.last_flush = datetime.now(UTC)
            self._after_write()  # integrity hook: the rows are stored, sign the head
            return written

    # -- integrity hooks: chain lifecycle records and signed checkpoints ----------------

    def _after_write(self) -> None:
        """After a successful write (or an idle tick): keep partitions created
        ahead, and checkpoint the head when due."""
        if self.engine is None:
            return
        if self.partitions is not None:
            self.partitions.keep_ahead(self.engine)
        if self.checkpoints is not None and self.checkpoints.due(self.chain):
            self.checkpoints.record(self.chain, self.engine)

    def _close_chain(self) -> None:
        """At a clean stop: end an opened chain with CHAIN_CLOSED and a closing checkpoint."""
        self.flush()
        if self.chain.seq and not self.chain.closed:
            with self._lock:
                self._queue.append(closing_entry(self.chain))
            self.flush()
            if not self._queue and not self._has_spill():
                self.chain.closed = True
                if self.checkpoints is not None and self.engine is not None:
                    self.checkpoints.record(self.chain, self.engine, closing=True)
        if self.checkpoints is not None:
            self.checkpoints.dispose()

    def _engine(self) -> Engine:
        if self.engine is None:
            raise OSError("the audit writer has no database engine yet")
        if not self._prepared:
            if self.prepare is not None:
                self.prepare(self.engine)
            self._prepared = True
        return self.engine

    def _write(self, rows: list[dict[str, Any]]) -> int:
        engine = self._engine()
        replayed = self._replay(engine)
        if rows:
            with engine.begin() as connection:
                if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
                    _copy(connection, rows)
                else:
                    connection.execute(insert_ignoring_duplicates(engine), rows)
            self._counts["written"] += len(rows)
        return replayed + len(rows)

    # -- the spill files ---------------------------------------------------------------

    def _has_spill(self) -> bool:
        return self._spill_files is not None and self._spill_files.pending()

    def _spill(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self._spill_files is None:
            self._counts["dropped"] += len(rows)
            logger.error("audit: %d entries lost (no spill file configured)", len(rows))
            return
        self._spill_files.append(rows)
        self._counts["spilled"] += len(rows)

    def _replay(self, engine: Engine) -> int:
        if self._spill_files is None:
            return 0

        adopted: dict[str, tuple[int, int]] = {}  # integrity hook: dead chain -> (last seq, rows)

        def store(rows: list[dict[str, Any]]) -> None:
            linked = [
                row if row.get("entry_hash") else self.chain.link(row) for row in rows
            ]  # from a full queue
            for start in range(0, len(linked), 1000):
                with engine.begin() as connection:
                    connection.execute(insert_ignoring_duplicates(engine), linked[start : start + 1000])
            _note_adopted(adopted, linked, self.chain.chain_id)

        replayed = self._spill_files.replay(store)
        with self._lock:  # integrity hook: record, in our chain, each dead writer's chain we took over
            self._queue.extend(adoption_entry(chain_id, *seen) for chain_id, seen in adopted.items())
        if replayed:
            self._counts["replayed"] += replayed
            logger.info("audit: replayed %d spilled entries", replayed)
        return replayed

    # -- statistics ------------------------------------------------------------------------

    def queue_size(self) -> int:
        with self._lock:
            return len(self._queue)

    def counts(self) -> dict[str, int]:
        return {
            name: self._counts.get(name, 0)
            for name in ("written", "spilled", "replayed", "dropped", "flush_errors")
        }

    def reset_counts(self) -> None:
        self._counts.clear()


def _note_adopted(adopted: dict[str, tuple[int, int]], rows: list[dict[str, Any]], own_chain: str) -> None:
    """Count replayed rows of other (dead) writers' chains, by chain."""
    for row in rows:
        if row["chain_id"] != own_chain:
            last, count = adopted.get(row["chain_id"], (0, 0))
            adopted[row["chain_id"]] = (max(last, row["seq"]), count + 1)


def _gap_entry(dropped: int) -> AuditEntry:
    return AuditEntry(
        event_type=AuditEventType.AUDIT_GAP,
        status=AuditStatus.FAILURE,
        severity=Severity.CRITICAL,
        message=f"{dropped} audit entries were dropped: the queue was full and no spill file is configured",
        details={"dropped": dropped},
    )
