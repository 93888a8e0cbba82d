"""Breaker edge cases: Retry-After caps, generators, the seed's call shape,
per-app settings and a Redis that restarts empty."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from flask_resilience import CircuitOpenError, CircuitState, Resilience, with_circuit_breaker
from flask_resilience.breaker.breaker import CircuitBreaker
from flask_resilience.breaker.config import Outcome
from flask_resilience.breaker.http_common import OutboundCall
from flask_resilience.breaker.registry import BreakerRegistry
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp
from tests.services import free_port, start_redis_server


class Boom(Exception):
    pass


def make(clock: FakeClock, **config: Any) -> CircuitBreaker:
    return BreakerRegistry().get_or_create("svc", clock=clock, **config)


# -- Retry-After ------------------------------------------------------------------------------


def _throttled(breaker: CircuitBreaker, retry_after: str) -> None:
    OutboundCall(breaker, lambda exc: Outcome.FAILURE).settle(429, {"Retry-After": retry_after})


def test_a_year_long_retry_after_is_capped_at_ten_timeouts() -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=30)
    _throttled(breaker, "31536000")
    assert breaker.state is CircuitState.OPEN
    clock.advance(299)
    assert breaker.state is CircuitState.OPEN
    clock.advance(1)
    assert breaker.state is CircuitState.HALF_OPEN
    stats = breaker.stats()
    assert stats["retry_after_capped"] == 1


def test_max_retry_after_is_configurable_and_short_values_are_kept() -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=30, max_retry_after=45)
    _throttled(breaker, "120")
    clock.advance(45)
    assert breaker.state is CircuitState.HALF_OPEN
    other = BreakerRegistry().get_or_create("other", clock=clock, timeout=30)
    _throttled(other, "40")
    clock.advance(39)
    assert other.state is CircuitState.OPEN
    assert other.stats()["retry_after_capped"] == 0
    with pytest.raises(ValueError, match="max_retry_after"):
        make(clock, max_retry_after=0)


# -- generators -------------------------------------------------------------------------------


def test_a_generator_counts_at_exhaustion_and_its_failures_trip() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2)

    @breaker
    def rows(fail_after: int | None) -> Iterator[int]:
        for number in range(3):
            if number == fail_after:
                raise Boom
            yield number

    created = rows(None)
    assert breaker.stats()["calls"] == 0  # creating it is not a call yet
    assert list(created) == [0, 1, 2]
    assert (breaker.stats()["calls"], breaker.stats()["successes"]) == (1, 1)
    for _ in range(2):
        with pytest.raises(Boom):
            list(rows(1))
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        rows(None)  # refused when created


def test_a_generator_closed_early_is_neither_success_nor_failure() -> None:
    breaker = make(FakeClock())

    @breaker
    def numbers() -> Iterator[int]:
        yield from range(10)

    iterator = numbers()
    next(iterator)
    iterator.close()  # type: ignore[attr-defined]
    assert (breaker.stats()["calls"], breaker.stats()["ignored"]) == (1, 1)


def test_an_async_generator_counts_at_exhaustion_and_its_failures_trip() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2)

    @breaker
    async def rows(fail_after: int | None) -> AsyncIterator[int]:
        for number in range(3):
            if number == fail_after:
                raise Boom
            yield number

    async def drain(fail_after: int | None) -> list[int]:
        return [row async for row in rows(fail_after)]

    assert asyncio.run(drain(None)) == [0, 1, 2]
    assert breaker.stats()["successes"] == 1
    for _ in range(2):
        with pytest.raises(Boom):
            asyncio.run(drain(1))
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        rows(None)


def test_an_async_generator_forwards_sent_values() -> None:
    breaker = make(FakeClock())

    @breaker
    async def echo() -> Any:
        received = None
        for _ in range(2):
            received = yield received

    async def run() -> list[Any]:
        agen = echo()
        first = await agen.__anext__()
        second = await agen.asend("hello")
        await agen.aclose()
        return [first, second]

    assert asyncio.run(run()) == [None, "hello"]


# -- the seed's call shape ----------------------------------------------------------------------


def test_config_as_a_positional_mapping_is_refused_before_calling(make_app: MakeApp) -> None:
    app, extension = make_app()
    calls: list[object] = []

    def fetch() -> str:
        calls.append(1)
        return "ok"

    with app.app_context():
        for _ in range(6):
            with pytest.raises(TypeError, match="keyword arguments"):
                with_circuit_breaker("seed-shape", fetch, {"failure_threshold": 3})
        breaker = extension.breakers.get("seed-shape")
        assert calls == []
        assert breaker is None or breaker.state is CircuitState.CLOSED
        # A mapping that the function does take is passed through.
        assert with_circuit_breaker("seed-shape-2", lambda options: options["a"], {"a": 1}) == 1


def test_a_call_with_wrong_arguments_never_trips(make_app: MakeApp) -> None:
    app, extension = make_app()

    def two(a: int, b: int) -> int:
        return a + b

    with app.app_context():
        for _ in range(6):
            with pytest.raises(TypeError):
                with_circuit_breaker("wrong-args", two, 1)
        breaker = extension.breakers.get("wrong-args")
        assert breaker is None or breaker.stats()["failures"] == 0
        assert with_circuit_breaker("wrong-args", two, 1, 2) == 3


def _add(a: int, b: int) -> int:
    return a + b


async def _add_async(a: int, b: int) -> int:
    return a + b


def test_wrong_arguments_to_a_decorated_function_never_trip() -> None:
    # The decorator and call()/call_async() are the same call shape as
    # with_circuit_breaker: the caller's mistake is not the remote side's.
    breaker = make(FakeClock(), failure_threshold=2)
    add, add_async = breaker(_add), breaker(_add_async)

    def bad_inside() -> None:
        raise TypeError("a bug inside the protected code still counts")

    for _ in range(3):
        with pytest.raises(TypeError):
            add(1)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            breaker.call(_add, 1, 2, 3)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            asyncio.run(add_async(1))  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            asyncio.run(breaker.call_async(_add_async, 1, 2, 3))  # type: ignore[call-arg]
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats()["failures"] == 0
    assert add(1, 2) == 3
    with pytest.raises(TypeError):
        breaker.call(bad_inside)
    assert breaker.stats()["failures"] == 1


# -- per-app settings ---------------------------------------------------------------------------


def test_a_second_app_with_other_breaker_settings_is_refused(make_app: MakeApp) -> None:
    extension = Resilience()
    breaker = extension.circuit_breaker("per-app", failure_threshold=2)
    make_app(extension)
    with pytest.raises(RuntimeError, match="RESILIENCE_BREAKER_ENABLED"):
        make_app(extension, RESILIENCE_BREAKER_ENABLED=False)
    with pytest.raises(RuntimeError, match="RESILIENCE_BREAKER_DEFAULTS"):
        make_app(extension, RESILIENCE_BREAKER_DEFAULTS={"timeout": 5})
    assert breaker.state is CircuitState.CLOSED
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(_boom)
    assert breaker.state is CircuitState.OPEN


def test_a_second_app_with_the_same_breaker_settings_is_accepted(make_app: MakeApp) -> None:
    extension = Resilience()
    make_app(extension, RESILIENCE_BREAKER_DEFAULTS={"timeout": 5})
    make_app(extension, RESILIENCE_BREAKER_DEFAULTS={"timeout": 5})
    assert extension.circuit_breaker("same").config.timeout == 5


def _boom() -> None:
    raise Boom


# -- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "seed_value"), [("timeout", 60000), ("monitoring_period", 10000), ("reset_timeout", 300000)]
)
def test_the_seeds_milliseconds_are_refused_with_a_hint(name: str, seed_value: int) -> None:
    with pytest.raises(ValueError, match="seconds") as refused:
        BreakerRegistry().get_or_create("units", **{name: seed_value})
    assert f"did you mean {name}={seed_value / 1000:g}" in str(refused.value)
    BreakerRegistry().get_or_create("units", **{name: seed_value / 1000})


# -- Redis restarting empty ---------------------------------------------------------------------


def test_a_redis_restarted_empty_is_resynced(make_app: MakeApp) -> None:
    directory = tempfile.mkdtemp(prefix="resilience-restart-")
    port = free_port()
    server = start_redis_server(directory, port)
    try:
        clock = FakeClock(1_700_000_000)
        extension = Resilience()
        breaker = extension.circuit_breaker("restart", clock=clock, failure_threshold=2, timeout=60)
        app, _ = make_app(
            extension, RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{port}/0", RESILIENCE_BREAKER_STORAGE="redis"
        )
        store = get_state(app).redis
        assert store is not None and store.subscriber.wait_until_listening(10)
        for _ in range(2):
            with pytest.raises(Boom):
                breaker.call(_boom)
        breaker.force_open()
        breaker.reset()
        for _ in range(2):
            with pytest.raises(Boom):
                breaker.call(_boom)
        assert breaker.state is CircuitState.OPEN
        server.terminate()
        server.wait(10)
        server = start_redis_server(directory, port)
        clock.advance(61)
        assert breaker.call(lambda: "after restart") == "after restart"
        assert breaker.state is CircuitState.CLOSED
        assert breaker.is_healthy
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("name", ["fallback", "is_failure", "result_is_failure", "clock"])
def test_a_hook_that_is_not_callable_is_refused_when_configured(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # JSON in RESILIENCE_BREAKER_DEFAULTS can only hold strings: a fallback
    # given as "module:function" was accepted, then raised TypeError in the
    # middle of the outage it was meant for.
    monkeypatch.setenv("RESILIENCE_BREAKER_DEFAULTS", f'{{"{name}": "payments:fallback"}}')
    with pytest.raises(ValueError, match=f"{name} must be callable"):
        make_app()
    with pytest.raises(ValueError, match=f"{name} must be callable"):
        BreakerRegistry().get_or_create("hooks", **{name: 42})


# -- HALF_OPEN under many threads ---------------------------------------------------------------


def test_half_open_admits_one_trial_among_sixteen_threads_with_a_whole_second_clock() -> None:
    # A clock of whole seconds (int(time.time()), or a test's integer clock)
    # made the "no permit left" answer an int, which was taken for a permit
    # token: every caller became a trial.
    clock = FakeClock(1_700_000_000)
    breaker = make(clock, failure_threshold=1, timeout=30, success_threshold=1)
    with pytest.raises(Boom):
        breaker.call(_raise_boom)
    clock.advance(30)
    admitted: list[int] = []
    refused: list[float | None] = []
    start, finish = threading.Barrier(16), threading.Event()

    def trial() -> None:
        admitted.append(1)
        finish.wait(10)

    def caller() -> None:
        start.wait()
        try:
            breaker.call(trial)
        except CircuitOpenError as exc:
            refused.append(exc.retry_after)
            if len(refused) == 15:  # the trial ends once every other caller was refused
                finish.set()

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 1
    assert len(refused) == 15 and all(isinstance(value, float) for value in refused)
    assert breaker.state is CircuitState.CLOSED


def _raise_boom() -> None:
    raise Boom
