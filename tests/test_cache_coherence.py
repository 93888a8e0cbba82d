"""L1 coherence and stampede protection across real processes, through real Redis."""

from __future__ import annotations

import functools
import multiprocessing
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_resilience import (
    Resilience,
    cached,
    clear_all_caches,
    invalidate_cache,
    invalidate_cache_by_pattern,
    invalidate_cache_by_tag,
)
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.cache_worker import Worker
from tests.clock import eventually


def worker_app(redis_url: str, prefix: str, counter_key: str, arrivals: int = 0) -> Flask:
    """The app each worker process runs; the view counts its runs in Redis
    and, with ``arrivals``, waits until that many requests have started."""
    app = Flask("cache-worker")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url, RESILIENCE_KEY_PREFIX=prefix, RESILIENCE_AUDIT_ENABLED=False
    )
    Resilience(app)
    counter = redis.Redis.from_url(redis_url)

    @app.get("/flights")
    @cached(ttl=300, tags=["flights"], prefix="api")
    def flights() -> ResponseReturnValue:
        runs = counter.incr(counter_key)
        eventually(lambda: int(counter.get(f"{counter_key}:arrived") or 0) >= arrivals)
        return jsonify(runs=runs, to=request.args.get("to"))

    return app


@pytest.fixture
def setup(redis_url: str, key_prefix: str, raw_redis: redis.Redis) -> Iterator[tuple[Flask, Worker]]:
    counter_key = f"{key_prefix}test-runs"
    app = worker_app(redis_url, key_prefix, counter_key)
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    worker = Worker(functools.partial(worker_app, redis_url, key_prefix, counter_key))
    yield app, worker
    worker.stop()
    app.extensions["resilience"].shutdown()
    raw_redis.delete(counter_key)


def _prime(app: Flask, worker: Worker, path: str) -> None:
    assert app.test_client().get(path).headers["X-Cache"] == "MISS"
    cache, status, _ = worker.get(path)
    assert (cache, status.endswith("detail=l2")) == ("HIT", True)
    assert worker.get(path)[1].endswith("detail=l1")  # now in the worker's own L1


@pytest.mark.parametrize(
    "invalidate",
    [
        lambda: invalidate_cache_by_tag("flights"),
        lambda: invalidate_cache("api:/flights?to=LIS"),
        lambda: invalidate_cache_by_pattern("api:/flights?to=L*"),
        lambda: invalidate_cache_by_pattern(re.compile(r"to=LIS$")),
        clear_all_caches,
    ],
    ids=["tag", "key", "glob", "regex", "clear"],
)
def test_invalidation_reaches_the_other_process_l1(
    setup: tuple[Flask, Worker], invalidate: Callable[[], object]
) -> None:
    app, worker = setup
    _prime(app, worker, "/flights?to=LIS")
    with app.app_context():
        invalidate()
    assert worker.received(1)
    cache, _, body = worker.get("/flights?to=LIS")
    assert cache == "MISS"
    assert body["runs"] == 2


def test_lost_subscription_empties_l1(setup: tuple[Flask, Worker], raw_redis: redis.Redis) -> None:
    app, _ = setup
    client = app.test_client()
    client.get("/flights")
    layered = AppCache.of(app).layered
    assert len(layered.l1) == 1
    raw_redis.client_kill_filter(_type="pubsub")
    assert eventually(lambda: len(layered.l1) == 0)
    assert layered.stats.snapshot()["errors"]["subscription_lost"] >= 1
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)  # and it resubscribes


def _racer(redis_url: str, prefix: str, counter_key: str, start: Any, results: Any) -> None:
    app = worker_app(redis_url, prefix, counter_key, arrivals=4)
    client = app.test_client()
    start.wait(30)
    # Every racer has started its request before any view may finish, so
    # without the cross-process lock all four would run the view.
    redis.Redis.from_url(redis_url).incr(f"{counter_key}:arrived")
    response = client.get("/flights?to=FAO")
    results.put((response.status_code, response.json))
    app.extensions["resilience"].shutdown()


def test_four_processes_missing_one_key_compute_once(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis
) -> None:
    context = multiprocessing.get_context("spawn")
    counter_key = f"{key_prefix}race-runs"
    start = context.Event()
    results: Any = context.Queue()
    racers = [
        context.Process(target=_racer, args=(redis_url, key_prefix, counter_key, start, results))
        for _ in range(4)
    ]
    for racer in racers:
        racer.start()
    try:
        start.set()
        answers = [results.get(timeout=60) for _ in racers]
    finally:
        for racer in racers:
            racer.join(30)
        raw_redis.delete(counter_key, f"{counter_key}:arrived")
    assert [status for status, _ in answers] == [200] * 4
    assert {body["runs"] for _, body in answers} == {1}
