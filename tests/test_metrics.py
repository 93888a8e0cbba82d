"""``flask_resilience.metrics``: the collector an app registers itself, and
the shape of the families (partitions, slow calls apart, no empty families)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_resilience import CircuitOpenError, cached, idempotent
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.metrics import ResilienceCollector
from tests.clock import FakeClock
from tests.conftest import MakeApp

Families = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(app: Flask) -> Families:
    registry = CollectorRegistry()
    registry.register(ResilienceCollector(app))
    families: Families = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        samples = families.setdefault(family.name, {})
        for sample in family.samples:
            samples[tuple(sorted(sample.labels.items()))] = sample.value
    return families


def test_collector_in_an_apps_own_registry_without_empty_families(make_app: MakeApp) -> None:
    app, _ = make_app()
    families = scrape(app)
    assert families, "the collector yields the app's figures"
    assert all(samples for samples in families.values()), [name for name, s in families.items() if not s]
    # No breaker, no bypass yet: no family for them, rather than an empty one.
    assert not [name for name in families if name.startswith("resilience_circuit")]
    assert "resilience_cache_bypasses" not in families


def test_collector_needs_the_extension() -> None:
    with pytest.raises(RuntimeError):
        ResilienceCollector(Flask("bare"))


def test_breaker_outcomes_partition_its_calls_and_slow_calls_count_apart(make_app: MakeApp) -> None:
    clock = FakeClock()
    app, extension = make_app()
    breaker = extension.circuit_breaker(
        "partner", failure_threshold=2, slow_call_duration=1.0, clock=clock, timeout=30
    )

    def slow_success() -> str:
        clock.advance(2.0)
        return "ok"

    def failure() -> None:
        raise OSError("down")

    breaker.call(slow_success)
    for _ in range(2):
        with pytest.raises(OSError, match="down"):
            breaker.call(failure)
    with pytest.raises(CircuitOpenError):
        breaker.call(slow_success)
    families = scrape(app)
    calls = {dict(labels)["outcome"]: value for labels, value in families["resilience_circuit_calls"].items()}
    assert calls == {"success": 1.0, "failure": 2.0, "ignored": 0.0, "rejected": 1.0}
    stats: dict[str, Any] = breaker.stats()
    assert calls["success"] + calls["failure"] + calls["ignored"] == stats["calls"]
    assert families["resilience_circuit_slow_calls"] == {(("circuit", "partner"),): 1.0}
    states = families["resilience_circuit_state"]
    assert states[(("circuit", "partner"), ("state", "OPEN"))] == 1.0
    assert sum(states.values()) == 1.0


def test_idempotency_outcomes_sum_to_the_requests(make_app: MakeApp) -> None:
    app, _ = make_app()

    @app.post("/pay")
    @idempotent()
    def pay() -> Any:
        return jsonify(paid=True), 201

    @app.get("/search")
    @cached(ttl=60)
    def search() -> Any:
        return jsonify(found=[])

    client = app.test_client()
    for body in ({"a": 1}, {"a": 1}, {"a": 2}):
        client.post("/pay", json=body, headers={"Idempotency-Key": "k-1"})
    for _ in range(3):
        client.get("/search")
    families = scrape(app)
    outcomes = {
        dict(labels)["outcome"]: value
        for labels, value in families["resilience_idempotency_requests"].items()
    }
    assert sum(outcomes.values()) == AppIdempotency.of(app).stats()["requests"] == 3
    assert (outcomes["first_execution"], outcomes["replay"], outcomes["mismatch"]) == (1.0, 1.0, 1.0)
    lookups = {
        dict(labels)["result"]: value for labels, value in families["resilience_cache_lookups"].items()
    }
    assert lookups == {"l1_hit": 2.0, "l2_hit": 0.0, "miss": 1.0}
    per_endpoint = families["resilience_cache_endpoint_lookups"]
    assert per_endpoint[(("endpoint", "search"), ("result", "l1_hit"))] == 2.0
