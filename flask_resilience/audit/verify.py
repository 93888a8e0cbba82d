"""Checking the hash chains, purging old entries without breaking them, exporting."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, select

from .chain import GENESIS, link_hash
from .events import AuditEventType
from .table import audit_log

PURGE_KEY = "audit_purge"


@dataclass
class ChainReport:
    chain_id: str
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    broken_at: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken_at is None and not self.gaps


def _anchors(engine: Engine) -> dict[str, tuple[int, str]]:
    """Where each purged chain's retained part starts, from the purge records."""
    anchors: dict[str, tuple[int, str]] = {}
    query = select(audit_log.c.details).where(audit_log.c.event_type == AuditEventType.ADMIN)
    with engine.connect() as connection:
        for (details,) in connection.execute(query):
            if isinstance(details, dict) and isinstance(details.get(PURGE_KEY), dict):
                for chain_id, start in details[PURGE_KEY].items():
                    anchors[chain_id] = (int(start["first_seq"]), str(start["prev_hash"]))
    return anchors


def verify(engine: Engine, key: bytes | None) -> list[ChainReport]:
    """One report per chain: the first broken link and any gaps in ``seq``."""
    anchors = _anchors(engine)
    reports: list[ChainReport] = []
    report: ChainReport | None = None
    expected_prev = GENESIS
    query = (
        select(audit_log).order_by(audit_log.c.chain_id, audit_log.c.seq).execution_options(yield_per=1000)
    )
    with engine.connect() as connection:
        for row in connection.execute(query):
            data = dict(row._mapping)
            if report is None or report.chain_id != data["chain_id"]:
                report = ChainReport(data["chain_id"], first_seq=data["seq"])
                reports.append(report)
                anchor_seq, anchor_prev = anchors.get(report.chain_id, (1, GENESIS))
                expected_prev = anchor_prev if data["seq"] == anchor_seq else GENESIS
                if data["seq"] != anchor_seq:
                    report.gaps.append((1 if data["seq"] > anchor_seq else data["seq"], data["seq"] - 1))
            elif data["seq"] != (report.last_seq or 0) + 1:
                report.gaps.append(((report.last_seq or 0) + 1, data["seq"] - 1))
            report.rows += 1
            report.last_seq = data["seq"]
            if report.broken_at is None and (
                data["prev_hash"] != expected_prev
                or data["entry_hash"] != link_hash(data["prev_hash"], data, key)
            ):
                report.broken_at = data["seq"]
            expected_prev = data["entry_hash"]
    return reports


def purge(engine: Engine, before: datetime, batch: int = 1000) -> tuple[int, dict[str, dict[str, Any]]]:
    """Delete whole chain prefixes older than ``before`` (naive UTC), in
    batches; returns how many rows went and the anchors to record."""
    deleted = 0
    anchors: dict[str, dict[str, Any]] = {}
    with engine.connect() as connection:
        cuts = connection.execute(
            select(audit_log.c.chain_id, func.max(audit_log.c.seq))
            .where(audit_log.c.occurred_at < before)
            .group_by(audit_log.c.chain_id)
        ).all()
    for chain_id, last_old in cuts:
        with engine.connect() as connection:
            first_kept = connection.execute(
                select(audit_log.c.seq, audit_log.c.prev_hash)
                .where(and_(audit_log.c.chain_id == chain_id, audit_log.c.seq > last_old))
                .order_by(audit_log.c.seq)
                .limit(1)
            ).first()
        while True:
            with engine.begin() as connection:
                ids = (
                    connection.execute(
                        select(audit_log.c.id)
                        .where(and_(audit_log.c.chain_id == chain_id, audit_log.c.seq <= last_old))
                        .limit(batch)
                    )
                    .scalars()
                    .all()
                )
                if not ids:
                    break
                connection.execute(delete(audit_log).where(audit_log.c.id.in_(ids)))
                deleted += len(ids)
        if first_kept is not None:
            anchors[chain_id] = {"first_seq": first_kept.seq, "prev_hash": first_kept.prev_hash}
    return deleted, anchors


EXPORT_FIELDS = [column.name for column in audit_log.columns]


def export_rows(engine: Engine, since: datetime | None) -> Iterator[dict[str, Any]]:
    query = (
        select(audit_log).order_by(audit_log.c.occurred_at, audit_log.c.id).execution_options(yield_per=1000)
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
