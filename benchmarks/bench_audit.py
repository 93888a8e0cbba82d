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
3. Integrity (``--part integrity``): per-entry cost of the canonical form with
   SHA-256 and HMAC-SHA-256, beside RFC 8785 (JCS, if ``rfc8785`` is
   installed); purging last month by dropping its partition vs a batched
   ``DELETE`` of the same rows (``--purge-rows``).
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy
from flask import Flask
from harness import Figure, interleaved, print_figures
from sqlalchemy import text

from flask_resilience import AuditEventType, Resilience, log_data_change
from flask_resilience.audit.chain import GENESIS, HASHED, canonical, link_hash
from flask_resilience.audit.events import AuditEntry
from flask_resilience.audit.intake import entry_row
from flask_resilience.audit.journal import entry_record
from flask_resilience.audit.keys import derive_key
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.partitions import create_partition, period_start
from flask_resilience.audit.purge import purge
from flask_resilience.audit.service import AppAudit
from flask_resilience.audit.table import audit_log

_COLUMNS = [column.name for column in audit_log.columns]


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
        AppAudit.of(app).writer._queue.clear()  # not measuring the database here
    extension.shutdown()
    return best


def link_and_journal_cost_us(url: str, number: int) -> float:
    """The floor of the producer's cost with the journal on: only the two steps
    that make an entry tamper-evident and crash-safe on the caller's thread
    (link it into the HMAC chain; append it to the journal with its hash), on
    a row built once. Everything else ``log_data_change`` does is above it."""
    app, extension = app_for(url, RESILIENCE_AUDIT_JOURNAL_FSYNC="never")
    writer = AppAudit.of(app).writer
    journal = writer.journal
    assert journal is not None
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "fare", 0, {"price": {"old": 1, "new": 2}}, user_id=1)
        writer.flush()  # the chain is open; the row below follows it
    entry = AuditEntry.from_mapping(
        {
            "event_type": AuditEventType.UPDATE,
            "resource": "fare",
            "resource_id": "1",
            "user_id": "1",
            "changes": {"price": {"old": 1, "new": 2}},
        }
    )
    built = entry_row(entry, datetime.now(UTC).replace(tzinfo=None))
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            row = dict(built)
            journal.append(entry_record(row, writer.chain.link_encoded(row)))
        best = min(best, (time.perf_counter() - started) / number * 1e6)
    extension.shutdown()  # the scratch schema and journal folder go with the run
    return best


def writer_rows_per_second(url: str, number: int) -> tuple[float, list[dict[str, Any]]]:
    # A short interval: the last partial batch is not left waiting the default 5 s.
    app, extension = app_for(
        url,
        RESILIENCE_AUDIT_BUFFER_SIZE=1000,
        RESILIENCE_AUDIT_MAX_QUEUE=10**7,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=50,
    )
    writer = AppAudit.of(app).writer
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
        with AppAudit.of(app).engine().connect() as connection:
            rows = [
                dict(row._mapping) for row in connection.execute(sqlalchemy.select(audit_log).limit(number))
            ]
    extension.shutdown()
    return number / elapsed, rows


