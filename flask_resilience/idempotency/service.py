"""One app's idempotency protection: records, the memory layer, stats, signals."""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from flask import current_app

from .. import config as cfg
from ..responses import HeaderPolicy
from ..signals import idempotency_conflict, idempotency_mismatch
from ..stats import Counters
from ..stores.memory import MemoryStore
from ..stores.redis import RedisStore, StoreUnavailableError
from .leases import keeper
from .protocol import Completed, user_pattern
from .records import MemoryRecords, Records, RedisRecords

logger = logging.getLogger("flask_resilience")

ALWAYS_COUNTED = (
    "requests",
    "first_executions",
    "replays",
    "conflicts",
    "mismatches",
    "store_errors",
    "lease_renewals",
    "lease_lost",
    "completion_retries",
    "completions_lost",
    "memory_unsynced",
    "fail_open",
    "missing_key",
    "invalid_key",
    "unprotected",
)


class IdempotencyStats(TypedDict):
    """``stats()``: counts since the last reset, and the memory layer's size."""

    requests: int
    first_executions: int
    replays: int
    replay_rate: float
    conflicts: int
    mismatches: int
    store_errors: int
    lease_renewals: int
    lease_lost: int
    completion_retries: int
    completions_lost: int
    memory_unsynced: int
    fail_open: int
    missing_key: int
    invalid_key: int
    unprotected: int
    endpoints: dict[str, dict[str, int]]
    memory_entries: int
    enabled: bool


@dataclass(frozen=True)
class _Copy:
    record: Completed
    stored_at: float  # time.monotonic(), compared with the listener's confirmation


