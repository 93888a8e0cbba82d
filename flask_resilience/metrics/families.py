"""Every feature's figures as metric families, independent of any client library.

Each family's label sets partition what it counts: no ``total`` beside its
parts, slow calls on a counter of their own (a slow call is also a success
or a failure). Labels never name users. Families without samples are left
out by the exporters.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ..audit.service import FEATURE as AUDIT
from ..audit.service import AppAudit
from ..breaker.api import FEATURE as BREAKERS
from ..breaker.registry import BreakerRegistry
from ..breaker.states import State
from ..cache.service import FEATURE as CACHE
from ..cache.service import AppCache
from ..histograms import HistogramSnapshot
from ..idempotency.service import FEATURE as IDEMPOTENCY
from ..idempotency.service import AppIdempotency
from ..state import ResilienceState

Labels = tuple[str, ...]
FleetMode = Literal["livesum", "livemax"]


@dataclass
class Family:
    """One metric family: ``kind`` is ``"counter"``, ``"gauge"`` or
    ``"histogram"`` (whose samples are in ``histograms``); a counter's
    ``name`` has no ``_total`` suffix. ``fleet`` says how a gauge combines over
    worker processes (prometheus_client's multiprocess modes)."""

    name: str
    kind: str
    help: str
    labels: Labels = ()
    values: dict[Labels, float] = field(default_factory=dict)
    fleet: FleetMode = "livesum"
    histograms: dict[Labels, HistogramSnapshot] = field(default_factory=dict)

    def add(self, value: float, *labels: str) -> None:
        self.values[labels] = float(value)

    def add_histogram(self, snapshot: HistogramSnapshot, *labels: str) -> None:
        """A histogram's samples; one with no observations is left out."""
        if snapshot.count:
            self.histograms[labels] = snapshot

    @property
    def empty(self) -> bool:
        return not self.values and not self.histograms


def _number(value: object) -> float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"a statistic must be a number, got {value!r}")
    return float(value)


def _single(name: str, kind: str, help_text: str, table: Mapping[str, Any], key: str) -> Iterator[Family]:
    """A family of one unlabelled sample, ``table[key]``; nothing when the table lacks it."""
    if key in table:
        family = Family(name, kind, help_text)
        family.add(table[key])
        yield family


def _from_table(family: Family, table: Mapping[str, Any], names: Mapping[str, str]) -> Family:
    """Samples ``names[key] -> table[key]`` for the keys the table has."""
    for key, label in names.items():
        if key in table:
            family.add(table[key], label)
    return family


def read(state: ResilienceState) -> Iterator[Family]:
    """The app's figures in this process, family by family."""
    breakers = cast("BreakerRegistry", state.features[BREAKERS])
    cache = cast("AppCache", state.features[CACHE])
    audit = cast("AppAudit", state.features[AUDIT])
    idempotency = cast("AppIdempotency", state.features[IDEMPOTENCY])
    yield from _breakers(breakers)
    yield from _cache(cache.stats())
    yield from _audit(audit.stats(include_users=False))
    yield from _idempotency(idempotency.stats())
    yield from _histograms(breakers, cache, audit, idempotency)


def _histograms(
    breakers: BreakerRegistry, cache: AppCache, audit: AppAudit, idempotency: AppIdempotency
) -> Iterator[Family]:
    """Durations and sizes, observed on the hot paths (never reset)."""
    calls = Family(
        "resilience_circuit_call_duration_seconds",
        "histogram",
        "Duration of calls through each circuit (sampled, 1 in 32, on the lock-free CLOSED path)",
        ("circuit",),
    )
    for breaker in breakers:
        calls.add_histogram(breaker.durations.snapshot(), breaker.name)
    lookups = Family(
        "resilience_cache_lookup_duration_seconds", "histogram", "Cache lookups by layer", ("layer",)
    )
    for layer, timings in cache.layered.stats.lookup_seconds.items():
        lookups.add_histogram(timings.snapshot(), layer)
    batches = audit.writer.batches
    flushes = Family(
        "resilience_audit_flush_duration_seconds", "histogram", "Audit flushes that stored entries"
    )
    flushes.add_histogram(batches.seconds.snapshot())
    sizes = Family("resilience_audit_flush_batch_size", "histogram", "Entries stored by each audit flush")
    sizes.add_histogram(batches.sizes.snapshot())
    waits = Family(
        "resilience_idempotency_lock_wait_seconds",
        "histogram",
        "Time to claim an idempotency key, and to wait for the request holding it",
        ("step",),
    )
    for step, timings in idempotency.lock_wait.items():
        waits.add_histogram(timings.snapshot(), step)
    yield from (calls, lookups, flushes, sizes, waits)


