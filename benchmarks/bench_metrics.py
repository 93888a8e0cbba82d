"""Metrics cost: per request, and per scrape, in prometheus_client's multiprocess mode.

Run: ``python benchmarks/bench_metrics.py``

1. Per-request cost of fleet-wide metrics (our publisher thread: the request
   path only checks the thread runs) beside the usual peer, a
   ``prometheus_client`` Counter incremented in a ``before_request`` hook (an
   mmap write per request), and beside no metrics at all. Raw WSGI calls.
2. Per-scrape cost: this process's figures (``ResilienceCollector``) and the
   multiprocess exposition (publish, then sum every worker's files).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

MULTIPROC_DIR = tempfile.mkdtemp(prefix="bench-metrics-")
# prometheus_client picks its value class (in memory or mmap files) at import.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = MULTIPROC_DIR

from flask import Flask  # noqa: E402
from harness import Figure, interleaved  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, generate_latest  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from flask_resilience import Resilience, cached  # noqa: E402
from flask_resilience.metrics import ResilienceCollector  # noqa: E402

TOKEN = "bench-metrics-admin-token"


def make_app(fleet: bool) -> Flask:
    app = Flask(f"bench-{fleet}")
    app.config.update(RESILIENCE_ADMIN_TOKEN=TOKEN, RESILIENCE_AUDIT_ENABLED=False)
    if not fleet:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    try:
        extension = Resilience(app)
    finally:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = MULTIPROC_DIR
    for number in range(5):
        extension.circuit_breaker(f"partner-{number}")

    @app.get("/flights")
    @cached(ttl=300)
    def flights() -> Any:
        return {"flights": []}

    return app


def wsgi_get(app: Flask, path: str, headers: dict[str, str] | None = None) -> Callable[[], None]:
    """One raw WSGI GET of ``path`` per call (the environ is built once)."""
    environ = EnvironBuilder(path=path, headers=list((headers or {}).items())).get_environ()

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Callable[[bytes], object]:
        return len

    def call() -> None:
        for _ in app.wsgi_app(environ, start_response):
            pass

    return call


def report(title: str, unit: str, figures: dict[str, float], base: float | None = None) -> None:
    """One table: each contender's figure, and its ratio to ``base`` when given."""
    ratio_header = f" {'x base':>8}" if base else ""
    print(f"\n{title:40} {unit:>8}{ratio_header}")
    for name, value in figures.items():
        ratio = f" {value / base:8.3f}" if base else ""
        print(f"{name:40} {value:8.2f}{ratio}")


def measure(number: int, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per-request (us) and per-scrape (ms) timings, each set in one interleaved run."""
    logging.disable(logging.WARNING)
    plain, fleet, peer = make_app(False), make_app(True), make_app(False)
    requests_counter = Counter("bench_requests", "Requests", registry=None)
    peer.before_request(requests_counter.inc)
    per_request = interleaved(
        {
            "flask-resilience fleet metrics": wsgi_get(fleet, "/flights"),
            "no fleet metrics": wsgi_get(plain, "/flights"),
            "peer: Counter.inc() per request": wsgi_get(peer, "/flights"),
        },
        number=number,
        rounds=rounds,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    registry = CollectorRegistry()
    registry.register(ResilienceCollector(plain))
    per_scrape = interleaved(
        {
            "ResilienceCollector (this process)": lambda: generate_latest(registry),
            "GET /metrics, multiprocess": wsgi_get(fleet, "/api/health/metrics", auth),
        },
        number=max(20, number // 10),
        unit=1e3,
    )
    return per_request, per_scrape


def figures(quick: bool = False) -> list[Figure]:
    per_request, _ = measure(200 if quick else 2000, 3 if quick else 11)
    base = per_request["no fleet metrics"]
    ours = per_request["flask-resilience fleet metrics"] - base
    peer = per_request["peer: Counter.inc() per request"] - base
    return [
        Figure(
            "metrics: cost per request, fleet (multiprocess) mode vs Counter.inc() hook",
            ours,
            peer,
            None,
            "informational",
            None,
            note=f"added to a cached GET of {base:.1f} us (raw WSGI); the peer increments one mmap counter",
        )
    ]


def main() -> None:
    per_request, per_scrape = measure(2000, 11)
    base = per_request["no fleet metrics"]
    report("per request (cached GET, raw WSGI)", "us", per_request, base)
    report("per scrape", "ms", per_scrape)
    ours = per_request["flask-resilience fleet metrics"] - base
    theirs = per_request["peer: Counter.inc() per request"] - base
    print(f"\nadded per request: ours {ours:+.2f} us, peer {theirs:+.2f} us")


if __name__ == "__main__":
    main()
