"""Streaming the audit log out as JSON lines or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from .table import audit_log

EXPORT_FIELDS = [column.name for column in audit_log.columns]


def export_rows(engine: Engine, since: datetime | None) -> Iterator[dict[str, Any]]:
    query = (
        select(audit_log)
        .order_by(audit_log.c.occurred_at, audit_log.c.chain_id, audit_log.c.seq)
        .execution_options(yield_per=1000)
    )
    if since is not None:
        query = query.where(audit_log.c.occurred_at >= since)
    with engine.connect() as connection:
        for row in connection.execute(query):
            yield dict(row._mapping)


def as_jsonl(row: dict[str, Any]) -> str:
    return json.dumps(row, default=_plain, separators=(",", ":")) + "\n"


def as_csv(row: dict[str, Any] | None) -> str:
    """A CSV line of ``row`` (JSON for structured fields); None gives the header."""
    out = io.StringIO()
    writer = csv.writer(out)
    if row is None:
        writer.writerow(EXPORT_FIELDS)
    else:
        writer.writerow(
            [
                json.dumps(row[name]) if isinstance(row[name], (dict, list)) else _plain(row[name])
                for name in EXPORT_FIELDS
            ]
        )
    return out.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    return "" if value is None else value


def count_rows(engine: Engine, since: datetime | None) -> int:
    query = select(func.count()).select_from(audit_log)
    if since is not None:
        query = query.where(audit_log.c.occurred_at >= since)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())
