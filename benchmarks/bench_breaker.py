"""Circuit breaker overhead, side by side with pybreaker and circuitbreaker.

Run: ``pip install -r benchmarks/requirements.txt && python benchmarks/bench_breaker.py``
(``--redis-url`` for the shared-storage figures; default redis://127.0.0.1:6379/0).

Measures, in one run:
1. CLOSED per-call overhead (protected no-op call minus a plain call);
2. the cost of a rejection while OPEN (raise and catch; ours also via fallback);
3. wall time of 8 threads x 5 protected 20 ms calls through one breaker, vs unwrapped.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import circuitbreaker
import pybreaker
from flask import Flask
from harness import Figure, interleaved, print_figures

from flask_resilience import CircuitOpenError, Resilience
from flask_resilience.breaker.breaker import CircuitBreaker
from flask_resilience.breaker.registry import BreakerRegistry


def noop() -> None:
    return None


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom


def rejecting(call: Callable[[], Any], error: type[BaseException]) -> Callable[[], None]:
    def once() -> None:
        try:
            call()
        except error:
            pass

    return once


def threads_wall(call: Callable[[Callable[[], None]], Any], threads: int = 8, calls: int = 5) -> float:
    def work() -> None:
        time.sleep(0.02)

    def worker() -> None:
        for _ in range(calls):
            call(work)

    runs = []
    for _ in range(3):
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        started = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def ours_local() -> CircuitBreaker:
    return BreakerRegistry().get_or_create("bench")


def ours_redis(redis_url: str) -> tuple[CircuitBreaker, Resilience]:
    extension = Resilience()
    breaker = extension.circuit_breaker("bench-shared")
    app = Flask("bench")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url,
        RESILIENCE_BREAKER_STORAGE="redis",
        RESILIENCE_KEY_PREFIX=f"bench-{uuid.uuid4().hex[:8]}:",
    )
    extension.init_app(app)
    breaker.call(noop)  # first call syncs the shared state
    return breaker, extension


def opened_circuitbreaker() -> Callable[[], None]:
    breaker = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=3600, name="cb-open")
    try:
        breaker(boom)()
    except Boom:
        pass
    return breaker(noop)  # type: ignore[no-any-return]


def closed_overheads(redis_url: str, number: int, rounds: int = 9) -> tuple[float, dict[str, float]]:
    """The plain call's time and each breaker's CLOSED overhead over it, in ns, one interleaved run."""
    local = ours_local()
    shared, extension = ours_redis(redis_url)
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    # circuitbreaker checks its state only in the decorator (its call() does
    # not), so the decorated form is the one that protects anything.
    cbk_noop = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=60, name="cb")(noop)
    local_noop = local(noop)
    try:
        # The plain call goes through the same lambda harness, so only the breaker differs.
        timings = interleaved(
            {
                "plain": lambda: noop(),
                "flask-resilience (local)": lambda: local.call(noop),
                "flask-resilience (local, @)": lambda: local_noop(),
                "flask-resilience (redis)": lambda: shared.call(noop),
                "pybreaker": lambda: pyb.call(noop),
                "circuitbreaker (@)": lambda: cbk_noop(),
            },
            number,
            rounds=rounds,
            unit=1e9,
        )
    finally:
        extension.shutdown()
    plain = timings.pop("plain")
    return plain, {name: value - plain for name, value in timings.items()}


def closed_figures(closed: dict[str, float]) -> list[Figure]:
    ours = closed["flask-resilience (local)"]
    cbk, pyb = closed["circuitbreaker (@)"], closed["pybreaker"]
    shared = closed["flask-resilience (redis)"]
    return [
        Figure(
            "breaker CLOSED overhead vs circuitbreaker",
            ours,
            cbk,
            ours / cbk,
            "<= 0.50",
            ours / cbk <= 0.5,
            "ns",
        ),
        Figure(
            "breaker CLOSED overhead vs pybreaker", ours, pyb, ours / pyb, "<= 0.25", ours / pyb <= 0.25, "ns"
        ),
        Figure(
            "breaker CLOSED overhead, shared state (Redis) vs local",
            shared,
            ours,
            shared / ours,
            "-",
            None,
            "ns",
            "a successful CLOSED call sends no Redis command (state mirrored through pub/sub)",
        ),
    ]


def figures(quick: bool = False) -> list[Figure]:
    """CLOSED overhead of a protected no-op call, ours beside circuitbreaker and pybreaker."""
    logging.disable(logging.WARNING)
    _plain, closed = closed_overheads(REDIS_URL, 10_000 if quick else 100_000, rounds=5 if quick else 9)
    return closed_figures(closed)


REDIS_URL = "redis://127.0.0.1:6379/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    n = args.number
    logging.disable(logging.WARNING)  # the forced-open breakers would log their transitions

    plain, closed = closed_overheads(args.redis_url, n)

    open_local = ours_local()
    open_local.force_open()
    with_fallback = BreakerRegistry().get_or_create("fb", fallback=lambda: None)
    with_fallback.force_open()
    open_pyb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    open_pyb.open()
    open_cbk = opened_circuitbreaker()
    rejections = interleaved(
        {
            "flask-resilience (raise)": rejecting(lambda: open_local.call(noop), CircuitOpenError),
            "flask-resilience (fallback)": lambda: with_fallback.call(noop),
            "pybreaker": rejecting(lambda: open_pyb.call(noop), pybreaker.CircuitBreakerError),
            "circuitbreaker (@)": rejecting(open_cbk, circuitbreaker.CircuitBreakerError),
        },
        n // 4,
        rounds=9,
        unit=1e9,
    )

    unwrapped = threads_wall(lambda fn: fn())
    threaded = {
        "unwrapped": unwrapped,
        "flask-resilience (local)": threads_wall(ours_local().call),
        "pybreaker": threads_wall(pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60).call),
    }

    print(f"plain no-op call through the harness: {plain:.0f} ns\n")
    print(f"{'CLOSED overhead per call':32} {'ns':>8}")
    for name, value in closed.items():
        print(f"{name:32} {value:8.0f}")
    print(f"\n{'OPEN rejection per call':32} {'ns':>8}")
    for name, value in rejections.items():
        print(f"{name:32} {value:8.0f}")
    print(f"\n{'8 threads x 5 x 20 ms':32} {'s':>8} {'x unwrapped':>12}")
    for name, value in threaded.items():
        print(f"{name:32} {value:8.3f} {value / unwrapped:12.2f}")

    ours = closed["flask-resilience (local)"]
    print("\nratios (targets in brackets)")
    print(f"  local CLOSED overhead / circuitbreaker: {ours / closed['circuitbreaker (@)']:.2f} [<= 0.50]")
    print(f"  local CLOSED overhead / pybreaker:      {ours / closed['pybreaker']:.2f} [<= 0.25]")
    print(f"  redis CLOSED overhead / local:          {closed['flask-resilience (redis)'] / ours:.2f}")
    ours_threads = threaded["flask-resilience (local)"] / unwrapped
    print(f"  8 threads, ours / unwrapped:            {ours_threads:.2f} [<= 1.30]")
    print(f"  8 threads, pybreaker / unwrapped:       {threaded['pybreaker'] / unwrapped:.2f}")
    raised = rejections["flask-resilience (raise)"]
    print(f"  rejection, ours (raise) / pybreaker:    {raised / rejections['pybreaker']:.2f}")
    print(f"  rejection, ours (raise) / circuitbreaker: {raised / rejections['circuitbreaker (@)']:.2f}")

    print()
    print_figures(closed_figures(closed))


if __name__ == "__main__":
    main()
