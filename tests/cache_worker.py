"""A cache app run in a spawned process and driven through queues (tests only)."""

from __future__ import annotations

import functools
import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from flask_resilience import Resilience, cached
from flask_resilience.cache.layered import LayeredCache
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.clock import eventually


def race_app(redis_url: str, prefix: str) -> Flask:
    """``/item`` reads a version from Redis; with ``X-Slow`` it then waits
    until the test sets ``{prefix}test-release`` (after it invalidated)."""
    app = Flask("cache-race")
    app.config.update(
        RESILIENCE_REDIS_URL=redis_url, RESILIENCE_KEY_PREFIX=prefix, RESILIENCE_AUDIT_ENABLED=False
    )
    Resilience(app)
    raw = redis.Redis.from_url(redis_url)

    @app.get("/item")
    @cached(ttl=300, tags=["items"], prefix="api")
    def item() -> ResponseReturnValue:
        version = int(raw.get(f"{prefix}test-version") or 0)
        if "X-Slow" in request.headers:
            raw.set(f"{prefix}test-arrived", 1)
            assert eventually(lambda: raw.get(f"{prefix}test-release") is not None, 30)
        return jsonify(version=version)

    @app.get("/lang")
    @cached(ttl=300, prefix="api")
    def lang() -> ResponseReturnValue:
        runs = raw.incr(f"{prefix}test-lang-runs")
        language = request.headers.get("Accept-Language", "en")
        return jsonify(language=language, runs=runs), 200, {"Vary": "Accept-Language"}

    return app


def _serve(make_app: Callable[[], Flask], delay_listening: bool, inbox: Any, outbox: Any) -> None:
    app = make_app()
    store = get_state(app).redis
    assert store is not None
    if delay_listening:
        gate = app.config["RESILIENCE_KEY_PREFIX"] + "test-listen"
        make_pubsub: Callable[[], Any] = store.client.pubsub

        def gated() -> Any:
            eventually(lambda: store.client.get(gate) is not None, 30)
            return make_pubsub()

        store.subscriber._pubsub_factory = gated  # a worker whose subscription is slow to confirm
        outbox.put(("ready", True))
    else:
        outbox.put(("ready", store.subscriber.wait_until_listening(10)))
    client = app.test_client()
    layered = AppCache.of(app).layered
    while True:
        command, argument = inbox.get(timeout=60)
        if command == "get":
            path, headers = argument
            response = client.get(path, headers=headers)
            outbox.put(
                ("got", (response.headers["X-Cache"], response.headers["Cache-Status"], response.json))
            )
        elif command == "listening":
            outbox.put(("listening", store.subscriber.wait_until_listening(10)))
        elif command == "received":
            seen = eventually(functools.partial(_received_at_least, layered, int(argument)))
            outbox.put(("received", seen))
        else:
            get_state(app).shutdown()
            return


def _received_at_least(layered: LayeredCache, wanted: int) -> bool:
    return int(layered.stats.snapshot().get("invalidations_received", 0)) >= wanted


class Worker:
    """Another process running ``make_app()`` (a picklable callable, such as a
    ``functools.partial`` of a module-level factory), driven through queues.

    With ``delay_listening`` its pub/sub listener subscribes only once the
    test sets ``{prefix}test-listen`` in Redis.
    """

    def __init__(self, make_app: Callable[[], Flask], *, delay_listening: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.inbox: Any = context.Queue()
        self.outbox: Any = context.Queue()
        self.process = context.Process(
            target=_serve, args=(make_app, delay_listening, self.inbox, self.outbox)
        )
        self.process.start()
        assert self.answer("ready") is True

    def answer(self, kind: str, timeout: float = 30) -> Any:
        try:
            got, value = self.outbox.get(timeout=timeout)
        except queue.Empty:
            pytest.fail("the worker process did not answer")
        assert got == kind
        return value

    def send_get(self, path: str, **headers: str) -> None:
        self.inbox.put(("get", (path, headers)))

    def get(self, path: str, **headers: str) -> tuple[str, str, dict[str, Any]]:
        self.send_get(path, **headers)
        result: tuple[str, str, dict[str, Any]] = self.answer("got")
        return result

    def listening(self) -> bool:
        self.inbox.put(("listening", None))
        return bool(self.answer("listening"))

    def received(self, count: int) -> bool:
        self.inbox.put(("received", count))
        return bool(self.answer("received"))

    def stop(self) -> None:
        self.inbox.put(("stop", None))
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
