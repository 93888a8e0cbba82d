"""Audit log cost: the request thread's share, and throughput into PostgreSQL.

Run: ``python benchmarks/bench_audit.py`` (``--database-url``, default
postgresql+psycopg://postgres@127.0.0.1:5432/test; a scratch schema is
created and dropped).

1. Request-thread cost of one ``log_data_change`` (build, redact, make
   storable, count, link into the chain, append to the journal, enqueue), and
   the same with the journal off.
2. Rows per second into PostgreSQL, same rows, one run:
   - our writer (enqueue, background flushes of ``AUDIT_BUFFER_SIZE`` rows);
   - raw psycopg ``COPY`` (the floor: the fastest bulk path there is);
   - one ``INSERT`` + commit per entry (what a synchronous audit log does).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from typing import Any

import psycopg
import sqlalchemy
from flask import Flask
from sqlalchemy import text

from flask_resilience import AuditEventType, Resilience, log_data_change
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.table import audit_log
from flask_resilience.state import get_state


def scratch_schema(url: str) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    scoped = sqlalchemy.engine.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return schema, scoped.render_as_string(hide_password=False)


JOURNALS = tempfile.mkdtemp(prefix="bench-audit-")


def app_for(url: str, **config: Any) -> tuple[Flask, Resilience]:
    app = Flask("bench-audit", instance_path=JOURNALS)
    app.config.update(RESILIENCE_AUDIT_DATABASE_URI=url, **config)
    extension = Resilience(app)
    return app, extension


def enqueue_cost_us(url: str, number: int, journal: str | None = None) -> float:
    """Request-side cost of one entry; ``journal="off"`` measures without the journal."""
    app, extension = app_for(
        url,
        RESILIENCE_AUDIT_BUFFER_SIZE=10**9,
        RESILIENCE_AUDIT_MAX_QUEUE=10**9,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=10**9,
        RESILIENCE_AUDIT_SPILL_PATH=journal,
        RESILIENCE_AUDIT_JOURNAL_FSYNC="never",
    )
    best = float("inf")
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "fare", 0, {"price": {"old": 1, "new": 2}}, user_id=1)
        for _ in range(5):
            started = time.perf_counter()
            for index in range(number):
                log_data_change(
                    AuditEventType.UPDATE, "fare", index, {"price": {"old": 1, "new": 2}}, user_id=1
                )
            best = min(best, (time.perf_counter() - started) / number * 1e6)
        get_state(app).audit.writer._queue.clear()  # not measuring the database here
    extension.shutdown()
    return best


def writer_rows_per_second(url: str, number: int) -> tuple[float, list[dict[str, Any]]]:
    # A short interval: the last partial batch is not left waiting the default 5 s.
    app, extension = app_for(
        url,
        RESILIENCE_AUDIT_BUFFER_SIZE=1000,
        RESILIENCE_AUDIT_MAX_QUEUE=10**7,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=50,
    )
    writer = get_state(app).audit.writer
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "fare", -1, {"warm": True})
        writer.flush()
        started = time.perf_counter()
        for index in range(number):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": {"old": 1, "new": 2}}, user_id=1)
        pause = threading.Event()
        while writer.counts()["written"] < number + 1:
            pause.wait(0.001)
        elapsed = time.perf_counter() - started
        with get_state(app).audit.engine().connect() as connection:
            rows = [
                dict(row._mapping) for row in connection.execute(sqlalchemy.select(audit_log).limit(number))
            ]
    extension.shutdown()
    return number / elapsed, rows


def _fresh(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same rows under new ids and a new chain (the table's unique keys)."""
    chain = str(uuid.uuid4())
    return [{**row, "id": str(uuid.uuid4()), "chain_id": chain} for row in rows]


def flush_rows_per_second(url: str, number: int) -> float:
    """The writer's own rate: entries already queued, one flush (chain + COPY)."""
    app, extension = app_for(
        url,
        RESILIENCE_AUDIT_BUFFER_SIZE=10**9,
        RESILIENCE_AUDIT_MAX_QUEUE=10**9,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=10**9,
    )
    writer = get_state(app).audit.writer
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "fare", -1, {"warm": True})
        writer.flush()
        for index in range(number):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": {"old": 1, "new": 2}}, user_id=1)
        started = time.perf_counter()
        writer.flush()
        elapsed = time.perf_counter() - started
    extension.shutdown()
    return number / elapsed


def copy_rows_per_second(dsn: str, schema: str, rows: list[dict[str, Any]]) -> float:
    columns = [column.name for column in audit_log.columns]
    fresh = _fresh(rows)
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as connection:
        started = time.perf_counter()
        with (
            connection.cursor() as cursor,
            cursor.copy(f"COPY resilience_audit_log ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in fresh:
                copy.write_row(
                    [json.dumps(row[name]) if isinstance(row[name], dict) else row[name] for name in columns]
                )
        connection.commit()
        return len(fresh) / (time.perf_counter() - started)


def per_row_rows_per_second(dsn: str, schema: str, rows: list[dict[str, Any]]) -> float:
    columns = [column.name for column in audit_log.columns]
    statement = (
        f"INSERT INTO resilience_audit_log ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    )
    fresh = _fresh(rows)
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as connection:
        started = time.perf_counter()
        for row in fresh:
            with connection.cursor() as cursor:
                cursor.execute(
                    statement,
                    [json.dumps(row[name]) if isinstance(row[name], dict) else row[name] for name in columns],
                )
            connection.commit()
        return len(fresh) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    schema, url = scratch_schema(args.database_url)
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    dsn = (
        sqlalchemy.engine.make_url(args.database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    try:
        enqueue = enqueue_cost_us(url, 5000)
        enqueue_memory = enqueue_cost_us(url, 5000, journal="off")
        ours, rows = writer_rows_per_second(url, args.rows)
        flush_only = flush_rows_per_second(url, args.rows)
        copy = copy_rows_per_second(dsn, schema, rows)
        per_row = per_row_rows_per_second(dsn, schema, rows[:2000])
    finally:
        with sqlalchemy.create_engine(args.database_url).begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
        shutil.rmtree(JOURNALS, ignore_errors=True)

    print(f"request-thread cost of one audit call, journal (fsync never): {enqueue:.1f} us  [target <= 8]")
    print(f"request-thread cost of one audit call, memory only:           {enqueue_memory:.1f} us")
    print(f"\n{'into PostgreSQL':40} {'rows/s':>10}")
    print(f"{'flask-resilience, enqueue to stored':40} {ours:10.0f}")
    print(f"{'flask-resilience writer, flush only':40} {flush_only:10.0f}")
    print(f"{'raw COPY (floor)':40} {copy:10.0f}")
    print(f"{'INSERT + commit per entry':40} {per_row:10.0f}")
    print("\nratios (targets in brackets)")
    print(f"  writer (enqueue to stored) / COPY: {ours / copy:.2f} [>= 0.70]")
    print(f"  writer (flush only) / COPY:        {flush_only / copy:.2f}")
    print(f"  writer (enqueue to stored) / per-row: {ours / per_row:.1f} [>= 20]")
    print(f"  writer (flush only) / per-row:        {flush_only / per_row:.1f}")


if __name__ == "__main__":
    main()
