"""One app's idempotency protection: records, the memory layer, stats, signals."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypedDict, cast

from flask import current_app

from .. import config as cfg
from ..histograms import Timings
from ..responses import HeaderPolicy
from ..signals import idempotency_conflict, idempotency_mismatch
from ..state import Feature, ResilienceState
from ..stats import Counters
from ..stores.redis import RedisStore
from .copies import Copies, NoCopies, ProcessCopies
from .leases import keeper
from .protocol import user_pattern
from .records import MemoryRecords, Records, RedisRecords

logger = logging.getLogger("flask_resilience.idempotency")

ALWAYS_COUNTED = (
    "requests",
    "first_executions",
    "replays",
    "conflicts",
    "mismatches",
    "unreadable_records",
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
    unreadable_records: int
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


FEATURE = "idempotency"


class AppIdempotency(Feature):
    feature_name = FEATURE

    def __init__(
        self,
        *,
        enabled: bool,
        records: Records,
        ttl: int,
        lease: float,
        auto_generate: bool,
        on_error: str,
        max_body_bytes: int,
        headers: HeaderPolicy,
    ) -> None:
        self.enabled = enabled
        self.records = records
        self.ttl = ttl
        self.lease = lease
        self.auto_generate = auto_generate
        self.on_error = on_error
        self.max_body_bytes = max_body_bytes
        self.headers = headers
        self.counters = Counters()
        # Time to claim a key, and to wait for the request that holds it (Prometheus histograms).
        self.lock_wait = {"claim": Timings(), "in_progress": Timings()}
        self.memory: Copies = NoCopies()
        self._clock: Callable[[], float] = time.time

    @classmethod
    def from_config(cls, config: cfg.Config, redis: RedisStore | None) -> AppIdempotency:
        """The service for one app; with Redis, warns when Redis does not persist."""
        entries, max_bytes = config[cfg.IDEMPOTENCY_MEMORY_ENTRIES], config[cfg.IDEMPOTENCY_MEMORY_BYTES]
        records: Records = (
            MemoryRecords(max_entries=entries, max_bytes=max_bytes) if redis is None else RedisRecords(redis)
        )
        # IDEMPOTENCY_STORED_HEADERS needs no reading: the policy stores every
        # end-to-end header but the deny-list (see its documentation).
        service = cls(
            enabled=config[cfg.IDEMPOTENCY_ENABLED],
            records=records,
            ttl=config[cfg.IDEMPOTENCY_TTL],
            lease=config[cfg.IDEMPOTENCY_LEASE],
            auto_generate=config[cfg.IDEMPOTENCY_AUTO_GENERATE],
            on_error=config[cfg.IDEMPOTENCY_ON_ERROR],
            max_body_bytes=config[cfg.IDEMPOTENCY_MAX_BODY_BYTES],
            headers=HeaderPolicy.denying(config[cfg.REQUEST_ID_HEADER]),
        )
        if redis is not None:
            warn_unless_persistent(redis)
            service.memory = ProcessCopies(
                redis, max_entries=entries, max_bytes=max_bytes, count=service.counters.count
            )
        return service

    @property
    def clock(self) -> Callable[[], float]:
        """Wall-clock seconds for record expiry (injectable in tests)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.records.clock = clock
        self.memory.clock = clock

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
        self.memory.forget(pattern)
        return removed

    def register(self, state: ResilienceState) -> None:
        """Become ``state``'s idempotency service: its stats, its listener,
        its background work."""
        super().register(state)
        state.stats_providers["replay_protection"] = self.stats
        self.listen()
        state.add_background(self)

    def listen(self) -> None:
        """Keep the memory layer coherent with other processes' invalidations."""
        self.memory.listen()

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
    _warn_on_eviction(redis)


def _warn_on_eviction(redis: RedisStore) -> None:
    """Every record has a TTL, so any policy but ``noeviction`` (volatile-*
    as much as allkeys-*) may evict one under memory pressure: a retry then
    runs the request again. ``noeviction`` makes Redis refuse the claim
    instead (a 503: nothing runs)."""
    try:
        policy = redis.client.config_get("maxmemory-policy").get("maxmemory-policy")
        limit = redis.client.config_get("maxmemory").get("maxmemory")
    except Exception:  # a managed Redis may refuse CONFIG: nothing to check then
        return
    if policy is None or limit is None or str(limit).strip() == "0":
        return  # no memory limit: nothing is evicted
    if isinstance(policy, bytes):
        policy = policy.decode()
    if str(policy) != "noeviction":
        logger.warning(
            "Redis at %s: maxmemory-policy is %s: it may evict idempotency records under memory "
            "pressure, and a retry then runs the request again; use noeviction "
            "(docs/cache.rst: Redis requirements)",
            redis.prefix,
            policy,
        )
