"""Requests/s and p50/p99 latency of whole gunicorn stacks over loopback HTTP.

Run: ``pip install -e ".[test]" flask-caching && python benchmarks/stack.py``
(``--seconds`` per measurement, ``--runs`` rounds, ``--quick``). The load
comes from ``wrk`` when it is on PATH (Debian/Ubuntu: ``apt-get install wrk``;
macOS: ``brew install wrk``), else from a bounded Python load generator
(threads, a fixed duration): wrk's figures are the ones to compare with other
servers, the Python generator's only with each other (it costs more CPU than
the server).

Servers: ``gunicorn -k sync -w 2``, ``-k sync -w 4`` and ``-k gthread -w 2
--threads 4``, each contender in its own server against a throwaway
redis-server (the extension's store, as in production), loopback only:

- ``bare``: Flask, no extension;
- ``extension``: ``Resilience(app)`` with no decorator on the route;
- ``uncached``: a ``@cached`` route whose responses are ``no-store``: every
  request takes the miss path (L1, one Redis round trip, the view, unlock);
- ``cached-l1``: ``@cached`` route, answered from the worker's L1 (view-level);
- ``front``: ``@cached(front=True)``, answered before Flask dispatches;
- ``flask-caching``: ``@cache.cached`` with a SimpleCache (also per process);
- ``ceiling``: no Flask at all, a WSGI function answering the same bytes
  built once: what the server and the load generator cost by themselves,
  so the most any answer before Flask (the front tier) can reach;
- ``ceiling-headers``: the same, sending the headers a front-tier hit sends
  (``ETag``, ``X-Cache``, ``Cache-Status``, ``Age`` and a new request id):
  the most a front-tier hit that tells the client it is one can reach.

The route returns the same JSON list of 20 flights. Every server of one
configuration runs at once and the contenders take turns (one measurement
each per round, ``--runs`` rounds, the best kept), so a noisy neighbour
slows them alike. Ratios are to ``bare`` in the same configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_caching import Cache

from flask_resilience import Resilience, cached

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # as when run as a script: harness is a sibling

from harness import Figure  # noqa: E402

from tests.services import free_port, start_redis_server  # noqa: E402

APP = "benchmarks.stack:create_app()"
CONTENDERS = (
    "bare",
    "extension",
    "uncached",
    "cached-l1",
    "front",
    "flask-caching",
    "ceiling",
    "ceiling-headers",
)
SERVERS = {
    "sync, 2 workers": ["-k", "sync", "-w", "2"],
    "sync, 4 workers": ["-k", "sync", "-w", "4"],
    "gthread, 2 workers x 4 threads": ["-k", "gthread", "-w", "2", "--threads", "4"],
}
FLIGHTS = [
    {"id": f"LH{number}", "from": "FRA", "to": "JFK", "price_eur": 300 + number} for number in range(20)
]


def create_app() -> Any:
    """The WSGI app gunicorn serves; ``STACK_CONTENDER`` says which variant."""
    contender = os.environ["STACK_CONTENDER"]
    app = Flask("stack")
    if contender in {"ceiling", "ceiling-headers"}:
        return _prebuilt(app, with_cache_headers=contender == "ceiling-headers")

    def flights() -> ResponseReturnValue:
        return jsonify(flights=FLIGHTS)

    def no_store() -> ResponseReturnValue:
        return jsonify(flights=FLIGHTS), 200, {"Cache-Control": "no-store"}

    view: Any = flights
    if contender in {"extension", "uncached", "cached-l1", "front"}:
        app.config.update(
            RESILIENCE_REDIS_URL=os.environ["STACK_REDIS_URL"],
            RESILIENCE_KEY_PREFIX=f"stack-{contender}:",
            RESILIENCE_AUDIT_ENABLED=False,
        )
        Resilience(app)
        if contender == "uncached":
            view = cached(ttl=3600)(no_store)
        if contender == "cached-l1":
            view = cached(ttl=3600)(flights)
        if contender == "front":
            view = cached(ttl=3600, front=True)(flights)
    if contender == "flask-caching":
        cache = Cache(app, config={"CACHE_TYPE": "SimpleCache"})
        view = cache.cached(timeout=3600)(flights)
    app.add_url_rule("/flights", "flights", view)
    return app


def _prebuilt(app: Flask, *, with_cache_headers: bool) -> Any:
    """A WSGI function answering ``/flights`` with bytes built once by ``app``
    (with the headers of a front-tier hit: their values as it sends them)."""
    with app.app_context():
        built = jsonify(flights=FLIGHTS)
    body = built.get_data()
    headers = [("Content-Type", built.content_type or "application/json")]
    if with_cache_headers:
        headers += [
            ("ETag", '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'),
            ("X-Cache", "HIT"),
            ("Cache-Status", "flask-resilience; hit; ttl=299; detail=front"),
            ("Age", "1"),
        ]
    headers.append(("Content-Length", str(len(body))))

    def answer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        sent = list(headers)
        if with_cache_headers:
            sent.append(("X-Request-ID", f"{random.getrandbits(128):032x}"))
        start_response("200 OK", sent)
        return [body]

    return answer


def serve(contender: str, server: list[str], redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
    process = subprocess.Popen(
        [gunicorn, *server, "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT), APP],
        env={
            **os.environ,
            "STACK_CONTENDER": contender,
            "STACK_REDIS_URL": redis_url,
            "PYTHONPATH": str(ROOT),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/flights"
    for _ in range(300):  # at most 30 s
        try:
            if requests.get(url, timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"{contender} did not start")
    with requests.Session() as session:
        for _ in range(100):  # every worker's L1 / front tier / SimpleCache filled
            session.get(url, timeout=5)
    return process, url


def measure_wrk(url: str, seconds: float, connections: int) -> tuple[float, float, float]:
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def percentile(name: str) -> float:
        value, unit = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)", output, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return rate, percentile("50"), percentile("99")


def measure_python(url: str, seconds: float, connections: int) -> tuple[float, float, float]:
    """``connections`` threads, each a bounded loop of requests for ``seconds``."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        mine: list[float] = []
        deadline = time.perf_counter() + seconds
        with requests.Session() as session:
            for _ in range(1_000_000):
                started = time.perf_counter()
                if started > deadline:
                    break
                session.get(url, timeout=10)
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    latencies.sort()
    return (
        len(latencies) / seconds,
        latencies[len(latencies) // 2] * 1e3,
        latencies[int(len(latencies) * 0.99)] * 1e3,
    )


Row = tuple[float, float, float]  # requests/s, p50 ms, p99 ms


def measure_servers(
    servers: dict[str, list[str]], seconds: float, runs: int, connections: int
) -> dict[str, dict[str, Row]]:
    """For each server configuration: every contender's best run (by requests/s)."""
    measure = measure_wrk if shutil.which("wrk") is not None else measure_python
    folder = tempfile.mkdtemp(prefix="stack-bench-redis-")
    port = free_port()
    redis_server = start_redis_server(folder, port)
    results: dict[str, dict[str, Row]] = {}
    try:
        for name, server in servers.items():
            started = [serve(contender, server, f"redis://127.0.0.1:{port}/0") for contender in CONTENDERS]
            try:
                best: dict[str, Row] = {}
                for _ in range(runs):  # contenders take turns
                    for contender, (_process, url) in zip(CONTENDERS, started, strict=True):
                        row = measure(url, seconds, connections)
                        if contender not in best or row[0] > best[contender][0]:
                            best[contender] = row
                results[name] = best
            finally:
                for process, _url in started:
                    process.send_signal(signal.SIGTERM)
                for process, _url in started:
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()
    finally:
        redis_server.kill()
        redis_server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return results


def figures(quick: bool = False) -> list[Figure]:
    """The two gunicorn rows of the issue's table (sync, 2 workers)."""
    seconds, runs = (2.0, 1) if quick else (5.0, 3)
    name = "sync, 2 workers"
    best = measure_servers({name: SERVERS[name]}, seconds, runs, connections=8)[name]
    bare = best["bare"][0]
    rows = []
    for figure, contender, limit in (
        ("stack: extension on, no decorators, gunicorn sync req/s", "extension", 0.95),
        ("stack: front-tier hit, gunicorn sync req/s", "front", 1.4),
    ):
        ratio = best[contender][0] / bare
        rows.append(
            Figure(figure, best[contender][0], bare, ratio, f">= {limit}x bare", ratio >= limit, "req/s")
        )
    ceiling = best["ceiling"][0]
    rows.append(
        Figure(
            "ceiling: gunicorn sync serving pre-built bytes (no Flask), req/s",
            ceiling,
            bare,
            ceiling / bare,
            "-",
            None,
            "req/s",
            "the most an answer given before Flask could reach here (server and wrk cost only)",
        )
    )
    floor = best["ceiling-headers"][0]
    rows.append(
        Figure(
            "floor: gunicorn sync serving pre-built bytes with a front hit's headers, req/s",
            floor,
            bare,
            floor / bare,
            "-",
            None,
            "req/s",
            "the ceiling plus ETag, X-Cache, Cache-Status, Age and a request id: what a front hit sends",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 s, one round, sync 2 workers only")
    options = parser.parse_args()
    if options.quick:
        options.seconds, options.runs = 2.0, 1
    servers = {"sync, 2 workers": SERVERS["sync, 2 workers"]} if options.quick else SERVERS
    use_wrk = shutil.which("wrk") is not None
    print(
        f"load: {'wrk' if use_wrk else 'Python threads (install wrk for comparable figures)'}, "
        f"{options.connections} connections, {options.seconds:.0f} s per measurement, "
        f"best of {options.runs} interleaved rounds; load average {os.getloadavg()[0]:.2f}"
    )
    results = measure_servers(servers, options.seconds, options.runs, options.connections)
    for name, best in results.items():
        print(f"\ngunicorn {name}")
        print(f"{'contender':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}")
        bare = best["bare"][0]
        for contender in CONTENDERS:
            rate, p50, p99 = best[contender]
            print(f"{contender:<14} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f} {rate / bare:>7.2f}x")


if __name__ == "__main__":
    main()
