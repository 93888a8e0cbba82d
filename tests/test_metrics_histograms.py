"""Histograms: breaker call duration, cache lookup per layer, audit flush
duration and batch size, idempotency lock wait; exported by
ResilienceCollector and by the fleet (multiprocess) publisher."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from flask_resilience import cached, idempotent, log_auth_event
from flask_resilience.audit.service import AppAudit
from flask_resilience.breaker.registry import BreakerRegistry
from flask_resilience.breaker.wrapping import SAMPLE
from flask_resilience.histograms import Sizes, Timings
from flask_resilience.metrics import ResilienceCollector
from tests.clock import FakeClock
from tests.conftest import MakeApp

TOKEN = "histogram-admin-token-0123456789"


def histograms(text: str) -> dict[str, Metric]:
    families = text_string_to_metric_families(text)
    return {family.name: family for family in families if family.type == "histogram"}


def collected(app: Flask) -> dict[str, Metric]:
    registry = CollectorRegistry()
    registry.register(ResilienceCollector(app))
    return histograms(generate_latest(registry).decode())


def series(family: Metric, **labels: str) -> tuple[list[tuple[float, float]], float, float]:
    """Cumulative (bound, count) pairs, the count and the sum of one label set."""
    buckets, count, total = [], -1.0, -1.0
    for sample in family.samples:
        own = {k: v for k, v in sample.labels.items() if k != "le"}
        if own != labels:
            continue
        if sample.name.endswith("_bucket"):
            buckets.append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            count = sample.value
        elif sample.name.endswith("_sum"):
            total = sample.value
    return sorted(buckets), count, total


def check_shape(family: Metric, **labels: str) -> float:
    """Buckets cumulative and ending in +Inf == count; returns the count."""
    buckets, count, total = series(family, **labels)
    assert buckets, f"no {family.name} series for {labels}"
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == (float("inf"), count)
    assert total >= 0
    return count


# -- the histograms themselves ------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=50))
def test_timings_buckets_hold_every_observation_below_their_bound(durations: list[int]) -> None:
    timings = Timings()
    for ns in durations:
        timings.observe_ns(ns)
    snapshot = timings.snapshot()
    assert snapshot.count == len(durations) == timings.count()
    assert snapshot.sum == pytest.approx(sum(durations) / 1e9)
    for bound, below in snapshot.buckets:
        # Exactly the observations <= the bound: each is in the first bucket that holds it.
        assert below == sum(1 for ns in durations if ns / 1e9 <= bound)


@given(st.lists(st.integers(min_value=0, max_value=20000), max_size=50))
def test_sizes_buckets_are_le_bounds(sizes: list[int]) -> None:
    histogram = Sizes()
    for size in sizes:
        histogram.observe(size)
    snapshot = histogram.snapshot()
    assert snapshot.count == len(sizes)
    assert snapshot.sum == sum(sizes)
    for bound, below in snapshot.buckets:
        assert below == sum(1 for size in sizes if size <= bound)


def test_a_float_clock_that_jumps_is_clamped() -> None:
    timings = Timings()
    timings.observe_seconds(-5.0)
    timings.observe_seconds(1e30)
    assert timings.snapshot().count == 2


def test_threads_observing_one_histogram_lose_nothing_in_practice() -> None:
    timings = Timings()

    def work() -> None:
        for ns in range(20000):
            timings.observe_ns(ns)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert timings.count() == 8 * 20000


# -- breakers -----------------------------------------------------------------------------


def test_lock_free_path_is_sampled_and_weighted() -> None:
    breaker = BreakerRegistry().get_or_create("sampled")
    for _ in range(10 * SAMPLE):
        breaker.call(lambda: None)
    decorated = breaker(lambda: None)
    for _ in range(2 * SAMPLE):
        decorated()
    snapshot = breaker.durations.snapshot()
    assert snapshot.count == 12 * SAMPLE  # one call in SAMPLE, counted SAMPLE times
    assert breaker.stats()["successes"] == 12 * SAMPLE


def test_every_call_off_the_lock_free_path_is_timed_on_the_breakers_clock() -> None:
    clock = FakeClock()
    breaker = BreakerRegistry().get_or_create("timed", slow_call_duration=5.0, clock=clock)

    def takes(seconds: float) -> None:
        clock.advance(seconds)

    for seconds in (0.5, 2.0, 8.0):
        breaker.call(takes, seconds)
    snapshot = breaker.durations.snapshot()
    assert snapshot.count == 3
    assert snapshot.sum == pytest.approx(10.5)
    assert dict(snapshot.buckets)[float("inf")] == 3
    assert next(count for bound, count in snapshot.buckets if bound >= 8.0) == 3


def test_failures_are_timed_off_the_lock_free_path_only(make_app: MakeApp) -> None:
    app, extension = make_app()
    timed = extension.circuit_breaker("failing-timed", failure_threshold=1000, slow_call_duration=10.0)
    untimed = extension.circuit_breaker("failing-fast", failure_threshold=1000)

    def fail() -> None:
        raise OSError("down")

    for breaker in (timed, untimed):
        for _ in range(5):
            with pytest.raises(OSError, match="down"):
                breaker.call(fail)
    family = collected(app)["resilience_circuit_call_duration_seconds"]
    # A slow-call rule takes every call off the lock-free path: each is timed once.
    assert check_shape(family, circuit="failing-timed") == 5
    # On the lock-free path only successes set up the sample (documented).
    assert not [s for s in family.samples if s.labels.get("circuit") == "failing-fast"]
    assert untimed.stats()["failures"] == 5


# -- the app's histograms, scraped ---------------------------------------------------------


@pytest.fixture
def app(make_app: MakeApp, redis_url: str, tmp_path: Path) -> Flask:
    app, extension = make_app(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_ADMIN_TOKEN=TOKEN,
        RESILIENCE_AUDIT_SPILL_PATH=str(tmp_path / "audit.journal"),
    )
    partner = extension.circuit_breaker("partner", slow_call_duration=5.0)  # every call timed

    @app.get("/fares")
    @cached(60)
    def fares() -> ResponseReturnValue:
        return jsonify(fare=partner.call(lambda: 42))

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        return jsonify(paid=True)

    return app


def drive(app: Flask) -> None:
    client = app.test_client()
    for _ in range(3):
        assert client.get("/fares").status_code == 200
    for key in ("k1", "k1", "k2"):
        assert client.post("/pay", json={"amount": 1}, headers={"Idempotency-Key": key}).status_code == 200
    with app.test_request_context("/login"):
        log_auth_event("LOGIN", user_id="7")
    with app.app_context():
        AppAudit.of().writer.flush()


def test_collector_exports_every_histogram(app: Flask) -> None:
    drive(app)
    found = collected(app)
    assert check_shape(found["resilience_circuit_call_duration_seconds"], circuit="partner") >= 1
    lookups = found["resilience_cache_lookup_duration_seconds"]
    assert check_shape(lookups, layer="l2") >= 1
    assert check_shape(found["resilience_audit_flush_duration_seconds"]) >= 1
    sizes = found["resilience_audit_flush_batch_size"]
    assert check_shape(sizes) >= 1
    assert series(sizes)[2] >= 1  # the sum: entries stored
    # Two first requests claimed their key (the replay may come from the memory layer).
    assert check_shape(found["resilience_idempotency_lock_wait_seconds"], step="claim") >= 2


def test_the_health_endpoint_serves_them_and_they_never_go_down(app: Flask) -> None:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    before = histograms(client.get("/api/health/metrics", headers=headers).text)
    drive(app)
    # A statistics reset leaves histograms alone: Prometheus rates them.
    assert client.post("/api/health/cache/reset", headers=headers).status_code == 200
    after = histograms(client.get("/api/health/metrics", headers=headers).text)
    assert "resilience_cache_lookup_duration_seconds" in after
    for name, family in before.items():
        old = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        new = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in after[name].samples}
        assert all(new[key] >= value for key, value in old.items())


def test_an_idle_app_has_no_histogram_families(make_app: MakeApp) -> None:
    app, _ = make_app()
    assert collected(app) == {}


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """prometheus_client picks its value class at import: switch it to files for this test."""
    from prometheus_client import values

    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    yield directory
    values.close_all_multiprocess_files()  # type: ignore[no-untyped-call]
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def test_fleet_mode_publishes_histograms_as_increments(
    multiproc_dir: Path, make_app: MakeApp, redis_url: str, tmp_path: Path
) -> None:
    from flask_resilience.metrics.fleet import FLEET_EXTENSION

    app, extension = make_app(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_ADMIN_TOKEN=TOKEN,
        RESILIENCE_AUDIT_SPILL_PATH=str(tmp_path / "audit.journal"),
    )
    assert FLEET_EXTENSION in app.extensions
    partner = extension.circuit_breaker("fleet-partner")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(SAMPLE):
        partner.call(lambda: None)
    first = histograms(client.get("/api/health/metrics", headers=headers).text)
    for _ in range(SAMPLE):
        partner.call(lambda: None)
    second = histograms(client.get("/api/health/metrics", headers=headers).text)
    third = histograms(client.get("/api/health/metrics", headers=headers).text)
    name = "resilience_circuit_call_duration_seconds"
    assert check_shape(first[name], circuit="fleet-partner") == SAMPLE
    # Published again and again, each observation counts once.
    assert check_shape(second[name], circuit="fleet-partner") == 2 * SAMPLE
    assert check_shape(third[name], circuit="fleet-partner") == 2 * SAMPLE
    assert list(multiproc_dir.glob("histogram_*.db"))
