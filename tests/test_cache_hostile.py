"""Regressions found by a hostile review of the cache: invalidations that must
not be lost when Redis falters, and responses a shared cache must not keep."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest
from flask import Flask, Response

from flask_resilience import cached, invalidate_cache
from flask_resilience.stores.redis import StoreUnavailableError
from tests.conftest import MakeApp
from tests.services import free_port, start_redis_server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    server = start_redis_server(str(tmp_path), port)
    try:
        yield f"redis://127.0.0.1:{port}/0", server
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGCONT)
            server.kill()
        server.wait(10)


RUNS = count(1)  # shared by every app of a test: each computed value is unique


def _app(make_app: MakeApp, url: str) -> Flask:
    app, _ = make_app(RESILIENCE_REDIS_URL=url, RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2)

    @app.get("/price")
    @cached(60)
    def price() -> Response:
        return Response(f"price-{next(RUNS)}")

    return app


def test_key_invalidation_right_after_a_redis_hiccup_still_reaches_redis(
    make_app: MakeApp, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = own_redis
    writer, reader = _app(make_app, url), _app(make_app, url)
    stale = reader.test_client().get("/price").get_data()  # stored in L2
    os.kill(server.pid, signal.SIGSTOP)  # Redis stops answering for a moment
    writer.test_client().get("/price")  # times out: the writer skips L2 for a while
    os.kill(server.pid, signal.SIGCONT)
    with writer.app_context():
        invalidate_cache("cache:/price")  # Redis answers again: this must reach it
    fresh = _app(make_app, url)  # another process, with an empty L1
    assert fresh.test_client().get("/price").get_data() != stale


def test_key_invalidation_that_cannot_reach_redis_raises(
    make_app: MakeApp, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = own_redis
    writer = _app(make_app, url)
    writer.test_client().get("/price")
    server.kill()
    server.wait(10)
    with writer.app_context(), pytest.raises(StoreUnavailableError):
        invalidate_cache("cache:/price")  # the caller must learn the entry may survive
