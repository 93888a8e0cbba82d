"""Hit-for-pass: a view whose responses the cache may not keep (private,
no-store, Set-Cookie, an error status, too large) must not make concurrent
requests queue behind one another.

Stampede protection lets one request compute a missing entry while the
others wait for it. When the response cannot be stored, the waiters find
nothing and each computes in turn (in-process single flight, then the
cross-process lock with its 20 ms polling): N concurrent requests take N
times the view's time. After one refusal the cache remembers, for a short
while, that the resource is not stored (a *pass* marker, in L1 and L2),
and requests for it skip both locks, like a reverse proxy's hit-for-pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask, Response, jsonify

from flask_resilience import cached, invalidate_cache_by_tag
from flask_resilience.cache.service import AppCache
from flask_resilience.state import get_state
from tests.conftest import MakeApp

TOGETHER = 3


def _app(make_app: MakeApp, barrier: threading.Barrier, control: dict[str, str], **config: Any) -> Flask:
    """``/me`` answers with ``control["cc"]`` as its Cache-Control; with
    ``control["wait"]`` set, each run waits at ``barrier`` for the others."""
    # Waiters give up on a lock after its timeout: longer than the barrier's, so
    # a request queued behind another breaks the barrier instead of passing late.
    app, _ = make_app(RESILIENCE_AUDIT_ENABLED=False, RESILIENCE_CACHE_LOCK_TIMEOUT=60, **config)

    @app.get("/me")
    @cached(ttl=60, tags=["me"], prefix="api")
    def me() -> Response:
        if control.get("wait"):
            barrier.wait()  # raises BrokenBarrierError (a 500) unless all arrive together
        response = jsonify(ok=True)
        response.headers["Cache-Control"] = control["cc"]
        return response

    return app


def _together(calls: list[Callable[[], int]]) -> list[int]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.mark.parametrize("layers", ["redis", "embedded"])
def test_concurrent_requests_to_a_never_stored_view_run_together(
    make_app: MakeApp, redis_url: str, layers: str
) -> None:
    config = {"RESILIENCE_REDIS_URL": redis_url} if layers == "redis" else {}
    barrier = threading.Barrier(TOGETHER, timeout=10)
    control = {"cc": "private"}
    app = _app(make_app, barrier, control, **config)
    client = app.test_client
    first = client().get("/me")
    assert "not-stored-private" in first.headers["Cache-Status"]  # the refusal leaves a pass marker
    control["wait"] = "1"
    statuses = _together([lambda: client().get("/me").status_code for _ in range(TOGETHER)])
    assert statuses == [200] * TOGETHER, "requests waited for each other on a view that is never stored"


def test_processes_do_not_queue_on_the_lock_of_a_never_stored_view(make_app: MakeApp, redis_url: str) -> None:
    """Two apps on one Redis (two processes): only the cross-process lock is shared."""
    barrier = threading.Barrier(2, timeout=10)
    control = {"cc": "no-store"}
    first, second = (_app(make_app, barrier, control, RESILIENCE_REDIS_URL=redis_url) for _ in range(2))
    assert first.test_client().get("/me").status_code == 200  # refused: the marker goes to L2 too
    control["wait"] = "1"
    statuses = _together(
        [
            lambda: first.test_client().get("/me").status_code,
            lambda: second.test_client().get("/me").status_code,
        ]
    )
    assert statuses == [200, 200], "the second process queued behind the first's lock"


@pytest.mark.parametrize("listening", [True, False], ids=["marker-in-l1", "marker-in-l2"])
def test_a_pass_marker_never_keeps_a_storable_response_out(
    make_app: MakeApp, redis_url: str, listening: bool
) -> None:
    control = {"cc": "private"}
    app = _app(make_app, threading.Barrier(1), control, RESILIENCE_REDIS_URL=redis_url)
    if listening:  # L1 is used (and holds the marker) once the process listens
        store = get_state(app).redis
        assert store is not None and store.subscriber.wait_until_listening(10)
    client = app.test_client()
    client.get("/me")
    control["cc"] = "public, max-age=60"
    details = [client.get("/me").headers["Cache-Status"].rsplit(";", 1)[-1].strip() for _ in range(2)]
    if listening:
        # From L1 the view ran without reading L2 (nothing to store under): the marker ends, the next stores.
        assert details == ["detail=pass", "stored"]
    else:
        assert details[0] == "stored"  # from L2, with the generation read before the view ran
    assert client.get("/me").headers["X-Cache"] == "HIT"


def test_a_pass_marker_is_never_served_and_goes_with_its_tag(make_app: MakeApp, redis_url: str) -> None:
    control = {"cc": "private"}
    app = _app(make_app, threading.Barrier(1), control, RESILIENCE_REDIS_URL=redis_url)
    client = app.test_client()
    for _ in range(3):
        answer = client.get("/me")
        assert answer.json == {"ok": True}
        assert answer.headers["X-Cache"] == "MISS"
    layered = AppCache.of(app).layered
    assert any(entry.kind == "pass" for entry, _ in _l1_values(layered))
    with app.app_context():
        invalidate_cache_by_tag("me")
    assert not any(
        layered.is_current(entry, layered.clock(), layered.trusted_since())
        for entry, _ in _l1_values(layered)
        if entry.kind == "pass"
    )


def _l1_values(layered: Any) -> list[Any]:
    stored = layered.l1.keys()
    return [value for value in (layered.l1.get(key) for key in stored) if value is not None]
