"""Requests/s and p50/p99 latency of whole gunicorn stacks over loopback HTTP.

Run: ``pip install -e ".[test]" flask-caching && python benchmarks/stack.py``
(``--seconds`` per measurement, ``--workers 2 4``). The load comes from
``wrk`` when it is on PATH (Debian: ``apt-get install wrk``), else from a
bounded Python load generator (threads, keep-alive off, fixed duration):
wrk's figures are the ones to compare with other servers, the Python
generator's only with each other (it costs more CPU than the server).

Contenders, each under ``gunicorn -k sync -w N`` against a throwaway
redis-server (the extension's store, as in production):

- ``bare``: Flask, no extension;
- ``extension``: ``Resilience(app)`` with no decorator on the route;
- ``cached-l1``: ``@cached`` route, answered from the worker's L1;
- ``flask-caching``: ``@cache.cached`` with a SimpleCache (also per process).

The route returns the same JSON list of 20 flights. Ratios are to ``bare``
at the same worker count. The machine's cores are shared with the load
generator: run it 2-3 times and read the range.
"""

from __future__ import annotations

import argparse
import os
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

from tests.services import free_port, start_redis_server  # noqa: E402

APP = "benchmarks.stack:create_app()"
CONTENDERS = ("bare", "extension", "cached-l1", "flask-caching")
FLIGHTS = [
    {"id": f"LH{number}", "from": "FRA", "to": "JFK", "price_eur": 300 + number} for number in range(20)
]


def create_app() -> Flask:
    """The app gunicorn serves; ``STACK_CONTENDER`` says which variant."""
    contender = os.environ["STACK_CONTENDER"]
    app = Flask("stack")

    def flights() -> ResponseReturnValue:
        return jsonify(flights=FLIGHTS)

    view: Any = flights
    if contender in {"extension", "cached-l1"}:
        app.config.update(RESILIENCE_REDIS_URL=os.environ["STACK_REDIS_URL"], RESILIENCE_KEY_PREFIX="stack:")
        Resilience(app)
        if contender == "cached-l1":
            view = cached(ttl=3600)(flights)
    if contender == "flask-caching":
        cache = Cache(app, config={"CACHE_TYPE": "SimpleCache"})
        view = cache.cached(timeout=3600)(flights)
    app.add_url_rule("/flights", "flights", view)
    return app


def serve(contender: str, workers: int, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
    process = subprocess.Popen(
        [gunicorn, "-k", "sync", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT), APP],
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
    for _ in range(300):
        try:
            if requests.get(url, timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"{contender} did not start")
    for _ in range(workers * 20):  # every worker's L1 / SimpleCache filled
        requests.get(url, timeout=5)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--connections", type=int, default=8)
    options = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    measure = measure_wrk if use_wrk else measure_python
    print(
        f"load: {'wrk' if use_wrk else 'Python threads (install wrk for comparable figures)'}, "
        f"{options.connections} connections, {options.seconds:.0f} s per measurement"
    )
    folder = tempfile.mkdtemp(prefix="stack-bench-redis-")
    port = free_port()
    redis_server = start_redis_server(folder, port)
    try:
        for workers in options.workers:
            print(f"\n{workers} sync workers")
            print(f"{'contender':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8}")
            bare_rate = 0.0
            for contender in CONTENDERS:
                process, url = serve(contender, workers, f"redis://127.0.0.1:{port}/0")
                try:
                    rate, p50, p99 = measure(url, options.seconds, options.connections)
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(30)
                bare_rate = bare_rate or rate
                print(f"{contender:<14} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f} {rate / bare_rate:>7.2f}x")
    finally:
        redis_server.kill()
        redis_server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