def _fresh(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same rows under new ids and new chains (the table's unique keys;
    the rows may come from several chains, each with its own seq 1, 2, ...)."""
    chains: dict[str, str] = {}
    return [
        {**row, "id": str(uuid.uuid4()), "chain_id": chains.setdefault(row["chain_id"], str(uuid.uuid4()))}
        for row in rows
    ]


def flush_rows_per_second(url: str, number: int) -> tuple[float, list[dict[str, Any]]]:
    """The writer's own rate: entries already queued, one flush (chain + COPY)."""
    app, extension = app_for(
        url,
        RESILIENCE_AUDIT_BUFFER_SIZE=10**9,
        RESILIENCE_AUDIT_MAX_QUEUE=10**9,
        RESILIENCE_AUDIT_FLUSH_INTERVAL=10**9,
    )
    writer = AppAudit.of(app).writer
    with app.app_context():
        log_data_change(AuditEventType.UPDATE, "fare", -1, {"warm": True})
        writer.flush()
        for index in range(number):
            log_data_change(AuditEventType.UPDATE, "fare", index, {"price": {"old": 1, "new": 2}}, user_id=1)
        started = time.perf_counter()
        writer.flush()
        elapsed = time.perf_counter() - started
        with AppAudit.of(app).engine().connect() as connection:
            query = sqlalchemy.select(audit_log).order_by(audit_log.c.seq.desc()).limit(number)
            rows = [dict(row._mapping) for row in connection.execute(query)]
    extension.shutdown()
    return number / elapsed, rows


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


# -- integrity: the chain's per-entry cost, and purging a month -------------------------------


def chain_costs_us(number: int) -> dict[str, float]:
    """Per entry: our canonical form, then with SHA-256 and HMAC-SHA-256, and
    RFC 8785 (JCS) for comparison."""
    entry = AuditEntry(
        event_type="UPDATE",
        resource="fare",
        resource_id="7",
        user_id="1",
        changes={"price": {"old": 1, "new": 2}},
    )
    row = {
        **entry_row(entry, datetime.now(UTC).replace(tzinfo=None)),
        "chain_id": str(uuid.uuid4()),
        "seq": 7,
    }
    key = derive_key("bench-secret")
    contenders: dict[str, Callable[[], Any]] = {
        "canonical form": lambda: canonical(row),
        "canonical + SHA-256 (unkeyed)": lambda: link_hash(GENESIS, row, None),
        "canonical + HMAC-SHA-256 (keyed)": lambda: link_hash(GENESIS, row, key),
    }
    try:
        import rfc8785  # noqa: PLC0415 (optional: only to compare)

        plain = [
            value.isoformat() if isinstance(value, datetime) else value for value in (row[f] for f in HASHED)
        ]
        contenders["RFC 8785 JCS (rfc8785)"] = lambda: rfc8785.dumps(plain)
    except ImportError:
        pass
    return interleaved(contenders, number=number)


def _month_rows(month: datetime, number: int, chains: list[str]) -> list[list[Any]]:
    """``number`` rows spread over ``month``, round-robin over ``chains`` (seq from 1)."""
    spacing = timedelta(days=27) / number
    rows = []
    for index in range(number):
        at = month + spacing * index
        values = dict.fromkeys(_COLUMNS)
        values.update(
            id=str(uuid.uuid4()), chain_id=chains[index % len(chains)], seq=index // len(chains) + 1,
            occurred_at=at, logged_at=at, event_type="UPDATE", severity="INFO", status="SUCCESS",
            prev_hash="0" * 64, entry_hash="0" * 64,
        )  # fmt: skip
        rows.append([values[name] for name in _COLUMNS])
    return rows


def _copy_rows(dsn: str, schema: str, rows: list[list[Any]]) -> None:
    with psycopg.connect(dsn, options=f"-csearch_path={schema}") as connection:
        with (
            connection.cursor() as cursor,
            cursor.copy(f"COPY resilience_audit_log ({', '.join(_COLUMNS)}) FROM STDIN") as copy,
        ):
            for values in rows:
                copy.write_row(values)
        connection.commit()


def purge_seconds(database_url: str, dsn: str, number: int, partitioned: bool) -> float:
    """Purging last month (``number`` rows in 4 chains, each continuing into this
    month) by dropping its partition, or by batched DELETE of the same rows."""
    schema, url = scratch_schema(database_url)
    engine = sqlalchemy.create_engine(url)
    this_month = period_start(datetime.now(UTC), "month")
    last_month = period_start(this_month - timedelta(days=1), "month")
    try:
        upgrade(engine, partition="month" if partitioned else "none")
        if partitioned:
            with engine.begin() as connection:
                create_partition(connection, last_month, "month")
        chains = [str(uuid.uuid4()) for _ in range(4)]
        _copy_rows(dsn, schema, _month_rows(last_month, number, chains))
        later = [[*values] for values in _month_rows(this_month, 4, chains)]
        for values in later:  # each chain goes on this month
            values[_COLUMNS.index("seq")] += number // len(chains)
        _copy_rows(dsn, schema, later)
        with engine.connect() as connection:
            connection.execute(text("ANALYZE resilience_audit_log"))
        started = time.perf_counter()
        deleted, anchors = purge(engine, this_month)
        elapsed = time.perf_counter() - started
        assert deleted == number and len(anchors) == len(chains), (deleted, len(anchors))
        return elapsed
    finally:
        engine.dispose()
        with sqlalchemy.create_engine(database_url).begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def integrity(database_url: str, dsn: str, purge_rows: int) -> None:
    costs = chain_costs_us(20_000)
    print(f"{'per entry, chain step':40} {'us':>8}")
    for name, cost in costs.items():
        print(f"{name:40} {cost:8.2f}")
    keyed = costs["canonical + HMAC-SHA-256 (keyed)"] - costs["canonical + SHA-256 (unkeyed)"]
    print(f"  HMAC over SHA-256 (keyed by default): {keyed:+.2f} us")
    if "RFC 8785 JCS (rfc8785)" in costs:
        extra = costs["RFC 8785 JCS (rfc8785)"] - costs["canonical form"]
        print(f"  RFC 8785 over our canonical form: {extra:+.2f} us per entry [adopt only if <= 1 us]")
    dropped = purge_seconds(database_url, dsn, purge_rows, partitioned=True)
    deleted = purge_seconds(database_url, dsn, purge_rows, partitioned=False)
    print(f"\npurge of last month ({purge_rows} rows, 4 chains), seconds")
    print(f"{'drop the month partition':40} {dropped:8.3f}")
    print(f"{'batched DELETE (1000 per batch)':40} {deleted:8.3f}")
    print(f"  ratio DELETE / drop: {deleted / dropped:.1f}")


DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _dsn(database_url: str) -> str:
    return (
        sqlalchemy.engine.make_url(database_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def writer_against_copy(url: str, dsn: str, schema: str, number: int, rounds: int) -> tuple[float, float]:
    """Rows/s of the writer alone (a flush of queued entries) and of raw COPY
    of the same rows, taking turns, best of ``rounds`` each."""
    flush = copy = 0.0
    for _ in range(rounds):
        rate, rows = flush_rows_per_second(url, number)
        flush = max(flush, rate)
        copy = max(copy, copy_rows_per_second(dsn, schema, rows))
    return flush, copy


def figures(quick: bool = False) -> list[Figure]:
    """The producer's cost per entry, and the writer alone against raw COPY."""
    logging.disable(logging.WARNING)
    dsn = _dsn(DATABASE_URL)
    schema, url = scratch_schema(DATABASE_URL)
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    entries, rows = (1000, 2000) if quick else (5000, 20_000)
    try:
        producer = enqueue_cost_us(url, entries)
        producer_memory = enqueue_cost_us(url, entries, journal="off")
        producer_floor = link_and_journal_cost_us(url, entries)
        flush, copy = writer_against_copy(url, dsn, schema, rows, 2 if quick else 3)
    finally:
        engine.dispose()
        with sqlalchemy.create_engine(DATABASE_URL).begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        shutil.rmtree(JOURNALS, ignore_errors=True)
    return [
        Figure(
            "audit producer cost per entry (journal on)",
            producer,
            None,
            None,
            "<= 8 us",
            producer <= 8,
            note="log_data_change, caller's thread: build, redact, storable, count, link, journal, queue",
        ),
        Figure("audit producer cost per entry (journal off)", producer_memory, None, None, "-", None),
        Figure(
            "floor: audit producer, link and journal only (journal on)",
            producer_floor,
            None,
            None,
            "-",
            None,
            note="a row built once, then only its HMAC chain link and journal append (tamper evidence "
            "and crash safety on the caller's thread); the rest of log_data_change is above this",
        ),
        Figure(
            "audit writer alone vs raw COPY (PostgreSQL)",
            flush,
            copy,
            flush / copy,
            ">= 0.75",
            flush / copy >= 0.75,
            "rows/s",
            f"{rows} queued entries stored by one flush, beside psycopg COPY of the same rows",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DATABASE_URL)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--purge-rows", type=int, default=200_000)
    parser.add_argument("--part", choices=["all", "writer", "integrity", "figures"], default="all")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.part == "figures":
        print_figures(figures())
        return
    dsn = _dsn(args.database_url)
    if args.part in ("all", "integrity"):
        integrity(args.database_url, dsn, args.purge_rows)
    if args.part in ("all", "writer"):
        writer(args.database_url, dsn, args.rows)


def writer(database_url: str, dsn: str, number: int) -> None:
    schema, url = scratch_schema(database_url)
    engine = sqlalchemy.create_engine(url)
    upgrade(engine)
    try:
        enqueue = enqueue_cost_us(url, 5000)
        enqueue_memory = enqueue_cost_us(url, 5000, journal="off")
        ours, rows = writer_rows_per_second(url, number)
        flush_only, _rows = flush_rows_per_second(url, number)
        copy = copy_rows_per_second(dsn, schema, rows)
        per_row = per_row_rows_per_second(dsn, schema, rows[:2000])
    finally:
        with sqlalchemy.create_engine(database_url).begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
        shutil.rmtree(JOURNALS, ignore_errors=True)

    print(f"\nrequest-thread cost of one audit call, journal (fsync never): {enqueue:.1f} us  [target <= 8]")
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
