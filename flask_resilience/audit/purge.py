"""Retention: deleting old entries without breaking the chains they belong to.

Only a chain's prefix goes (every entry before its first one logged at or
after the cutoff, by the writer-set ``logged_at``: a caller's backdated
``occurred_at`` never takes recent entries with it), so what stays is still a
chain; the purge then records, in a
``durable`` audit entry of its own, where each purged chain now starts (its
first kept ``seq`` and that entry's ``prev_hash``): the anchor ``verify``
starts from, accepted only when the entry holding it verifies itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, select, text

from .partitions import bounds, is_partitioned, partitions
from .table import audit_log

logger = logging.getLogger("flask_resilience.audit")

PURGE_KEY = "audit_purge"


@dataclass(frozen=True)
class ChainCut:
    """What a purge removes from one chain: ``rows`` entries, seq 1.. ``last_seq``."""

    chain_id: str
    rows: int
    last_seq: int


def plan(engine: Engine, before: datetime, *, by_occurrence: bool = False) -> list[ChainCut]:
    """Per chain, the prefix a purge at ``before`` (naive UTC) deletes: up to
    the seq before its first entry logged at or after ``before``.
    ``by_occurrence``: by ``occurred_at`` instead, as dropped partitions
    (ranges of ``occurred_at``) delete, so the chains' cuts cover them."""
    when = audit_log.c.occurred_at if by_occurrence else audit_log.c.logged_at
    old = when < before
    with engine.connect() as connection:
        cuts = connection.execute(
            select(audit_log.c.chain_id, func.max(audit_log.c.seq)).where(old).group_by(audit_log.c.chain_id)
        ).all()
        result = []
        for chain_id, oldest_last in cuts:
            last_old = oldest_last
            if not by_occurrence:  # an entry logged late (backdated) ends the prefix
                first_recent = connection.execute(
                    select(func.min(audit_log.c.seq)).where(
                        and_(audit_log.c.chain_id == chain_id, when >= before)
                    )
                ).scalar_one()
                if first_recent is not None:
                    last_old = min(last_old, first_recent - 1)
            rows = connection.execute(
                select(func.count())
                .select_from(audit_log)
                .where(and_(audit_log.c.chain_id == chain_id, audit_log.c.seq <= last_old))
            ).scalar_one()
            if rows:  # nothing before the first recent entry is left (an earlier purge)
                result.append(ChainCut(chain_id, int(rows), int(last_old)))
    return sorted(result, key=lambda cut: cut.chain_id)


def newest_key_ids(engine: Engine, entries: int = 100) -> set[str | None]:
    """The key ids that signed the newest ``entries`` entries (None: unkeyed),
    newest by ``occurred_at``: indexed, so this reads a few rows, not the table."""
    with engine.connect() as connection:
        newest = select(audit_log.c.key_id).order_by(audit_log.c.occurred_at.desc()).limit(entries).subquery()
        return set(connection.execute(select(newest.c.key_id).distinct()).scalars())


def anchor_after(engine: Engine, cut: ChainCut) -> dict[str, Any]:
    """Where ``cut``'s chain starts once its prefix is gone: the first kept
    entry, or (a chain purged whole) the seq after the last deleted one."""
    chain = audit_log.c.chain_id == cut.chain_id
    with engine.connect() as connection:
        first_kept = connection.execute(
            select(audit_log.c.seq, audit_log.c.prev_hash)
            .where(and_(chain, audit_log.c.seq > cut.last_seq))
            .order_by(audit_log.c.seq)
            .limit(1)
        ).first()
        if first_kept is not None:
            return {"first_seq": first_kept.seq, "prev_hash": first_kept.prev_hash}
        last_hash = connection.execute(
            select(audit_log.c.entry_hash).where(and_(chain, audit_log.c.seq == cut.last_seq))
        ).scalar_one()
    return {"first_seq": cut.last_seq + 1, "prev_hash": last_hash}


def purge(engine: Engine, before: datetime, batch: int = 1000) -> tuple[int, dict[str, dict[str, Any]]]:
    """Delete whole chain prefixes older than ``before`` (naive UTC), in
    batches; returns how many rows went and the anchors to record.

    A partitioned table (PostgreSQL) loses whole partitions instead: those
    ending at or before ``before``; the cutoff becomes the newest such end."""
    dropped: list[str] = []
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            if is_partitioned(connection):
                dropped = [name for name in partitions(connection) if _ends_by(name, before)]
                before = max((_end(name) for name in dropped), default=before)
    deleted = 0
    anchors: dict[str, dict[str, Any]] = {}
    cuts = plan(engine, before, by_occurrence=bool(dropped))
    for cut in cuts:
        anchors[cut.chain_id] = anchor_after(engine, cut)
    if dropped:
        with engine.begin() as connection:
            for name in dropped:
                connection.execute(text(f'DROP TABLE "{name}"'))
        logger.info("audit purge dropped partitions %s", ", ".join(dropped))
    for cut in cuts:  # what the partitions did not hold (the default partition, late entries)
        deleted += _delete_prefix(engine, cut, batch)
    return (sum(cut.rows for cut in cuts) if dropped else deleted), anchors


def _end(name: str) -> datetime:
    span = bounds(name)
    assert span is not None
    return span[1]


def _ends_by(name: str, before: datetime) -> bool:
    return _end(name) <= before


def _delete_prefix(engine: Engine, cut: ChainCut, batch: int) -> int:
    deleted = 0
    prefix = and_(audit_log.c.chain_id == cut.chain_id, audit_log.c.seq <= cut.last_seq)
    while True:
        with engine.begin() as connection:
            ids = connection.execute(select(audit_log.c.id).where(prefix).limit(batch)).scalars().all()
            if not ids:
                return deleted
            connection.execute(delete(audit_log).where(audit_log.c.id.in_(ids)))
            deleted += len(ids)
