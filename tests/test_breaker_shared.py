"""Circuit state shared across real processes through real Redis."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import pytest
import redis
from flask import Flask

from flask_resilience import CircuitOpenError, CircuitState, Resilience
from flask_resilience.breaker.breaker import CircuitBreaker
from flask_resilience.state import get_state
from flask_resilience.stores.redis import RedisStore
from tests.cache_outage import stopped
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp
from tests.services import free_port, start_redis_server

SERVICE = "shared-svc"
PARAMETERS: dict[str, Any] = {
    "failure_threshold": 5,
    "timeout": 60,
    "half_open_max_calls": 2,
    "success_threshold": 2,
}


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom


def status_app(
    make_app: MakeApp, extension: Resilience, redis_url: str, **config: Any
) -> tuple[Flask, RedisStore]:
    """An app whose breakers share their state in Redis, with a public status
    page, listening for state changes (``config`` added)."""
    app, _ = make_app(
        extension,
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_BREAKER_STORAGE="redis",
        RESILIENCE_HEALTH_PUBLIC=True,
        **config,
    )
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening(10)
    return app, store


def _shared_app(
    make_app: MakeApp, redis_url: str, clock: Callable[[], float]
) -> tuple[Flask, CircuitBreaker]:
    extension = Resilience()
    breaker = extension.circuit_breaker(SERVICE, clock=clock, **PARAMETERS)
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url, RESILIENCE_BREAKER_STORAGE="redis")
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    return app, breaker


def _trip(breaker: CircuitBreaker, failures: int) -> None:
    for _ in range(failures):
        with pytest.raises(Boom):
            breaker.call(fail)


def test_one_worker_opens_the_circuit_for_another(make_app: MakeApp, redis_url: str) -> None:
    clock = FakeClock(1_700_000_000)
    _, first = _shared_app(make_app, redis_url, clock)
    _, second = _shared_app(make_app, redis_url, clock)
    _trip(first, 3)
    _trip(second, 2)  # 3 + 2 failures across workers reach the threshold of 5
    assert second.state is CircuitState.OPEN
    assert eventually(lambda: first.state is CircuitState.OPEN)
    with pytest.raises(CircuitOpenError) as rejected:
        first.call(lambda: "not called")
    assert rejected.value.retry_after == pytest.approx(60)


def test_closed_successes_cost_no_redis_round_trip(make_app: MakeApp) -> None:
    # Counted on a Redis of its own: the shared server's command statistics
    # also count every other test run against it at the same time.
    directory = tempfile.mkdtemp(prefix="resilience-roundtrips-")
    port = free_port()
    server = start_redis_server(directory, port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        _, breaker = _shared_app(make_app, url, FakeClock(1_700_000_000))
        breaker.call(lambda: None)  # the first call reads the shared state once
        with contextlib.closing(redis.Redis.from_url(url)) as own_redis:

            def commands() -> dict[str, int]:
                stats: dict[str, dict[str, int]] = own_redis.info("commandstats")
                return {name: int(value["calls"]) for name, value in stats.items()}

            before = commands()
            for _ in range(200):
                breaker.call(lambda: None)
            after = commands()
        grown = {name for name in after if after[name] != before.get(name, 0)}
        # Only the INFO calls of this test itself may have grown.
        assert grown <= {"cmdstat_info"}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def test_redis_at_a_dead_port_falls_back_to_the_local_breaker(make_app: MakeApp) -> None:
    extension = Resilience()
    breaker = extension.circuit_breaker(SERVICE, clock=FakeClock(1_700_000_000), **PARAMETERS)
    make_app(
        extension,
        RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        RESILIENCE_BREAKER_STORAGE="redis",
    )
    assert breaker.call(lambda: "fine") == "fine"
    _trip(breaker, 5)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "rejected locally")
    stats = breaker.stats()
    assert stats["storage_errors"] >= 5  # type: ignore[operator]
    assert stats["storage"] == "redis"


def test_redis_killed_midway_keeps_calls_protected(make_app: MakeApp) -> None:
    directory = tempfile.mkdtemp(prefix="resilience-breaker-")
    port = free_port()
    server = start_redis_server(directory, port)
    try:
        clock = FakeClock(1_700_000_000)
        _, breaker = _shared_app(make_app, f"redis://127.0.0.1:{port}/0", clock)
        _trip(breaker, 2)
        server.terminate()
        server.wait(10)
        _trip(breaker, 3)  # the window kept locally already holds the first two
        assert breaker.state is CircuitState.OPEN
        clock.advance(60)
        assert breaker.call(lambda: "trial") == "trial"  # local HALF_OPEN trial
        assert breaker.call(lambda: "trial") == "trial"
        assert breaker.state is CircuitState.CLOSED
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


# -- four real worker processes ---------------------------------------------------------


def _worker(  # noqa: PLR0917  (multiprocessing passes positional arguments)
    index: int,
    redis_url: str,
    prefix: str,
    clock_value: Synchronized[float],
    commands: multiprocessing.Queue[str],
    results: multiprocessing.Queue[tuple[int, str, object]],
    release: Any,
) -> None:
    app = Flask(f"worker{index}")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_KEY_PREFIX=prefix,
        RESILIENCE_BREAKER_STORAGE="redis",
        RESILIENCE_AUDIT_ENABLED=False,  # not under test here; it would write to ./instance
    )
    extension = Resilience()
    breaker = extension.circuit_breaker(SERVICE, clock=lambda: clock_value.value, **PARAMETERS)
    extension.init_app(app)
    store = get_state(app).redis
    assert store is not None
    results.put((index, "ready", store.subscriber.wait_until_listening(10)))

    def trial() -> str:
        results.put((index, "trial-started", None))
        release.wait(20)
        return "recovered"

    while True:
        command = commands.get(timeout=60)
        if command == "fail":
            for _ in range(PARAMETERS["failure_threshold"]):
                with contextlib.suppress(Boom):
                    breaker.call(fail)
            results.put((index, "state", breaker.state.value))
        elif command == "expect-open":
            seen = eventually(lambda: breaker.state is CircuitState.OPEN)
            try:
                breaker.call(lambda: "went through")
                results.put((index, "rejected", False))
            except CircuitOpenError:
                results.put((index, "rejected", seen))
        elif command == "trial":
            try:
                breaker.call(trial)
                results.put((index, "trial", "done"))
            except CircuitOpenError:
                results.put((index, "trial", "rejected"))
        elif command == "expect-closed":
            results.put((index, "closed", eventually(lambda: breaker.state is CircuitState.CLOSED)))
        else:
            extension.shutdown()
            return


def _collect(
    results: multiprocessing.Queue[tuple[int, str, object]], count: int
) -> list[tuple[int, str, object]]:
    try:
        return [results.get(timeout=30) for _ in range(count)]
    except queue.Empty:
        pytest.fail("a worker process did not answer in time")


def test_four_processes_share_one_circuit(redis_url: str, key_prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    clock_value = context.Value("d", 1_700_000_000.0)
    results: multiprocessing.Queue[tuple[int, str, object]] = context.Queue()
    release = context.Event()
    inboxes: list[multiprocessing.Queue[str]] = [context.Queue() for _ in range(4)]
    workers = [
        context.Process(
            target=_worker, args=(i, redis_url, key_prefix, clock_value, inboxes[i], results, release)
        )
        for i in range(4)
    ]
    for worker in workers:
        worker.start()
    try:
        assert all(ready for _, _, ready in _collect(results, 4))

        inboxes[0].put("fail")
        assert _collect(results, 1) == [(0, "state", "OPEN")]

        for inbox in inboxes[1:]:
            inbox.put("expect-open")
        assert sorted(_collect(results, 3)) == [
            (1, "rejected", True),
            (2, "rejected", True),
            (3, "rejected", True),
        ]

        with clock_value.get_lock():
            clock_value.value += PARAMETERS["timeout"]
        for inbox in inboxes:
            inbox.put("trial")
        first = _collect(results, 4)  # two trials start, two callers are refused
        assert sorted(kind for _, kind, _ in first) == ["trial", "trial", "trial-started", "trial-started"]
        assert [value for _, kind, value in first if kind == "trial"] == ["rejected", "rejected"]

        release.set()
        assert [value for _, _, value in _collect(results, 2)] == ["done", "done"]
        for inbox in inboxes:
            inbox.put("expect-closed")
        assert all(closed for _, _, closed in _collect(results, 4))
    finally:
        for inbox in inboxes:
            inbox.put("stop")
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]


def test_the_status_endpoint_reports_the_shared_state_not_a_late_copy(
    make_app: MakeApp, redis_url: str
) -> None:
    """An operator (or a script) asks any worker: the answer is the circuit's
    state in Redis, even where that worker's copy has not heard of it yet
    (its listener restarting, or a message still on its way)."""
    clock = FakeClock(1_700_000_000)
    _, tripping = _shared_app(make_app, redis_url, clock)
    extension = Resilience()
    extension.circuit_breaker(SERVICE, clock=clock, **PARAMETERS)
    asked, store = status_app(make_app, extension, redis_url)
    store.subscriber.stop()  # this worker hears nothing of what follows
    _trip(tripping, 5)
    assert tripping.state is CircuitState.OPEN
    answer = asked.test_client().get("/api/health/circuit-breakers")
    assert answer.status_code == 200
    assert answer.json is not None
    assert answer.json["circuit_breakers"][SERVICE]["state"] == "OPEN"
    assert answer.json["healthy"] is False


def test_the_status_endpoint_pays_one_timeout_when_redis_hangs(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """Reading the shared state must not cost one Redis timeout per breaker
    while Redis hangs: after the first failure the rest show their copies."""
    url, server = throwaway_redis
    extension = Resilience()
    for name in ("one", "two", "three", "four"):
        extension.circuit_breaker(name, **PARAMETERS)
    app, _store = status_app(make_app, extension, url, RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2)
    client = app.test_client()
    assert client.get("/api/health/circuit-breakers").status_code == 200
    with stopped(server):
        answer = client.get("/api/health/circuit-breakers")
    assert answer.status_code == 200 and answer.json is not None
    errors = [breaker["storage_errors"] for breaker in answer.json["circuit_breakers"].values()]
    assert sum(errors) == 1, errors
