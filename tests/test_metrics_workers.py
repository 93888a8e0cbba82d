"""Metrics under gunicorn: every scrape, whichever worker serves it, shows
the fleet's counters, so they never decrease (Prometheus ``rate()`` stays right)."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.clock import eventually
from tests.gunicorn_server import Server, gunicorn

TOKEN = "metrics-test-admin-token"
# What docs/health.rst tells gunicorn users to put in gunicorn.conf.py.
GUNICORN_CONFIG = """
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""

# Counter samples and histogram samples (buckets, count, sum): none may ever go down.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@pytest.fixture
def server(redis_url: str, key_prefix: str, tmp_path: Path, metrics_dir: Path) -> Iterator[Server]:
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(GUNICORN_CONFIG)
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "RESILIENCE_ADMIN_TOKEN": TOKEN,
        "RESILIENCE_REDIS_URL": redis_url,
        "RESILIENCE_KEY_PREFIX": key_prefix,
        "RESILIENCE_AUDIT_SPILL_PATH": str(tmp_path / "spill.jsonl"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
    }
    with gunicorn(env, "--config", str(config)) as running:
        yield running


def scrape(server: Server) -> tuple[Samples, set[str]]:
    """Counter samples of one scrape (a new connection, so any worker may answer)."""
    answer = requests.get(
        f"{server.url}/api/health/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    counters: Samples = {}
    names = set()
    for family in text_string_to_metric_families(answer.text):
        names.add(family.name)
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_bucket", "_count", "_sum")):
                counters[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return counters, names


def search(server: Server, number: int) -> None:
    assert requests.get(f"{server.url}/api/flights?from=FRA&date=d{number % 4}", timeout=10).ok


def test_counters_never_decrease_across_scrapes_served_by_different_workers(
    server: Server, metrics_dir: Path
) -> None:
    scrapes: list[Samples] = []
    searches = 0
    for round_number in range(12):
        for _ in range(6):
            search(server, searches)
            searches += 1
        if round_number == 3:
            # One worker zeroes its statistics: the fleet's counters must not go down.
            reset = requests.post(
                f"{server.url}/api/health/cache/reset",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert reset.ok
        if round_number == 6:
            # A worker exits (and gunicorn replaces it): what it counted still counts.
            os.kill(server.worker_pids()[0], signal.SIGTERM)
        scrapes.append(scrape(server)[0])

    decreases = [
        (key, before[key], after.get(key))
        for before, after in itertools.pairwise(scrapes)
        for key in before
        if after.get(key, 0.0) < before[key]
    ]
    assert decreases == []

    def lookups() -> float:
        counters = scrape(server)[0]
        return sum(value for (name, _), value in counters.items() if name == "resilience_cache_lookups_total")

    # Summed over every worker, each search was counted exactly once...
    assert eventually(lambda: lookups() == searches, timeout=10), lookups()
    # The histograms are fleet-wide too: every L2 lookup (each L1 miss, in
    # every worker) was timed (L1 lookups are sampled), and the misses called
    # the flights provider through its breaker.
    final = scrape(server)[0]
    lookup_counts = "resilience_cache_lookup_duration_seconds_count"
    timed = final[(lookup_counts, (("layer", "l2"),))]
    results = {
        dict(labels).get("result"): value
        for (name, labels), value in final.items()
        if name == "resilience_cache_lookups_total"
    }
    assert timed >= results["l2_hit"] + results["miss"] > 0, (timed, results)
    assert final[("resilience_circuit_call_duration_seconds_count", (("circuit", "flights-provider"),))] >= 1
    # ...by several workers (three, and the one replacing the worker that exited).
    publishers = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
    assert len(publishers) >= 3, publishers
