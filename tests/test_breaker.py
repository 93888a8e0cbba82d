"""The circuit breaker state machine, in one process, driven by a fake clock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from flask_resilience import (
    CircuitOpenError,
    CircuitState,
    Resilience,
    are_all_circuits_healthy,
    circuit_state_changed,
    create_circuit_breaker,
    get_circuit_breaker_stats,
    reset_circuit_breaker_stats,
    with_circuit_breaker,
)
from flask_resilience.breaker.breaker import CircuitBreaker
from flask_resilience.breaker.registry import BreakerRegistry
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp


class Boom(Exception):
    pass


def fail() -> None:
    raise Boom("remote failed")


def ok() -> str:
    return "ok"


def make(clock: FakeClock, **config: Any) -> CircuitBreaker:
    return BreakerRegistry().get_or_create("svc", clock=clock, **config)


def trip(breaker: CircuitBreaker, failures: int = 5) -> None:
    for _ in range(failures):
        with pytest.raises(Boom):
            breaker.call(fail)


# -- transitions ------------------------------------------------------------------


def test_full_cycle_closed_open_half_open_closed() -> None:
    clock = FakeClock()
    breaker = make(clock)
    trip(breaker, 4)
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN

    clock.advance(59)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(ok)
    assert rejected.value.name == "svc"
    assert rejected.value.state is CircuitState.OPEN
    assert rejected.value.retry_after == pytest.approx(1)

    clock.advance(1)
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats()["window"] == {"calls": 0, "failures": 0, "slow_calls": 0, "failure_rate": 0.0}


def test_failed_trial_reopens_for_a_full_timeout() -> None:
    clock = FakeClock()
    breaker = make(clock, timeout=30)
    trip(breaker)
    clock.advance(30)
    assert breaker.call(ok) == "ok"
    with pytest.raises(Boom):
        breaker.call(fail)
    assert breaker.state is CircuitState.OPEN
    clock.advance(29.9)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(0.1)
    assert breaker.call(ok) == "ok"


def test_sliding_window_forgets_old_failures() -> None:
    clock = FakeClock()
    breaker = make(clock, monitoring_period=10)
    trip(breaker, 4)
    clock.advance(11)
    trip(breaker, 1)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats()["window"]["failures"] == 1  # type: ignore[index]
    trip(breaker, 4)
    assert breaker.state is CircuitState.OPEN


def test_reset_timeout_clears_the_failure_count() -> None:
    clock = FakeClock()
    breaker = make(clock, monitoring_period=None, reset_timeout=300)
    trip(breaker, 4)
    clock.advance(300)  # 300 s without a failure: the count starts again
    trip(breaker, 1)
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 3)
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN


def test_without_a_window_failures_accumulate_until_reset_timeout() -> None:
    clock = FakeClock()
    breaker = make(clock, monitoring_period=None, reset_timeout=300)
    for _ in range(4):
        trip(breaker, 1)
        clock.advance(100)
    assert breaker.state is CircuitState.CLOSED
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN


def test_failure_rate_rule_needs_minimum_calls() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=100, failure_rate_threshold=50, minimum_calls=10)
    for _ in range(5):
        breaker.call(ok)
    trip(breaker, 4)
    assert breaker.state is CircuitState.CLOSED  # 9 calls: below the minimum
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN  # 5 of 10 = 50 %


def test_slow_call_rule() -> None:
    clock = FakeClock()
    breaker = make(clock, slow_call_duration=2, slow_call_rate_threshold=50, minimum_calls=4)

    def slow() -> str:
        clock.advance(2.5)
        return "late"

    breaker.call(ok)
    breaker.call(ok)
    assert breaker.call(slow) == "late"
    assert breaker.state is CircuitState.CLOSED
    breaker.call(slow)
    assert breaker.state is CircuitState.OPEN
    assert breaker.stats()["slow_calls"] == 2


# -- classification ----------------------------------------------------------------


def test_expected_exceptions_count_others_are_successes() -> None:
    breaker = make(FakeClock(), expected_exceptions=(OSError,), failure_threshold=1)
    with pytest.raises(ValueError, match="bad input"):
        breaker.call(_raise, ValueError("bad input"))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats()["successes"] == 1
    with pytest.raises(OSError, match="down"):
        breaker.call(_raise, OSError("down"))
    assert breaker.state is CircuitState.OPEN


def test_ignored_exceptions_are_neither() -> None:
    breaker = make(FakeClock(), ignored_exceptions=(LookupError,), failure_threshold=1)
    with pytest.raises(KeyError):
        breaker.call(_raise, KeyError("missing"))
    stats = breaker.stats()
    assert (stats["successes"], stats["failures"], stats["ignored"]) == (0, 0, 1)
    assert breaker.state is CircuitState.CLOSED


def test_exception_predicate() -> None:
    breaker = make(FakeClock(), is_failure=lambda exc: "timeout" in str(exc), failure_threshold=1)
    with pytest.raises(Boom):
        breaker.call(_raise, Boom("404 not found"))
    assert breaker.state is CircuitState.CLOSED
    with pytest.raises(Boom):
        breaker.call(_raise, Boom("timeout"))
    assert breaker.state is CircuitState.OPEN


def test_result_predicate_counts_a_returned_value_as_failure() -> None:
    breaker = make(FakeClock(), result_is_failure=lambda status: status >= 500, failure_threshold=2)
    assert breaker.call(lambda: 503) == 503
    assert breaker.call(lambda: 404) == 404
    assert breaker.state is CircuitState.CLOSED
    assert breaker.call(lambda: 500) == 500
    assert breaker.state is CircuitState.OPEN


def test_keyboard_interrupt_in_a_thread_is_not_a_failure() -> None:
    breaker = make(FakeClock(), failure_threshold=1)

    def interrupted() -> None:
        raise KeyboardInterrupt

    errors: list[BaseException] = []

    def run() -> None:
        try:
            breaker.call(interrupted)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert isinstance(errors[0], KeyboardInterrupt)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats()["failures"] == 0


def test_cancelled_trial_frees_its_permit_and_decides_nothing() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1)
    trip(breaker, 1)
    clock.advance(60)

    async def scenario() -> None:
        started = asyncio.Event()

        async def hang() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(breaker.call_async(hang))
        await started.wait()
        with pytest.raises(CircuitOpenError):
            await breaker.call_async(asyncio.sleep, 0)  # the only permit is taken
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state is CircuitState.HALF_OPEN
        await breaker.call_async(asyncio.sleep, 0)  # the permit came back

    asyncio.run(scenario())
    assert breaker.stats()["ignored"] == 1


# -- concurrency -------------------------------------------------------------------


def test_exactly_n_trials_across_16_threads_and_16_tasks() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, half_open_max_calls=3)
    trip(breaker, 1)
    clock.advance(60)

    release = threading.Event()
    admitted: list[str] = []
    rejected: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(17)  # 16 threads + the thread running the event loop

    def blocking_trial() -> None:
        with lock:
            admitted.append("thread")
        release.wait(10)

    def thread_caller() -> None:
        start.wait()
        try:
            breaker.call(blocking_trial)
        except CircuitOpenError:
            with lock:
                rejected.append("thread")

    async def async_trial() -> None:
        with lock:
            admitted.append("task")
        while not release.is_set():
            await asyncio.sleep(0.001)

    async def task_caller() -> None:
        try:
            await breaker.call_async(async_trial)
        except CircuitOpenError:
            with lock:
                rejected.append("task")

    async def all_tasks() -> None:
        start.wait()
        await asyncio.gather(*(task_caller() for _ in range(16)))

    threads = [threading.Thread(target=thread_caller) for _ in range(16)]
    threads.append(threading.Thread(target=lambda: asyncio.run(all_tasks())))
    for thread in threads:
        thread.start()
    assert eventually(lambda: len(admitted) + len(rejected) == 32)
    assert len(admitted) == 3
    assert len(rejected) == 29
    release.set()
    for thread in threads:
        thread.join(10)
    assert breaker.state is CircuitState.CLOSED  # 3 successful trials >= success_threshold


def test_closed_breaker_does_not_serialize_calls() -> None:
    breaker = make(FakeClock())
    inside = 0
    most_inside = 0
    lock = threading.Lock()
    all_inside = threading.Barrier(8, timeout=10)

    def protected() -> None:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        all_inside.wait()  # only passes if all 8 calls are inside at once
        with lock:
            inside -= 1

    threads = [threading.Thread(target=breaker.call, args=(protected,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most_inside == 8
    assert breaker.stats()["successes"] == 8


def test_hung_trial_gives_its_permit_back_after_timeout() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, timeout=30)
    trip(breaker, 1)
    clock.advance(30)
    hung = threading.Event()
    finish = threading.Event()

    def hang() -> str:
        hung.set()
        finish.wait(10)
        return "late"

    thread = threading.Thread(target=breaker.call, args=(hang,))
    thread.start()
    assert hung.wait(10)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(ok)
    assert rejected.value.retry_after == pytest.approx(30)
    clock.advance(30)
    assert breaker.call(ok) == "ok"  # the hung trial's lease lapsed
    finish.set()
    thread.join(10)
    assert breaker.state is CircuitState.HALF_OPEN  # the late result did not count
    assert breaker.call(ok) == "ok"
    assert breaker.state is CircuitState.CLOSED


# -- forms, fallback, operators ------------------------------------------------------


def test_fallback_result_replaces_the_rejection() -> None:
    breaker = make(FakeClock(), failure_threshold=1, fallback=lambda city: f"cached:{city}")
    with pytest.raises(Boom):
        breaker.call(lambda city: fail(), "LIS")
    assert breaker.call(lambda city: f"live:{city}", "LIS") == "cached:LIS"

    async def fetch(city: str) -> str:
        return f"live:{city}"

    assert asyncio.run(breaker.call_async(fetch, "OPO")) == "cached:OPO"


def test_async_fallback_is_awaited() -> None:
    async def cached(city: str) -> str:
        return f"cached:{city}"

    breaker = make(FakeClock(), failure_threshold=1, fallback=cached)
    trip(breaker, 1)

    async def fetch(city: str) -> str:
        return city

    assert asyncio.run(breaker.call_async(fetch, "FAO")) == "cached:FAO"


def test_decorator_on_sync_and_async_functions() -> None:
    breaker = make(FakeClock(), failure_threshold=2)

    @breaker
    def add(a: int, b: int) -> int:
        return a + b

    @breaker
    async def flaky() -> None:
        raise Boom

    assert add(2, 3) == 5
    assert add.__name__ == "add"
    for _ in range(2):
        with pytest.raises(Boom):
            asyncio.run(flaky())
    with pytest.raises(CircuitOpenError):
        add(1, 1)


def test_context_managers_sync_and_async() -> None:
    breaker = make(FakeClock(), failure_threshold=2)
    with breaker:
        pass
    with pytest.raises(Boom), breaker:
        raise Boom

    async def use() -> None:
        async with breaker:
            raise Boom

    with pytest.raises(Boom):
        asyncio.run(use())
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError), breaker:
        pass
    assert breaker.stats()["successes"] == 1


def test_operator_states() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1)
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(ok)
    assert rejected.value.retry_after is None
    clock.advance(3600)
    assert breaker.state is CircuitState.FORCED_OPEN

    breaker.disable()
    trip(breaker, 3)
    assert breaker.state is CircuitState.DISABLED
    assert breaker.stats()["failures"] == 0

    breaker.metrics_only()
    trip(breaker, 3)
    assert breaker.state is CircuitState.METRICS_ONLY
    assert breaker.stats()["failures"] == 3

    breaker.reset()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats()["calls"] == 0
    trip(breaker, 1)
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(ValueError, match="HALF_OPEN"):
        breaker.set_state("HALF_OPEN")


def test_state_changes_send_signals() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=1, success_threshold=1)
    seen: list[tuple[str, str, str]] = []

    def listener(sender: CircuitBreaker, **data: Any) -> None:
        seen.append((data["name"], data["old"].value, data["new"].value))

    circuit_state_changed.connect(listener, sender=breaker)
    try:
        trip(breaker, 1)
        clock.advance(60)
        breaker.call(ok)
    finally:
        circuit_state_changed.disconnect(listener, sender=breaker)
    assert seen == [("svc", "CLOSED", "OPEN"), ("svc", "OPEN", "HALF_OPEN"), ("svc", "HALF_OPEN", "CLOSED")]


def test_stats_report_every_figure() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=2)
    breaker.call(ok)
    trip(breaker, 2)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    stats = breaker.stats()
    assert stats["state"] == "OPEN"
    assert (stats["calls"], stats["successes"], stats["failures"], stats["rejections"]) == (3, 1, 2, 1)
    assert stats["failure_rate"] == pytest.approx(66.67)
    assert stats["seconds_until_trial"] == 60
    assert stats["last_failure_at"] is not None
    assert stats["last_transition_at"] is not None


# -- configuration and registry -------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("failure_threshold", 0), ("success_threshold", -1), ("timeout", -5), ("timeout", 0),
     ("monitoring_period", 0), ("reset_timeout", -1), ("half_open_max_calls", 0),
     ("failure_rate_threshold", 0), ("failure_rate_threshold", 120), ("slow_call_duration", -1),
     ("expected_exceptions", ("not a class",))],
)  # fmt: skip
def test_invalid_parameters_name_the_parameter(parameter: str, value: object) -> None:
    with pytest.raises(ValueError, match=parameter):
        BreakerRegistry().get_or_create("svc", **{parameter: value})


def test_unknown_parameter_and_bad_names_are_rejected() -> None:
    registry = BreakerRegistry()
    with pytest.raises(TypeError, match="treshold"):
        registry.get_or_create("svc", failure_treshold=3)
    with pytest.raises(ValueError, match="name"):
        registry.get_or_create("has space")


def test_one_name_is_one_circuit() -> None:
    registry = BreakerRegistry()
    first = registry.get_or_create("flights", failure_threshold=3, fallback=lambda: None)
    assert registry.get_or_create("flights") is first
    assert registry.get_or_create("flights", failure_threshold=3, fallback=lambda: 1) is first
    with pytest.raises(ValueError, match="other parameters"):
        registry.get_or_create("flights", failure_threshold=4)


def test_app_defaults_fill_what_a_breaker_leaves_out(make_app: MakeApp) -> None:
    extension = Resilience()
    early = extension.circuit_breaker("early", timeout=5)
    make_app(extension, RESILIENCE_BREAKER_DEFAULTS={"timeout": 20, "failure_threshold": 2})
    late = extension.circuit_breaker("late")
    assert (early.config.timeout, early.config.failure_threshold) == (5, 2)
    assert (late.config.timeout, late.config.failure_threshold) == (20, 2)


def test_circuit_breaker_enabled_false_disables_every_breaker(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIRCUIT_BREAKER_ENABLED", "false")
    extension = Resilience()
    breaker = extension.circuit_breaker("svc", failure_threshold=1)
    make_app(extension)
    trip(breaker, 3)
    assert breaker.state is CircuitState.DISABLED
    assert extension.circuit_breaker("later").state is CircuitState.DISABLED


def test_seed_functions_work_on_the_current_app(make_app: MakeApp) -> None:
    app, _ = make_app()
    with app.app_context():
        breaker = create_circuit_breaker("payments", failure_threshold=1)
        assert with_circuit_breaker("payments", lambda x: x * 2, 21) == 42
        assert are_all_circuits_healthy()
        with pytest.raises(Boom):
            with_circuit_breaker("payments", fail)
        assert not are_all_circuits_healthy()
        assert get_circuit_breaker_stats()["payments"]["state"] == "OPEN"
        reset_circuit_breaker_stats("payments")
        assert breaker.state is CircuitState.CLOSED
        with pytest.raises(KeyError):
            reset_circuit_breaker_stats("nope")

        async def double(x: int) -> int:
            return x * 2

        assert asyncio.run(with_circuit_breaker("payments", double, 4)) == 8
        reset_circuit_breaker_stats()


def _raise(exc: BaseException) -> None:
    raise exc


def test_counts_stay_exact_under_many_threads() -> None:
    breaker = make(FakeClock(), failure_threshold=10_000)
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        barrier.wait()
        for call in range(2_000):
            if call % 100 == index:
                with pytest.raises(Boom):
                    breaker.call(fail)
            else:
                breaker.call(ok)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = breaker.stats()
    assert stats["failures"] == 8 * 20
    assert stats["successes"] == 8 * 2_000 - 8 * 20
    assert stats["calls"] == 8 * 2_000
