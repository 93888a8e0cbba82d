"""One app's idempotency protection: the record store, the memory layer, stats."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Response

from ..cache.rules import STORED_HEADERS
from ..stats import Counters
from ..stores.memory import MemoryStore
from ..stores.redis import RedisStore, StoreUnavailableError
from .records import Completed, RecordStore

if TYPE_CHECKING:
    from ..audit.service import AppAudit

logger = logging.getLogger("flask_resilience.idempotency")


class IdempotencyStats(Counters):
    def snapshot(self, *always: str) -> dict[str, Any]:
        data = super().snapshot(
            "requests", "first_executions", "replays", "conflicts", "mismatches", "store_errors", *always
        )
        requests = data["requests"]
        return {**data, "replay_rate": round(data["replays"] / requests, 4) if requests else 0.0}


class AppIdempotency:
    def __init__(
        self,
        *,
        enabled: bool,
        redis: RedisStore | None,
        key_prefix: str,
        ttl: int,
        lease: float,
        auto_generate: bool,
        max_body_bytes: int,
        extra_headers: tuple[str, ...],
        memory_entries: int,
        audit: AppAudit | None,
    ) -> None:
        self.enabled = enabled
        self.store = RecordStore(redis, key_prefix)
        self._redis = redis
        self.ttl = ttl
        self.lease = lease
        self.auto_generate = auto_generate
        self.max_body_bytes = max_body_bytes
        self._headers = STORED_HEADERS | {name.lower() for name in extra_headers}
        # Completed records only: an in-flight one must always be read from the store.
        self.memory: MemoryStore[Completed] = MemoryStore(max_entries=memory_entries)
        self.stats = IdempotencyStats()
        self._audit = audit
        self._channel = redis.channel("idempotency") if redis is not None else None

    def stored_headers(self, response: Response) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name, value) for name, value in response.headers.items() if name.lower() in self._headers
        )

    # -- the memory layer ----------------------------------------------------------------

    def remembered(self, record_key: str) -> Completed | None:
        if self.store.shared:
            return self.memory.get(record_key)
        return None  # without Redis the store itself is in memory

    def remember(self, record_key: str, record: Completed, ttl: float) -> None:
        if self.store.shared:
            remaining = record.created_at + ttl - self.store.clock()
            if remaining > 0:
                self.memory.set(record_key, record, remaining)

    def listen(self) -> None:
        """Drop memory-layer copies when any process invalidates a key."""
        if self._redis is None or self._channel is None:
            return

        def handle(raw: bytes) -> None:
            pattern = str(json.loads(raw)["pattern"])
            self.memory.delete_where(lambda key: fnmatch.fnmatchcase(key, pattern))

        def forget_all() -> None:
            self.memory.clear()

        self._redis.subscriber.on_gap(forget_all)
        self._redis.subscribe(self._channel, handle)

    # -- administration ------------------------------------------------------------------------

    def invalidate(self, key: str, user_id: str | None = None) -> int:
        """Forget one key (of one user, or of everyone); returns records removed."""
        scope = (
            "*" if user_id is None else hashlib.sha256(f"user:{user_id}".encode() + b"\x00").hexdigest()[:32]
        )
        key_hash = hashlib.sha256(key.encode("utf-8", "surrogateescape") + b"\x00").hexdigest()[:32]
        return self._forget(f"{scope}:{key_hash}:*")

    def clear(self) -> int:
        return self._forget("*")

    def _forget(self, pattern: str) -> int:
        removed = self.store.delete_matching(pattern)
        self.memory.delete_where(lambda key: fnmatch.fnmatchcase(key, pattern))
        if self._redis is not None and self._channel is not None:
            try:
                self._redis.publish(self._channel, json.dumps({"pattern": pattern}).encode())
            except StoreUnavailableError:
                logger.warning("could not tell other processes to forget idempotency keys %s", pattern)
        return removed

    def audit_conflict(self, key: str, status: int) -> None:
        if self._audit is not None and self._audit.enabled:
            self._audit.record(
                {
                    "event_type": "IDEMPOTENCY_CONFLICT",
                    "status": "FAILURE",
                    "severity": "WARNING",
                    "http_status": status,
                    "details": {"reason": "in progress" if status == 409 else "different request"},
                }
            )

    def snapshot(self, include_private: bool = False) -> dict[str, Any]:
        return {**self.stats.snapshot(), "memory_entries": len(self.memory), "enabled": self.enabled}
