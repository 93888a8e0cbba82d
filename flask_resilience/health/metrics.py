"""``GET /api/health/metrics``: every feature's figures in the Prometheus text format.

Built per scrape from the same statistics the other endpoints show, through
``prometheus_client`` (the ``prometheus`` extra). Labels never name users.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response

from ..breaker.states import State
from ..problems import Problem
from ..state import ResilienceState, get_state
from .auth import stats_access
from .blueprint import health_blueprint


@health_blueprint.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition (admin unless RESILIENCE_HEALTH_PUBLIC)."""
    stats_access()
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415
        from prometheus_client.registry import Collector, CollectorRegistry  # noqa: PLC0415
    except ImportError:
        raise Problem(
            501,
            "metrics-unavailable",
            "Metrics need prometheus_client",
            "Install flask-resilience[prometheus] to serve metrics.",
        ) from None

    state = get_state()

    class Snapshot(Collector):
        def collect(self) -> Iterator[Any]:
            return _families(state)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    response = Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def _families(state: ResilienceState) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

    breaker_state = GaugeMetricFamily(
        "resilience_circuit_state", "1 for the state each circuit is in", labels=["circuit", "state"]
    )
    breaker_calls = CounterMetricFamily(
        "resilience_circuit_calls", "Calls through each circuit by outcome", labels=["circuit", "outcome"]
    )
    for name, stats in state.extension.breakers.stats().items():
        for candidate in State:
            breaker_state.add_metric(
                [name, candidate.value], 1.0 if stats["state"] == candidate.value else 0.0
            )
        for outcome in ("successes", "failures", "ignored", "rejections", "slow_calls"):
            breaker_calls.add_metric([name, outcome], float(stats[outcome]))  # type: ignore[arg-type]
    yield breaker_state
    yield breaker_calls

    cache = state.cache.stats()
    cache_events = CounterMetricFamily(
        "resilience_cache_events", "Cache lookups and writes", labels=["event"]
    )
    for event in ("l1_hits", "l2_hits", "misses", "sets", "deletes"):
        cache_events.add_metric([event], float(cache[event]))
    yield cache_events
    for table in ("bypasses", "not_stored", "errors"):
        family = CounterMetricFamily(
            f"resilience_cache_{table}", f"Cache {table} by reason", labels=["reason"]
        )
        for reason, count in cache[table].items():
            family.add_metric([reason], float(count))
        yield family
    yield GaugeMetricFamily(
        "resilience_cache_l1_entries", "Entries in this process's L1", value=cache["l1"]["entries"]
    )
    yield GaugeMetricFamily(
        "resilience_cache_l1_bytes", "Bytes in this process's L1", value=cache["l1"]["bytes"]
    )

    audit = state.audit.stats(include_users=False)
    audit_writer = CounterMetricFamily("resilience_audit_entries", "Audit writer figures", labels=["event"])
    for event, value in (
        ("written", audit["written"]),
        ("spilled", audit["spilled"]),
        ("replayed", audit["replayed"]),
        ("dropped", audit["dropped"]),
        ("rejected", audit["rejected"]),
        ("flush_errors", audit["flush_errors"]),
        ("journal_errors", audit["journal_errors"]),
    ):
        audit_writer.add_metric([event], float(value))
    yield audit_writer
    yield GaugeMetricFamily("resilience_audit_queue_size", "Audit entries waiting", value=audit["queue_size"])

    replay = state.idempotency.snapshot()
    idempotency = CounterMetricFamily(
        "resilience_idempotency_requests", "Idempotent requests by outcome", labels=["outcome"]
    )
    for outcome in ("requests", "first_executions", "replays", "conflicts", "mismatches", "store_errors"):
        idempotency.add_metric([outcome], float(replay[outcome]))
    yield idempotency
