"""No stale value after an invalidation (threads and processes), Vary across
processes, and no L1 entry before a process listens for invalidations."""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from flask_resilience import (
    clear_all_caches,
    invalidate_cache,
    invalidate_cache_by_pattern,
    invalidate_cache_by_tag,
)
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.cache_worker import Worker, race_app
from tests.clock import eventually
from tests.services import free_port, start_redis_server

INVALIDATIONS: list[Callable[[], object]] = [
    lambda: invalidate_cache_by_tag("items"),
    lambda: invalidate_cache("api:/item"),
    lambda: invalidate_cache_by_pattern("api:/it*"),
    lambda: invalidate_cache_by_pattern(re.compile(r"/item$")),
    clear_all_caches,
]
KINDS = ["tag", "key", "glob", "regex", "clear"]


@pytest.fixture
def cleanup(raw_redis: redis.Redis, key_prefix: str) -> Iterator[list[Flask]]:
    apps: list[Flask] = []
    yield apps
    for app in apps:
        get_state(app).shutdown()
    for key in raw_redis.scan_iter(match=f"{key_prefix}test-*"):
        raw_redis.delete(key)


def _listening(app: Flask) -> Flask:
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    return app


@pytest.fixture
def pair(redis_url: str, key_prefix: str, cleanup: list[Flask]) -> Iterator[tuple[Flask, Worker]]:
    """This process's app and a spawned worker running the same app."""
    app = _listening(race_app(redis_url, key_prefix))
    cleanup.append(app)
    worker = Worker(functools.partial(race_app, redis_url, key_prefix))
    yield app, worker
    worker.stop()


# -- 2. a miss that began before an invalidation stores nothing current ----------------------


def _race(
    app: Flask, raw: redis.Redis, prefix: str, invalidate: Callable[[], object], miss: Callable[[], Any]
) -> None:
    """A slow miss (``miss()`` starts it, returns a way to its body) reads
    version 3; a write and its invalidation land while it computes."""
    raw.set(f"{prefix}test-version", 3)
    body_of_miss = miss()
    assert eventually(lambda: raw.get(f"{prefix}test-arrived") is not None, 30)
    raw.set(f"{prefix}test-version", 4)  # the write ...
    with app.app_context():
        invalidate()  # ... and its invalidation, while the miss still computes version 3
    raw.set(f"{prefix}test-release", 1)
    assert body_of_miss() == {"version": 3}
    after = app.test_client().get("/item")
    assert (after.headers["X-Cache"], after.json) == ("MISS", {"version": 4})  # nothing stale stored


@pytest.mark.parametrize("invalidate", INVALIDATIONS, ids=KINDS)
def test_slow_miss_racing_an_invalidation_in_threads(
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
    cleanup: list[Flask],
    invalidate: Callable[[], object],
) -> None:
    app = _listening(race_app(redis_url, key_prefix))
    cleanup.append(app)
    answers: list[Any] = []

    def miss() -> Callable[[], Any]:
        slow = threading.Thread(
            target=lambda: answers.append(app.test_client().get("/item", headers={"X-Slow": "1"}))
        )
        slow.start()

        def body() -> Any:
            slow.join(30)
            return answers[0].json

        return body

    _race(app, raw_redis, key_prefix, invalidate, miss)


@pytest.mark.parametrize("invalidate", INVALIDATIONS, ids=KINDS)
def test_slow_miss_in_another_process_racing_an_invalidation(
    key_prefix: str, raw_redis: redis.Redis, pair: tuple[Flask, Worker], invalidate: Callable[[], object]
) -> None:
    app, worker = pair

    def miss() -> Callable[[], Any]:
        worker.send_get("/item", **{"X-Slow": "1"})
        return lambda: worker.answer("got")[2]

    _race(app, raw_redis, key_prefix, invalidate, miss)
    assert worker.get("/item")[2] == {"version": 4}  # nor does the worker's L1


# -- 3. Vary: served from L2 in another process, invalidated in every process -----------------


def test_vary_entry_is_a_hit_from_l2_in_another_process(pair: tuple[Flask, Worker]) -> None:
    app, worker = pair
    stored = app.test_client().get("/lang", headers={"Accept-Language": "pt"})
    assert stored.headers["X-Cache"] == "MISS"
    cache, status, body = worker.get("/lang", **{"Accept-Language": "pt"})
    assert (cache, status.endswith("detail=l2"), body) == ("HIT", True, stored.json)
    assert worker.get("/lang", **{"Accept-Language": "en"})[2]["language"] == "en"