def _breakers(breakers: BreakerRegistry) -> Iterator[Family]:
    states = Family(
        "resilience_circuit_state",
        "gauge",
        "1 for the state each circuit is in",
        ("circuit", "state"),
        fleet="livemax",
    )
    calls = Family(
        "resilience_circuit_calls", "counter", "Calls through each circuit by outcome", ("circuit", "outcome")
    )
    slow = Family(
        "resilience_circuit_slow_calls", "counter", "Calls slower than the slow-call limit", ("circuit",)
    )
    for name, stats in breakers.stats().items():
        for candidate in State:
            states.add(1.0 if stats["state"] == candidate.value else 0.0, name, candidate.value)
        outcomes = {
            "successes": "success",
            "failures": "failure",
            "ignored": "ignored",
            "rejections": "rejected",
        }
        for key, outcome in outcomes.items():
            calls.add(_number(stats[key]), name, outcome)
        slow.add(_number(stats["slow_calls"]), name)
    yield from (states, calls, slow)


def _cache(cache: Mapping[str, Any]) -> Iterator[Family]:
    lookups = {"l1_hits": "l1_hit", "l2_hits": "l2_hit", "misses": "miss"}
    yield _from_table(
        Family(
            "resilience_cache_lookups", "counter", "Cache lookups by the layer that answered", ("result",)
        ),
        cache,
        lookups,
    )
    per_endpoint = Family(
        "resilience_cache_endpoint_lookups",
        "counter",
        "Cached views' lookups by result",
        ("endpoint", "result"),
    )
    for endpoint, figures in cache.get("endpoints", {}).items():
        for key, result in lookups.items():
            per_endpoint.add(figures.get(key, 0), endpoint, result)
    yield per_endpoint
    yield _from_table(
        Family("resilience_cache_writes", "counter", "Cache writes by operation", ("operation",)),
        cache,
        {"sets": "set", "deletes": "delete"},
    )
    for table in ("bypasses", "not_stored", "errors"):
        reasons = Family(f"resilience_cache_{table}", "counter", f"Cache {table} by reason", ("reason",))
        yield _from_table(reasons, cache.get(table, {}), {reason: reason for reason in cache.get(table, {})})
    l1 = cache.get("l1", {})
    yield _from_table(
        Family("resilience_cache_l1_removals", "counter", "L1 entries removed early", ("reason",)),
        l1,
        {"evictions": "evicted", "expirations": "expired"},
    )
    for key in ("entries", "bytes"):
        yield from _single(f"resilience_cache_l1_{key}", "gauge", f"L1 {key}, summed over processes", l1, key)
    yield from _single(
        "resilience_cache_pending_invalidations",
        "gauge",
        "Invalidations waiting for Redis to answer again, summed over processes",
        cache.get("l2", {}),
        "pending_invalidations",
    )
    yield from _write_behind(cache.get("write_behind", {}))


def _write_behind(queue: Mapping[str, Any]) -> Iterator[Family]:
    yield _from_table(
        Family("resilience_cache_write_behind", "counter", "Write-behind writes by outcome", ("outcome",)),
        queue,
        {"persisted": "persisted", "failed": "failed", "dropped": "dropped"},
    )
    yield from _single(
        "resilience_cache_write_behind_retries", "counter", "Write-behind retries", queue, "retries"
    )
    yield from _single(
        "resilience_cache_write_behind_pending", "gauge", "Write-behind writes waiting", queue, "pending"
    )


def _audit(audit: Mapping[str, Any]) -> Iterator[Family]:
    recorded = Family(
        "resilience_audit_recorded", "counter", "Audit entries recorded by event type", ("event_type",)
    )
    for event_type, count in audit.get("by_event_type", {}).items():
        recorded.add(count, event_type)
    yield recorded
    yield _from_table(
        Family(
            "resilience_audit_entries", "counter", "Audit entries by where the writer put them", ("outcome",)
        ),
        audit,
        {"written": "written", "spilled": "spilled", "rejected": "rejected", "dropped": "dropped"},
    )
    yield from _single(
        "resilience_audit_replayed", "counter", "Spilled audit entries written later", audit, "replayed"
    )
    yield from _single(
        "resilience_audit_flush_errors", "counter", "Audit flushes that failed", audit, "flush_errors"
    )
    yield from _single(
        "resilience_audit_journal_errors",
        "counter",
        "Audit journal writes failed",
        audit,
        "journal_errors",
    )
    yield from _single(
        "resilience_audit_queue_size", "gauge", "Audit entries waiting to be written", audit, "queue_size"
    )


def _idempotency(replay: Mapping[str, Any]) -> Iterator[Family]:
    yield _from_table(
        Family("resilience_idempotency_requests", "counter", "Idempotent requests by outcome", ("outcome",)),
        replay,
        {
            "first_executions": "first_execution",
            "replays": "replay",
            "conflicts": "conflict",
            "mismatches": "mismatch",
            "unreadable_records": "unreadable_record",
            "store_errors": "store_error",
        },
    )
    for key, help_text in (
        ("lease_renewals", "Leases of running idempotent requests renewed"),
        ("lease_lost", "Idempotent requests that found their lease taken over"),
        ("completion_retries", "Stored outcomes retried after Redis refused them"),
        ("completions_lost", "Outcomes that could not be stored after every retry"),
        ("memory_unsynced", "Requests served while the memory layer waited for the listener"),
    ):
        yield from _single(f"resilience_idempotency_{key}", "counter", help_text, replay, key)
