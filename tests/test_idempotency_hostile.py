"""Regressions found by a hostile review of idempotency: process copies that
must not outlive an invalidation racing the read that made them, and a Redis
that may evict records."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, jsonify, request
from flask.typing import ResponseReturnValue

from flask_resilience import current_principal, idempotent, invalidate_idempotency_key
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp
from tests.services import free_port, start_redis_server

RUNS = count(1)


def _app(make_app: MakeApp, redis_url: str) -> Flask:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)

    @app.post("/pay")
    @idempotent()
    def pay() -> ResponseReturnValue:
        return jsonify(run=next(RUNS))

    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening()
    return app


def _after(method: Callable[..., Any], then: Callable[[], None]) -> Callable[..., Any]:
    """``method``, followed (once) by ``then``: another thread's work scheduled
    at the exact point the race needs it."""
    pending = [then]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        while pending:
            pending.pop()()
        return result

    return wrapped


def test_a_replay_read_before_an_invalidation_leaves_no_copy_behind(
    make_app: MakeApp, redis_url: str
) -> None:
    app = _app(make_app, redis_url)
    client = app.test_client()
    headers = {"Idempotency-Key": "k-race"}
    first = client.post("/pay", json={}, headers=headers).json
    service = AppIdempotency.of(app)
    service.memory.clear()  # a process that has not replayed this key yet

    def invalidate() -> None:
        with app.app_context():
            assert invalidate_idempotency_key("k-race") == 1

    # A retry reads the completed record; the key is invalidated before it keeps a copy.
    service.records.claim = _after(service.records.claim, invalidate)  # type: ignore[method-assign]
    assert client.post("/pay", json={}, headers=headers).json == first
    # The record is gone everywhere: the next request runs the view again.
    again = client.post("/pay", json={}, headers=headers)
    assert again.headers["X-Idempotency-Replayed"] == "false"
    assert again.json != first


def test_a_completion_racing_an_invalidation_leaves_no_copy_behind(make_app: MakeApp, redis_url: str) -> None:
    app = _app(make_app, redis_url)
    client = app.test_client()
    headers = {"Idempotency-Key": "k-race-2"}
    service = AppIdempotency.of(app)

    def invalidate() -> None:
        with app.app_context():
            assert invalidate_idempotency_key("k-race-2") == 1

    service.records.complete = _after(service.records.complete, invalidate)  # type: ignore[method-assign]
    first = client.post("/pay", json={}, headers=headers).json
    again = client.post("/pay", json={}, headers=headers)
    assert again.headers["X-Idempotency-Replayed"] == "false"
    assert again.json != first


@pytest.mark.parametrize(
    ("policy", "warned"), [("volatile-lru", True), ("allkeys-lru", True), ("noeviction", False)]
)
def test_a_redis_that_may_evict_idempotency_records_is_warned_about(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture, policy: str, warned: bool
) -> None:
    # Every record has a TTL, so volatile-* policies evict them as readily as
    # allkeys-*: a retry then runs the request a second time.
    port = free_port()
    server = start_redis_server(str(tmp_path), port, "--maxmemory", "50mb", "--maxmemory-policy", policy)
    try:
        with caplog.at_level(logging.WARNING, logger="flask_resilience.idempotency"):
            make_app(RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{port}/0")
        ours = [r.getMessage() for r in caplog.records if r.name == "flask_resilience.idempotency"]
        assert any(f"maxmemory-policy is {policy}" in message for message in ours) is warned
    finally:
        server.kill()
        server.wait(10)


def test_a_principal_asked_for_before_the_apps_auth_hook_is_not_frozen_as_anonymous(
    make_app: MakeApp,
) -> None:
    # An early hook (request logging, an audit of the attempt) asks who is
    # calling before the app's own auth hook has set g.user.
    app, extension = make_app()

    @extension.principal_loader
    def load() -> str | None:
        user: str | None = g.get("user")
        return user

    @app.before_request
    def log_caller() -> None:
        current_principal()

    @app.before_request
    def authenticate() -> None:
        g.user = request.headers.get("X-User")

    @app.post("/orders")
    @idempotent()
    def orders() -> ResponseReturnValue:
        return jsonify(owner=g.user, run=next(RUNS))

    client = app.test_client()
    alice = client.post("/orders", json={}, headers={"Idempotency-Key": "o-1", "X-User": "alice"})
    bob = client.post("/orders", json={}, headers={"Idempotency-Key": "o-1", "X-User": "bob"})
    assert alice.json is not None and alice.json["owner"] == "alice"
    assert bob.json is not None and bob.json["owner"] == "bob"
    assert bob.headers["X-Idempotency-Replayed"] == "false"


def test_waiting_for_a_running_request_is_bounded_when_the_wall_clock_steps_back(make_app: MakeApp) -> None:
    # wait= is real elapsed time: a wall clock stepped back (NTP) or frozen
    # must not keep a duplicate request, and its worker, waiting.
    app, _ = make_app()
    started, release = threading.Event(), threading.Event()

    @app.post("/slow")
    @idempotent(wait=50)
    def slow() -> ResponseReturnValue:
        started.set()
        release.wait(10)
        return jsonify(run=next(RUNS))

    AppIdempotency.of(app).clock = FakeClock(1_700_000_000)  # never moves
    headers = {"Idempotency-Key": "slow-1"}
    first = threading.Thread(target=lambda: app.test_client().post("/slow", json={}, headers=headers))
    first.start()
    assert started.wait(10)
    answers: list[int] = []
    duplicate = threading.Thread(
        target=lambda: answers.append(app.test_client().post("/slow", json={}, headers=headers).status_code),
        daemon=True,  # on the defect it never returns
    )
    duplicate.start()
    duplicate.join(5)
    release.set()
    first.join(10)
    assert answers == [409]
