"""PostgreSQL range partitions of the audit log: conversion, keeping ahead, purge by dropping."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy
from sqlalchemy import func, select, text

from flask_resilience import AuditEventType, create_audit_log
from flask_resilience.audit.migrate import upgrade
from flask_resilience.audit.partitions import (
    PartitionKeeper,
    is_partitioned,
    next_period,
    partition_name,
    partitions,
    period_start,
)
from flask_resilience.audit.store import store
from flask_resilience.audit.table import audit_log
from tests.conftest import MakeApp
from tests.test_audit_migrations import scratch_schema
from tests.test_audit_tamper import verify, write_entries


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    with scratch_schema(postgres_url, "rt_part") as url:
        yield url


def test_partitioned_log_converts_keeps_ahead_and_purges_by_dropping(
    make_app: MakeApp, schema_url: str
) -> None:
    engine = sqlalchemy.create_engine(schema_url)
    upgrade(engine)
    now = datetime.now(UTC).replace(tzinfo=None)
    old = now - timedelta(days=100)
    writer, extension = make_app(RESILIENCE_AUDIT_DATABASE_URI=schema_url)
    with writer.app_context():
        for index in range(4):
            create_audit_log(
                {"event_type": AuditEventType.UPDATE, "occurred_at": old, "resource_id": str(index)}
            )
    write_entries(writer, 3)
    extension.shutdown()  # a closed chain: CHAIN_OPENED (old), 4 old entries, 3 new, CHAIN_CLOSED

    app, _ = make_app(RESILIENCE_AUDIT_DATABASE_URI=schema_url, RESILIENCE_AUDIT_PARTITION="month")
    runner = app.test_cli_runner()
    upgraded = runner.invoke(args=["resilience", "db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "partitioned by month" in upgraded.output
    this_month = period_start(now, "month")
    ahead = next_period(next_period(this_month, "month"), "month")
    with engine.connect() as connection:
        assert is_partitioned(connection)
        names = partitions(connection)
        assert names[0] == partition_name(period_start(old, "month"), "month")
        assert names[-1] == partition_name(ahead, "month")
        assert connection.execute(select(func.count()).select_from(audit_log)).scalar_one() == 9
    assert verify(app).exit_code == 0

    with engine.begin() as connection:  # the keeper recreates what is missing ahead
        connection.execute(text(f'DROP TABLE "{partition_name(ahead, "month")}"'))
    PartitionKeeper("month").keep_ahead(engine)
    with engine.connect() as connection:
        assert partitions(connection)[-1] == partition_name(ahead, "month")

    purged = runner.invoke(args=["resilience", "audit", "purge", "--older-than", "40d", "--yes"])
    assert purged.exit_code == 0, purged.output
    assert "deleted 5 entries" in purged.output  # CHAIN_OPENED and the 4 old entries
    with engine.connect() as connection:
        remaining = partitions(connection)
        assert partition_name(period_start(old, "month"), "month") not in remaining
        assert partition_name(this_month, "month") in remaining
    result = verify(app)
    assert result.exit_code == 0, result.output
    write_entries(app, 2)  # the writer still writes (ON CONFLICT works on the partitioned key)
    assert verify(app).exit_code == 0
    replay_skips_stored_rows(engine)
    engine.dispose()


def replay_skips_stored_rows(engine: sqlalchemy.Engine) -> None:
    """The idempotent insert (journal replays, adoption, bisection) on the partitioned table."""
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(select(audit_log))]
    refused: list[BaseException] = []
    store(engine, rows, fresh=False, reject=lambda _, error: refused.append(error))
    assert refused == []
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(audit_log)).scalar_one() == len(rows)