class AppIdempotency:
    def __init__(
        self,
        *,
        enabled: bool,
        records: Records,
        redis: RedisStore | None,
        ttl: int,
        lease: float,
        auto_generate: bool,
        on_error: str,
        max_body_bytes: int,
        headers: HeaderPolicy,
        memory_entries: int,
        memory_bytes: int,
    ) -> None:
        self.enabled = enabled
        self.records = records
        self._redis = redis
        self.ttl = ttl
        self.lease = lease
        self.auto_generate = auto_generate
        self.on_error = on_error
        self.max_body_bytes = max_body_bytes
        self.headers = headers
        # Completed records only: an in-flight one must always be read from the store.
        self.memory: MemoryStore[_Copy] = MemoryStore(
            max_entries=memory_entries,
            max_bytes=memory_bytes,
            sizeof=lambda copy: len(copy.record.response.body),
        )
        self.counters = Counters()
        self._clock: Callable[[], float] = time.time
        self._channel = redis.channel("idempotency") if redis is not None else None

    @classmethod
    def from_config(cls, config: cfg.Config, redis: RedisStore | None) -> AppIdempotency:
        """The service for one app; with Redis, warns when Redis does not persist."""
        entries, max_bytes = config[cfg.IDEMPOTENCY_MEMORY_ENTRIES], config[cfg.IDEMPOTENCY_MEMORY_BYTES]
        records: Records
        if redis is not None:
            records = RedisRecords(redis)
            warn_unless_persistent(redis)
        else:
            records = MemoryRecords(max_entries=entries, max_bytes=max_bytes)
        # IDEMPOTENCY_STORED_HEADERS needs no reading: the policy stores every
        # end-to-end header but the deny-list (see its documentation).
        return cls(
            enabled=config[cfg.IDEMPOTENCY_ENABLED],
            records=records,
            redis=redis,
            ttl=config[cfg.IDEMPOTENCY_TTL],
            lease=config[cfg.IDEMPOTENCY_LEASE],
            auto_generate=config[cfg.IDEMPOTENCY_AUTO_GENERATE],
            on_error=config[cfg.IDEMPOTENCY_ON_ERROR],
            max_body_bytes=config[cfg.IDEMPOTENCY_MAX_BODY_BYTES],
            headers=HeaderPolicy.denying(config[cfg.REQUEST_ID_HEADER]),
            memory_entries=entries,
            memory_bytes=max_bytes,
        )

    @property
    def clock(self) -> Callable[[], float]:
        """Wall-clock seconds for record expiry (injectable in tests)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.records.clock = clock

    # -- the memory layer (with Redis only: without it the records are in memory) ---

    def remembered(self, record_key: str) -> Completed | None:
        """This process's copy, trusted only while listening for invalidations
        and only when stored after the listener last confirmed (issue 18)."""
        if self._redis is None:
            return None
        since = self._redis.subscriber.listening_since()
        if since is None:
            self.counters.count("memory_unsynced")
            return None
        copy = self.memory.get(record_key)
        if copy is None:
            return None
        if copy.stored_at < since or copy.record.expires_at <= self._clock():
            self.memory.delete(record_key)
            return None
        return copy.record

    def remember(self, record_key: str, record: Completed) -> None:
        if self._redis is None or self._redis.subscriber.listening_since() is None:
            return
        remaining = record.expires_at - self._clock()
        if remaining > 0:
            self.memory.set(record_key, _Copy(record, time.monotonic()), remaining)

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

    # -- signals ---------------------------------------------------------------------

    def refused(self, status: int, endpoint: str, principal: str | None) -> None:
        """Count and announce a 409 (in progress) or a 422 (different request)."""
        name, signal = (
            ("conflicts", idempotency_conflict) if status == 409 else ("mismatches", idempotency_mismatch)
        )
        self.counters.count(name, endpoint)
        if signal.receivers:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
            signal.send(app, endpoint=endpoint, status=status, principal=principal)

    # -- administration ----------------------------------------------------------------

    def invalidate(self, key: str, user_id: str | None = None) -> int:
        """Forget one key (of one user, or of everyone); returns records removed."""
        return self._forget(user_pattern(user_id, key))

    def clear(self) -> int:
        return self._forget("*")

    def _forget(self, pattern: str) -> int:
        removed = self.records.delete_matching(pattern)
        self.memory.delete_where(lambda key: fnmatch.fnmatchcase(key, pattern))
        if self._redis is not None and self._channel is not None:
            try:
                self._redis.publish(self._channel, json.dumps({"pattern": pattern}).encode())
            except StoreUnavailableError:
                logger.warning("could not tell other processes to forget idempotency keys %s", pattern)
        return removed

    def stats(self, include_private: bool = False) -> IdempotencyStats:
        counts: dict[str, Any] = self.counters.snapshot(*ALWAYS_COUNTED)
        requests: int = counts["requests"]
        counts["replay_rate"] = round(counts["replays"] / requests, 4) if requests else 0.0
        counts["memory_entries"] = len(self.memory)
        counts["enabled"] = self.enabled
        # Counters.snapshot has every ALWAYS_COUNTED name and "endpoints".
        return cast(IdempotencyStats, counts)

    def reset_stats(self) -> None:
        self.counters.reset()

    def stop(self) -> None:
        """Finish waiting completions (the lease keeper restarts on next use)."""
        keeper.stop(flush=True, timeout=5.0)


def warn_unless_persistent(redis: RedisStore) -> None:
    """Log a warning when Redis keeps neither an AOF nor RDB snapshots: keys
    would not survive a Redis restart. Skipped where ``CONFIG`` is refused."""
    try:
        appendonly = redis.client.config_get("appendonly").get("appendonly")
        save = redis.client.config_get("save").get("save")
    except Exception:  # a managed Redis may refuse CONFIG: nothing to check then
        return
    if appendonly is None or save is None:
        return  # not a plain answer (a cluster client answers per node): cannot tell
    if str(appendonly).lower() != "yes" and not str(save).strip():
        logger.warning(
            "Redis at %s persists nothing (appendonly no, no save points): idempotency keys "
            "will not survive a Redis restart, and a retry after one runs the request again",
            redis.prefix,
        )
