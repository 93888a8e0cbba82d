"""Apps and faults for the tests of invalidations Redis missed (tests only)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_resilience import cached
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp

Server = tuple[str, "subprocess.Popen[bytes]"]


def outage_app(make_app: MakeApp, url: str, source: dict[str, int]) -> tuple[Flask, FakeClock]:
    """One "process", listening: ``/item`` (tag "items", key "api:/item") and
    ``/other`` (tag "others") cache ``source["version"]``; ``/ping`` is not
    cached. Its L2 cool-down runs on the returned clock."""
    app, _ = make_app(
        RESILIENCE_REDIS_URL=url,
        RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2,
        RESILIENCE_REDIS_CONNECT_TIMEOUT=0.2,
        RESILIENCE_AUDIT_ENABLED=False,
    )

    @app.get("/item")
    @cached(ttl=300, tags=["items"], prefix="api")
    def item() -> ResponseReturnValue:
        return jsonify(version=source["version"])

    @app.get("/other")
    @cached(ttl=300, tags=["others"], prefix="api")
    def other() -> ResponseReturnValue:
        return jsonify(version=source["version"])

    @app.get("/ping")
    def ping() -> ResponseReturnValue:  # never looks at the cache
        return "pong"

    clock = FakeClock()
    AppCache.of(app).layered.outage_clock = clock
    store = get_state(app).redis
    assert store is not None
    assert store.subscriber.wait_until_listening(10)
    return app, clock


def version_of(app: Flask) -> tuple[int, str]:
    """``/item``'s version and its X-Cache."""
    answer = app.test_client().get("/item")
    assert answer.json is not None
    return int(answer.json["version"]), answer.headers["X-Cache"]


@contextmanager
def stopped(server: subprocess.Popen[bytes]) -> Iterator[None]:
    """Redis stops answering (SIGSTOP) for the block; its data stays."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)
