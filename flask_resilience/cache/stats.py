"""The cache's counters, and the shape of its statistics."""

from __future__ import annotations

from typing import Any, TypedDict

from ..histograms import Timings
from ..stats import Counters


class L1Stats(TypedDict):
    entries: int
    bytes: int
    evictions: int
    expirations: int


class L2Stats(TypedDict):
    backend: str | None
    available: bool
    pending_invalidations: int  # owed by this process: they could not reach L2 yet


class WriteBehindStats(TypedDict):
    pending: int
    queued: int
    persisted: int
    retries: int
    failed: int
    dropped: int


class CacheStatsSnapshot(TypedDict, total=False):
    """``get_cache_stats()`` and ``GET /health/cache``. Counters not yet
    counted are absent, except those listed in :data:`ALWAYS`."""

    l1_hits: int
    l2_hits: int
    misses: int
    sets: int
    deletes: int
    l1_unsynced: int
    collapsed: int
    tag_invalidations: int
    pattern_invalidations: int
    invalidations_received: int
    hits: int
    hit_rate: float
    bypasses: dict[str, int]
    not_stored: dict[str, int]
    errors: dict[str, int]
    endpoints: dict[str, dict[str, int]]
    l1: L1Stats
    l2: L2Stats
    write_behind: WriteBehindStats


ALWAYS = ("l1_hits", "l2_hits", "misses", "sets", "deletes", "l1_unsynced")


class CacheStats(Counters):
    """Counters of one app's cache; thread-safe."""

    def __init__(self) -> None:
        super().__init__("bypasses", "not_stored", "errors")
        # Lookup durations per layer (Prometheus histograms; never reset).
        self.lookup_seconds = {"l1": Timings(), "l2": Timings()}

    def counts(self) -> dict[str, Any]:
        data = super().snapshot(*ALWAYS)
        hits = data["l1_hits"] + data["l2_hits"]
        lookups = hits + data["misses"]
        return {**data, "hits": hits, "hit_rate": round(hits / lookups, 4) if lookups else 0.0}