def test_invalidating_a_key_drops_every_vary_variant_in_every_process(pair: tuple[Flask, Worker]) -> None:
    app, worker = pair
    for language in ("pt", "en"):
        app.test_client().get("/lang", headers={"Accept-Language": language})
        worker.get("/lang", **{"Accept-Language": language})
        assert worker.get("/lang", **{"Accept-Language": language})[1].endswith("detail=l1")
    with app.app_context():
        invalidate_cache("api:/lang")
    assert worker.received(1)
    for language in ("pt", "en"):
        assert worker.get("/lang", **{"Accept-Language": language})[0] == "MISS"


# -- issue 18: no L1 entry before the process listens ---------------------------------------------


def _gate_listener(app: Flask) -> threading.Event:
    """Hold back ``app``'s pub/sub subscription until the returned event is set."""
    store = get_state(app).redis
    assert store is not None
    gate = threading.Event()
    make_pubsub: Callable[[], Any] = store.client.pubsub

    def gated() -> Any:
        gate.wait(30)
        return make_pubsub()

    store.subscriber._pubsub_factory = gated
    return gate


@pytest.mark.parametrize("invalidate", INVALIDATIONS[:2], ids=KINDS[:2])
def test_second_instance_never_serves_what_it_stored_before_listening(
    redis_url: str,
    key_prefix: str,
    raw_redis: redis.Redis,
    cleanup: list[Flask],
    invalidate: Callable[[], object],
) -> None:
    first = _listening(race_app(redis_url, key_prefix))
    second = race_app(redis_url, key_prefix)
    cleanup.extend([first, second])
    gate = _gate_listener(second)
    raw_redis.set(f"{key_prefix}test-version", 1)
    first.test_client().get("/item")
    early = second.test_client().get("/item")
    assert (early.headers["X-Cache"], early.json) == ("HIT", {"version": 1})  # from L2
    raw_redis.set(f"{key_prefix}test-version", 2)
    with first.app_context():
        invalidate()  # published before `second` listens: lost for it
    gate.set()
    _listening(second)
    later = second.test_client().get("/item")
    assert later.json == {"version": 2}
    assert AppCache.of(second).stats()["l1_unsynced"] >= 1


def test_spawned_worker_never_serves_what_it_stored_before_listening(
    redis_url: str, key_prefix: str, raw_redis: redis.Redis, cleanup: list[Flask]
) -> None:
    app = _listening(race_app(redis_url, key_prefix))
    cleanup.append(app)
    worker = Worker(functools.partial(race_app, redis_url, key_prefix), delay_listening=True)
    try:
        raw_redis.set(f"{key_prefix}test-version", 1)
        app.test_client().get("/item")
        assert worker.get("/item")[2] == {"version": 1}
        raw_redis.set(f"{key_prefix}test-version", 2)
        with app.app_context():
            invalidate_cache_by_tag("items")
        raw_redis.set(f"{key_prefix}test-listen", 1)
        assert worker.listening()
        assert worker.get("/item")[2] == {"version": 2}
    finally:
        worker.stop()


def test_after_a_killed_pubsub_connection_nothing_stale_is_served(
    tmp_path: Any, key_prefix: str, cleanup: list[Flask]
) -> None:
    port = free_port()
    server = start_redis_server(str(tmp_path), port)  # CLIENT KILL must not reach shared servers
    url = f"redis://127.0.0.1:{port}/0"
    raw = redis.Redis.from_url(url)
    try:
        first = _listening(race_app(url, key_prefix))
        second = _listening(race_app(url, key_prefix))
        cleanup.extend([first, second])
        raw.set(f"{key_prefix}test-version", 1)
        second.test_client().get("/item")
        assert second.test_client().get("/item").headers["Cache-Status"].endswith("detail=l1")
        raw.client_kill_filter(_type="pubsub")
        store = get_state(second).redis
        assert store is not None
        # What was published before the listener noticed the loss is lost to it
        # (pub/sub is at-most-once); the gate covers the time from the notice on.
        assert eventually(lambda: store.subscriber.disconnects >= 1)
        during = second.test_client().get("/item")  # while resubscribing: L2, not L1
        assert during.json == {"version": 1}
        raw.set(f"{key_prefix}test-version", 2)
        published_at = time.monotonic()
        with first.app_context():
            invalidate_cache("api:/item")
        _listening(second)
        layered = AppCache.of(second).layered

        def settled() -> bool:
            # Delivered (pub/sub is asynchronous), or lost in a gap that ended after it.
            received = int(layered.stats.snapshot().get("invalidations_received", 0))
            return received >= 1 or (store.subscriber.listening_since() or 0.0) > published_at

        assert eventually(settled)
        assert second.test_client().get("/item").json == {"version": 2}
    finally:
        for app in cleanup:
            get_state(app).shutdown()
        cleanup.clear()
        server.kill()
        server.wait(10)
