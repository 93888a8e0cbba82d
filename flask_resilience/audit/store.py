"""Putting rows into the audit table: the fast path, the idempotent path, and
isolating a row the database refuses so that it never blocks the others."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, Insert, insert
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from .partitions import is_partitioned
from .table import audit_log

_COLUMNS = [column.name for column in audit_log.columns]
_COPY = f"COPY {audit_log.name} ({', '.join(_COLUMNS)}) FROM STDIN"
_column_values = operator.itemgetter(*_COLUMNS)
_CHANGES, _DETAILS = _COLUMNS.index("changes"), _COLUMNS.index("details")
# json.dumps(value, default=str) builds an encoder per call; this one is built once (same text).
_json_text = json.JSONEncoder(default=str).encode
_MYSQL_PACKET_TOO_LARGE = 1153  # a row over max_allowed_packet; the server then hangs up
# MySQL/MariaDB errors about one row's values, which pymysql does not class as DataError:
# CHECK constraint (JSON_VALID), SIGNAL from a trigger, bad string value, invalid JSON.
_MYSQL_ROW_ERRORS = frozenset({4025, 1644, 1366, 3140, 1406, _MYSQL_PACKET_TOO_LARGE})

# A MySQL/MariaDB server hangs up on a row over max_allowed_packet, which the
# client often sees as "server has gone away", an outage, and the batch would
# be retried for ever: rows whose JSON is over this are refused before sending
# (4 MiB: MySQL 5.7's default; MariaDB's is 16 MiB, MySQL 8's 64 MiB).
MYSQL_MAX_JSON_BYTES = 4 * 1024 * 1024

Reject = Callable[[dict[str, Any], BaseException], None]


class RowTooLarge(ValueError):
    """A row the database would refuse for its size."""


def copy_values(row: dict[str, Any]) -> list[Any]:
    """A row's COPY values in column order, its JSON fields as JSON text."""
    values = list(_column_values(row))
    changes, details = values[_CHANGES], values[_DETAILS]
    if changes is not None:
        values[_CHANGES] = _json_text(changes)
    if details is not None:
        values[_DETAILS] = _json_text(details)
    return values


def _copy(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's fastest bulk path, for fresh rows (COPY cannot skip duplicates)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    driver_error = connection.dialect.loaded_dbapi.Error
    try:
        with driver.cursor() as cursor, cursor.copy(_COPY) as copy:
            write = copy.write_row
            for row in rows:
                write(copy_values(row))
    except driver_error as exc:
        # Raised by the driver itself (COPY bypasses SQLAlchemy): report it as
        # SQLAlchemy would, so callers handle one family of database errors.
        raise DBAPIError.instance(_COPY, None, exc, driver_error) from exc


def insert_ignoring_duplicates(engine: Engine, *, partitioned: bool = False) -> Insert:
    """An INSERT that skips rows whose id is already stored (safe replays),
    and fails on anything else wrong with a row. ``partitioned``: a PostgreSQL
    partitioned table, whose primary key is ``(id, occurred_at)``."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        key = ["id", "occurred_at"] if partitioned else ["id"]
        return pg_insert(audit_log).on_conflict_do_nothing(index_elements=key)
    if dialect == "sqlite":
        return sqlite_insert(audit_log).on_conflict_do_nothing(index_elements=["id"])
    if dialect in ("mysql", "mariadb"):
        return mysql_insert(audit_log).on_duplicate_key_update(id=audit_log.c.id)
    return insert(audit_log)


def is_row_error(error: BaseException) -> bool:
    """Whether ``error`` is about the rows sent rather than the database being
    unreachable or refusing every write (a revoked grant, a missing table)."""
    if isinstance(error, (DataError, IntegrityError)):
        return True
    if isinstance(error, DBAPIError):
        return _mysql_code(error) in _MYSQL_ROW_ERRORS
    if isinstance(error, StatementError):
        return True  # a value the driver could not send
    return not isinstance(error, (SQLAlchemyError, OSError))


def _write(engine: Engine, rows: list[dict[str, Any]], fresh: bool) -> None:
    with engine.begin() as connection:
        if fresh and engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            _copy(connection, rows)
            return
        # The idempotent path (replays, bisection) is rare: one catalog look per batch.
        partitioned = engine.dialect.name == "postgresql" and is_partitioned(connection)
        try:
            connection.execute(insert_ignoring_duplicates(engine, partitioned=partitioned), rows)
        except DBAPIError as exc:
            if _mysql_code(exc) == _MYSQL_PACKET_TOO_LARGE:
                # The server closed this connection: back in the pool it would
                # fail the retries of the good rows as if the database were down.
                connection.invalidate(exc)
            raise


def _mysql_code(error: DBAPIError) -> Any:
    return error.orig.args[0] if error.orig is not None and error.orig.args else None


def store(engine: Engine, rows: list[dict[str, Any]], *, fresh: bool, reject: Reject) -> None:
    """Store ``rows``; a batch that fails because of its rows is split until
    each refused row is found and handed to ``reject``. Raises when the
    database cannot take rows at all (the caller keeps them for later)."""
    if engine.dialect.name in ("mysql", "mariadb"):
        rows = _refuse_oversized(rows, reject)
    if not rows:
        return
    try:
        _write(engine, rows, fresh)
    except Exception as exc:
        if not is_row_error(exc):
            raise
        if len(rows) == 1:
            reject(rows[0], exc)
            return
        middle = len(rows) // 2
        # Halves are retried idempotently: a failed COPY may hide a duplicate.
        store(engine, rows[:middle], fresh=False, reject=reject)
        store(engine, rows[middle:], fresh=False, reject=reject)


def _refuse_oversized(rows: list[dict[str, Any]], reject: Reject) -> list[dict[str, Any]]:
    """``rows`` without those whose JSON fields exceed MYSQL_MAX_JSON_BYTES
    (handed to ``reject``)."""
    kept = []
    for row in rows:
        size = sum(
            len(json.dumps(row[name], default=str)) for name in ("changes", "details") if row.get(name)
        )
        if size > MYSQL_MAX_JSON_BYTES:
            reject(row, RowTooLarge(f"{size:,} bytes of JSON, over {MYSQL_MAX_JSON_BYTES:,}"))
        else:
            kept.append(row)
    return kept
