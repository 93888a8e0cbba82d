"""Signed checkpoints: each chain's head, recorded where the log's writers cannot rewrite it.

When a chain opens, every ``every_entries`` entries or ``every_seconds``
seconds (also while idle: a live writer's heartbeat), and when it closes, the
writer records ``(chain_id, seq, head_hash, created_at)`` signed with the HMAC
key: in ``resilience_audit_checkpoint`` (grant the app's role INSERT and SELECT
only there), in that table on a second database
(``RESILIENCE_AUDIT_CHECKPOINT_DATABASE_URI``), and/or handed to a sink callable
(a log shipper, an RFC 3161 timestamping client). ``verify`` then requires each
chain's stored head to reach its last checkpoint, and every checkpointed chain
to exist: truncating a tail or deleting a whole chain shows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select

from .. import config as cfg
from ..stores.sql import process_safe_engine
from .chain import Chain
from .events import new_id
from .keys import Keyring, key_id
from .table import audit_checkpoint

logger = logging.getLogger("flask_resilience.audit")

Sink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Checkpoint:
    chain_id: str
    seq: int
    head_hash: str
    created_at: datetime  # naive UTC
    closing: bool
    key_id: str | None
    signature: str | None

    def signed_bytes(self) -> bytes:
        """What the signature covers: a JSON array, compact, in this order."""
        fields = [self.chain_id, self.seq, self.head_hash, self.created_at.isoformat(), self.closing]
        return json.dumps(fields, separators=(",", ":")).encode()

    def signature_ok(self, keyring: Keyring) -> bool:
        """Signed by an accepted key (any checkpoint passes an unkeyed verify)."""
        if not keyring.keyed:
            return True
        key = keyring.accepted.get(self.key_id or "")
        if key is None or self.signature is None:
            return False
        return hmac.compare_digest(self.signature, _sign(key, self.signed_bytes()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "created_at": self.created_at.isoformat() + "Z",
            "closing": self.closing,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def _sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def make_checkpoint(chain: Chain, now: datetime, *, closing: bool) -> Checkpoint:
    unsigned = Checkpoint(chain.chain_id, chain.seq, chain.prev_hash, now, closing, None, None)
    if not chain.key:
        return unsigned
    signature = _sign(chain.key, unsigned.signed_bytes())
    return Checkpoint(chain.chain_id, chain.seq, chain.prev_hash, now, closing, key_id(chain.key), signature)


class CheckpointStore:
    """Where checkpoints go and are read back from. ``database_uri`` None: the
    audit database's own checkpoint table (``engine`` passed to each call)."""

    def __init__(
        self,
        *,
        every_entries: int,
        every_seconds: float,
        database_uri: str | None = None,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_entries = every_entries
        self.every_seconds = every_seconds
        self.database_uri = database_uri
        self.sink = sink
        self._clock = clock
        self._own_engine: Engine | None = None
        self._lock = threading.Lock()
        self._last: dict[
            str, tuple[int, float]
        ] = {}  # chain id -> (seq, monotonic time) of its last checkpoint

    def engine(self, audit_engine: Engine) -> Engine:
        if self.database_uri is None:
            return audit_engine
        with self._lock:
            if self._own_engine is None:
                self._own_engine = process_safe_engine(self.database_uri, pool_pre_ping=True)
                audit_checkpoint.create(self._own_engine, checkfirst=True)
            return self._own_engine

    # -- writing (called by the audit writer's flush thread) -----------------------

    def due(self, chain: Chain) -> bool:
        """A chain with entries that has no checkpoint yet, or whose last one is
        ``every_entries`` entries or ``every_seconds`` seconds old."""
        if chain.seq == 0 or chain.closed:
            return False
        last = self._last.get(chain.chain_id)
        if last is None:
            return True
        seq, at = last
        return chain.seq - seq >= self.every_entries or self._clock() - at >= self.every_seconds

    def record(self, chain: Chain, audit_engine: Engine, *, closing: bool = False) -> Checkpoint | None:
        """Store a checkpoint of ``chain``'s head (its entries are in the database).
        Never raises: a lost checkpoint is logged, the log itself goes on."""
        checkpoint = make_checkpoint(chain, datetime.now(UTC).replace(tzinfo=None), closing=closing)
        self._last[chain.chain_id] = (chain.seq, self._clock())
        try:
            with self.engine(audit_engine).begin() as connection:
                connection.execute(insert(audit_checkpoint).values(id=new_id(), **_columns(checkpoint)))
        except Exception as exc:
            logger.error(
                "audit checkpoint of chain %s at seq %d not stored: %s",
                chain.chain_id,
                chain.seq,
                type(exc).__name__,
            )
        if self.sink is not None:
            try:
                self.sink(checkpoint.as_dict())
            except Exception:
                logger.exception("the audit checkpoint sink failed")
        return checkpoint

    # -- reading (verify) ---------------------------------------------------------------

    def latest(self, audit_engine: Engine) -> dict[str, tuple[Checkpoint, datetime]]:
        """Per chain: its furthest checkpoint, and when its writer last recorded one."""
        table = audit_checkpoint
        result: dict[str, tuple[Checkpoint, datetime]] = {}
        heard = select(table.c.chain_id, func.max(table.c.created_at)).group_by(table.c.chain_id)
        with self.engine(audit_engine).connect() as connection:
            last_heard = dict(connection.execute(heard).all())
            for checkpoint in _furthest(
                connection.execute(select(table).order_by(table.c.chain_id, table.c.seq))
            ):
                result[checkpoint.chain_id] = (checkpoint, last_heard[checkpoint.chain_id])
        return result

    # -- retention (purge) ----------------------------------------------------------------

    def prune(self, audit_engine: Engine, before: datetime, batch: int = 1000) -> int:
        """Delete checkpoints created before ``before`` (naive UTC) that
        ``verify`` no longer reads: it reads each chain's furthest checkpoint
        and its newest, which always stay. Returns how many went; raises
        SQLAlchemyError where the role may not delete (the table is meant to
        be insert-only for the app)."""
        table = audit_checkpoint
        pruned = 0
        with self.engine(audit_engine).connect() as connection:
            chains = connection.execute(
                select(table.c.chain_id, func.max(table.c.created_at))
                .group_by(table.c.chain_id)
                .having(func.min(table.c.created_at) < before)
            ).all()
        for chain_id, newest in chains:
            this_chain = table.c.chain_id == chain_id
            with self.engine(audit_engine).begin() as connection:
                furthest = connection.execute(
                    select(table.c.id)
                    .where(this_chain)
                    .order_by(table.c.seq.desc(), table.c.closing.desc(), table.c.created_at.desc())
                    .limit(1)
                ).scalar_one()
                prunable = and_(this_chain, table.c.created_at < min(before, newest), table.c.id != furthest)
                oldest = select(table.c.id).where(prunable).limit(batch)
                while ids := connection.execute(oldest).scalars().all():
                    connection.execute(delete(table).where(table.c.id.in_(ids)))
                    pruned += len(ids)
        return pruned

    def dispose(self) -> None:
        with self._lock:
            if self._own_engine is not None:
                self._own_engine.dispose()
                self._own_engine = None


def _columns(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "chain_id": checkpoint.chain_id,
        "seq": checkpoint.seq,
        "head_hash": checkpoint.head_hash,
        "created_at": checkpoint.created_at,
        "closing": checkpoint.closing,
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def _furthest(rows: Any) -> Iterator[Checkpoint]:
    """Each chain's furthest checkpoint (highest seq; a closing one wins a
    tie), from rows ordered by chain."""
    best: Checkpoint | None = None
    for row in rows:
        data = dict(row._mapping)
        data.pop("id")
        checkpoint = Checkpoint(**data)
        if best is not None and best.chain_id != checkpoint.chain_id:
            yield best
            best = None
        if best is None or (checkpoint.seq, checkpoint.closing) >= (best.seq, best.closing):
            best = checkpoint
    if best is not None:
        yield best


def store_from_config(config: cfg.Config) -> CheckpointStore:
    return CheckpointStore(
        every_entries=config[cfg.AUDIT_CHECKPOINT_INTERVAL],
        every_seconds=config[cfg.AUDIT_CHECKPOINT_SECONDS],
        database_uri=config[cfg.AUDIT_CHECKPOINT_DATABASE_URI],
        sink=config[cfg.AUDIT_CHECKPOINT_SINK],
    )
