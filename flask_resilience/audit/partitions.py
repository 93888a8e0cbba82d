"""PostgreSQL range partitions of the audit log on ``occurred_at`` (``RESILIENCE_AUDIT_PARTITION``).

At 10k entries/s a batched ``DELETE`` of a month is billions of rows of
dead tuples and WAL; dropping that month's partition is one catalog change.
``convert`` turns the table into a partitioned one (run by the migration and
by ``flask resilience db upgrade``), one partition per month or day,
``resilience_audit_log_p2026_11`` or ``..._p2026_11_30``, plus a default
partition so an entry outside every range is never refused; the writer keeps
``AHEAD`` periods created ahead (:class:`PartitionKeeper`); ``purge`` drops
whole partitions (``purge.py``).

A partitioned table's unique keys must include the partition column, so the
primary key becomes ``(id, occurred_at)`` and ``(chain_id, seq)`` is indexed
but no longer unique (``verify`` still reports a duplicated ``seq``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from .table import TABLE_NAME

logger = logging.getLogger("flask_resilience.audit")

MODES = ("none", "month", "day")
AHEAD = 2  # periods created in advance
DEFAULT_PARTITION = f"{TABLE_NAME}_pdefault"
_NAME = re.compile(rf"^{TABLE_NAME}_p(\d{{4}})_(\d{{2}})(?:_(\d{{2}}))?$")
_INDEXES_OF = text("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t")
_INDEXES = (
    ("ix_resilience_audit_occurred_at", "occurred_at"),
    ("ix_resilience_audit_user_occurred", "user_id, occurred_at"),
    ("ix_resilience_audit_event_occurred", "event_type, occurred_at"),
    ("ix_resilience_audit_request_id", "request_id"),
    ("ix_resilience_audit_chain_seq", "chain_id, seq"),
)


def period_start(moment: datetime, mode: str) -> datetime:
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    return day if mode == "day" else day.replace(day=1)


def next_period(start: datetime, mode: str) -> datetime:
    if mode == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def partition_name(start: datetime, mode: str) -> str:
    return f"{TABLE_NAME}_p{start:%Y_%m_%d}" if mode == "day" else f"{TABLE_NAME}_p{start:%Y_%m}"


def bounds(name: str) -> tuple[datetime, datetime] | None:
    """The ``[start, end)`` range of one of our partitions, from its name."""
    match = _NAME.match(name)
    if match is None:
        return None
    year, month, day = match.groups()
    start = datetime(int(year), int(month), int(day or 1))
    return start, next_period(start, "day" if day else "month")


def is_partitioned(connection: Connection) -> bool:
    kind = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"), {"name": TABLE_NAME}
    ).scalar()
    return kind == "p"


def partitions(connection: Connection) -> list[str]:
    """Our range partitions (not the default one), oldest first."""
    names = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(:name)"
        ),
        {"name": TABLE_NAME},
    ).scalars()
    return sorted(name for name in names if bounds(name) is not None)


def create_partition(connection: Connection, start: datetime, mode: str) -> None:
    end = next_period(start, mode)
    connection.execute(
        text(
            f'CREATE TABLE IF NOT EXISTS "{partition_name(start, mode)}" PARTITION OF {TABLE_NAME} '
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
    )


def convert(connection: Connection, mode: str, now: datetime) -> None:
    """Make the (PostgreSQL) audit table partitioned by ``mode``, keeping its rows."""
    if mode == "none" or connection.dialect.name != "postgresql" or is_partitioned(connection):
        return
    old = f"{TABLE_NAME}_unpartitioned"
    connection.execute(text(f"ALTER TABLE {TABLE_NAME} RENAME TO {old}"))
    for index in connection.execute(_INDEXES_OF, {"t": old}).scalars():
        connection.execute(text(f'ALTER INDEX "{index}" RENAME TO "{index}_old"'))
    connection.execute(
        text(f"CREATE TABLE {TABLE_NAME} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE (occurred_at)")
    )
    connection.execute(text(f"ALTER TABLE {TABLE_NAME} ADD PRIMARY KEY (id, occurred_at)"))
    for name, columns in _INDEXES:
        connection.execute(text(f"CREATE INDEX {name} ON {TABLE_NAME} ({columns})"))
    now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    # Our own constant names only, never input: the S608 warnings below are about f-strings in SQL.
    oldest = connection.execute(text(f"SELECT min(occurred_at) FROM {old}")).scalar() or now  # noqa: S608
    last = period_start(now, mode)
    for _ in range(AHEAD):
        last = next_period(last, mode)
    start = period_start(min(oldest, now), mode)
    while start <= last:
        create_partition(connection, start, mode)
        start = next_period(start, mode)
    connection.execute(text(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE_NAME} DEFAULT"))
    connection.execute(text(f"INSERT INTO {TABLE_NAME} SELECT * FROM {old}"))  # noqa: S608
    connection.execute(text(f"DROP TABLE {old}"))


class PartitionKeeper:
    """Creates the current and the next ``AHEAD`` periods' partitions: at the
    writer's first write, then at most every ``every`` seconds."""

    def __init__(self, mode: str, every: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.every = every
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def keep_ahead(self, engine: Engine) -> None:
        if self.mode == "none" or engine.dialect.name != "postgresql" or self._clock() < self._next:
            return
        with self._lock:
            self._next = self._clock() + self.every
            start = period_start(datetime.now(UTC), self.mode)
            try:
                with engine.begin() as connection:
                    if not is_partitioned(connection):
                        return
                    existing = set(partitions(connection))
                    for _ in range(AHEAD + 1):
                        if partition_name(start, self.mode) not in existing:
                            create_partition(connection, start, self.mode)
                        start = next_period(start, self.mode)
            except (
                DBAPIError
            ) as exc:  # another worker won the race, or no privilege: the default partition holds
                logger.warning("audit partitions not created ahead: %s", type(exc.orig).__name__)
