"""Idempotency's contract: scoped after the app's auth, the view's outcome is
the key's outcome, fingerprints that say what the request meant, copies that
honour each record's expiry."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Blueprint, Flask, Response, abort, g, jsonify, redirect, request
from flask.typing import ResponseReturnValue

from flask_resilience import Resilience, idempotent, invalidate_idempotency_key
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.signals import idempotency_conflict, idempotency_mismatch
from flask_resilience.state import get_state
from tests.clock import FakeClock, eventually
from tests.conftest import MakeApp

USERS = {"Bearer alice": "alice", "Bearer bob": "bob"}


def key(value: str = "order-1001", **extra: str) -> dict[str, str]:
    return {"Idempotency-Key": value, **extra}


# -- §1 protection runs after the app's own before_request hooks ---------------------------


def _authenticate() -> ResponseReturnValue | None:
    user = USERS.get(request.headers.get("Authorization", ""))
    if user is None:
        return jsonify(error="unauthorized"), 401
    g.user = user
    return None


def _payments_app(make_app: MakeApp, redis_url: str, *, blueprint: bool) -> tuple[Flask, Counter[str]]:
    extension = Resilience()
    extension.principal_loader(lambda: g.user if "user" in g else None)
    runs: Counter[str] = Counter()
    payments = Blueprint("payments", __name__, url_prefix="/api/payments")

    @payments.post("/")
    def pay() -> ResponseReturnValue:
        runs[g.user] += 1
        return jsonify(user=g.user, receipt=f"{g.user}-{runs[g.user]}"), 201

    if blueprint:
        extension.idempotent_blueprint(payments)  # registered before the blueprint's own auth hook
        payments.before_request(_authenticate)
    else:
        extension.idempotent_blueprint("/api/payments")
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url)
    if not blueprint:
        app.before_request(_authenticate)  # the app's hook, registered after init_app
    app.register_blueprint(payments)
    return app, runs


@pytest.mark.parametrize("blueprint", [False, True], ids=["prefix+app-hook", "blueprint+blueprint-hook"])
def test_protection_runs_after_the_apps_authentication(
    make_app: MakeApp, redis_url: str, blueprint: bool
) -> None:
    app, runs = _payments_app(make_app, redis_url, blueprint=blueprint)
    client = app.test_client()
    alice = client.post("/api/payments/", headers=key(Authorization="Bearer alice"))
    assert (alice.status_code, alice.headers["X-Idempotency-Replayed"]) == (201, "false")
    anonymous = client.post("/api/payments/", headers=key())
    assert anonymous.status_code == 401
    assert "X-Idempotency-Replayed" not in anonymous.headers
    bob = client.post("/api/payments/", headers=key(Authorization="Bearer bob"))
    assert (bob.status_code, bob.headers["X-Idempotency-Replayed"]) == (201, "false")
    assert bob.json == {"user": "bob", "receipt": "bob-1"}
    again = client.post("/api/payments/", headers=key(Authorization="Bearer alice"))
    assert (again.headers["X-Idempotency-Replayed"], again.json) == ("true", alice.json)
    assert runs == {"alice": 1, "bob": 1}


def test_flask_login_user_scopes_prefix_protection(make_app: MakeApp, redis_url: str) -> None:
    from flask_login import LoginManager, UserMixin, login_user

    class User(UserMixin):  # type: ignore[misc]
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    extension = Resilience()
    extension.idempotent_blueprint("/api/payments")
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url)
    LoginManager(app)
    runs: list[str] = []

    @app.before_request
    def login_from_header() -> ResponseReturnValue | None:
        user = USERS.get(request.headers.get("Authorization", ""))
        if user is None:
            return jsonify(error="unauthorized"), 401
        login_user(User(user))
        return None

    @app.post("/api/payments")
    def pay() -> ResponseReturnValue:
        runs.append(request.headers["Authorization"])
        return jsonify(n=len(runs)), 201

    client = app.test_client()
    client.post("/api/payments", headers=key(Authorization="Bearer alice"))
    assert client.post("/api/payments", headers=key()).status_code == 401
    bob = client.post("/api/payments", headers=key(Authorization="Bearer bob"))
    assert bob.headers["X-Idempotency-Replayed"] == "false"
    assert len(runs) == 2


# -- §2 once the view started, its outcome is the key's outcome ------------------------------


def _outcome_app(make_app: MakeApp, redis_url: str, **config: Any) -> tuple[Flask, Counter[str]]:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, PROPAGATE_EXCEPTIONS=False, **config)
    runs: Counter[str] = Counter()

    @app.post("/charge-then-crash")
    @idempotent()
    def crash() -> ResponseReturnValue:
        runs["crash"] += 1  # the charge happened
        raise TimeoutError("the payment provider timed out after charging")

    @app.post("/charge-then-503")
    @idempotent()
    def unavailable() -> ResponseReturnValue:
        runs["503"] += 1
        return jsonify(error="provider unavailable"), 503

    @app.post("/charge-big")
    @idempotent()
    def big() -> ResponseReturnValue:
        runs["big"] += 1
        return "x" * 100, 201

    @app.post("/charge-stream")
    @idempotent()
    def stream() -> ResponseReturnValue:
        runs["stream"] += 1
        return Response(iter(["a", "b"]))

    @app.post("/rerunnable")
    @idempotent(on_error="release")
    def rerunnable() -> ResponseReturnValue:
        runs["rerunnable"] += 1
        raise TimeoutError("safe to run again")

    @app.post("/post-redirect-get")
    @idempotent()
    def post_redirect_get() -> ResponseReturnValue:
        runs["redirect"] += 1
        return redirect(f"/orders/{runs['redirect']}", 303)

    @app.post("/async-crash")
    @idempotent()
    async def async_crash() -> ResponseReturnValue:
        runs["async"] += 1
        raise TimeoutError("async view timed out")

    return app, runs


def test_an_exception_after_the_side_effect_is_stored_and_replayed(make_app: MakeApp, redis_url: str) -> None:
    app, runs = _outcome_app(make_app, redis_url, RESILIENCE_IDEMPOTENCY_MAX_BODY_BYTES=50)
    client = app.test_client()
    first = client.post("/charge-then-crash", headers=key())
    assert first.status_code == 500
    for _ in range(3):
        retry = client.post("/charge-then-crash", headers=key())
        assert (retry.status_code, retry.headers["X-Idempotency-Replayed"]) == (500, "true")
        assert retry.content_type == "application/problem+json"
    assert runs["crash"] == 1
    for _ in range(2):
        assert client.post("/async-crash", headers=key()).status_code == 500
    assert runs["async"] == 1


@pytest.mark.parametrize(
    ("path", "status"), [("/charge-then-503", 503), ("/charge-big", 201), ("/charge-stream", 200)]
)
def test_5xx_and_unkeepable_responses_never_run_twice(
    make_app: MakeApp, redis_url: str, path: str, status: int
) -> None:
    app, runs = _outcome_app(make_app, redis_url, RESILIENCE_IDEMPOTENCY_MAX_BODY_BYTES=50)
    client = app.test_client()
    assert client.post(path, headers=key()).status_code == status
    retry = client.post(path, headers=key())
    assert retry.headers["X-Idempotency-Replayed"] == "true"
    if status != 503:  # the response could not be kept: a problem says so
        assert retry.status_code == 413
        assert retry.json is not None and retry.json["type"].endswith("idempotency-response-not-kept")
    assert sum(runs.values()) == 1


def test_on_error_release_opts_back_into_running_again(make_app: MakeApp, redis_url: str) -> None:
    app, runs = _outcome_app(make_app, redis_url)
    client = app.test_client()
    assert [client.post("/rerunnable", headers=key()).status_code for _ in range(2)] == [500, 500]
    assert runs["rerunnable"] == 2
    released, _ = _outcome_app(make_app, redis_url, RESILIENCE_IDEMPOTENCY_ON_ERROR="release")
    other = released.test_client()
    for _ in range(2):
        other.post("/charge-then-crash", headers=key("other"))
    assert runs["rerunnable"] == 2


def test_redirects_are_stored_and_replayed_with_location(make_app: MakeApp, redis_url: str) -> None:
    app, runs = _outcome_app(make_app, redis_url)
    client = app.test_client()
    first = client.post("/post-redirect-get", headers=key())
    retry = client.post("/post-redirect-get", headers=key())
    assert (retry.status_code, retry.headers["Location"]) == (303, first.headers["Location"])
    assert retry.headers["X-Idempotency-Replayed"] == "true"
    assert runs["redirect"] == 1


def test_key_validation_refusals_are_never_stored(make_app: MakeApp, redis_url: str) -> None:
    app, runs = _outcome_app(make_app, redis_url)
    client = app.test_client()
    assert client.post("/charge-then-503", headers=key(" padded")).status_code == 400
    assert client.post("/charge-then-503", headers=key("padded")).status_code == 503
    assert runs["503"] == 1


# -- §2 leases live as long as the request ---------------------------------------------------


@pytest.fixture
def long_view(
    make_app: MakeApp, redis_url: str
) -> Iterator[tuple[Flask, threading.Event, threading.Event, list[int]]]:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_IDEMPOTENCY_LEASE=0.3)
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    @app.post("/slow-charge")
    @idempotent()
    def slow_charge() -> ResponseReturnValue:
        runs.append(1)
        entered.set()
        release.wait(20)
        return jsonify(runs=len(runs)), 201

    yield app, entered, release, runs
    release.set()


def test_a_live_request_keeps_its_key_longer_than_three_leases(
    long_view: tuple[Flask, threading.Event, threading.Event, list[int]],
    raw_redis: redis.Redis,
    key_prefix: str,
) -> None:
    app, entered, release, runs = long_view
    results: list[Any] = []

    def post() -> None:
        results.append(app.test_client().post("/slow-charge", headers=key()))

    first = threading.Thread(target=post)
    first.start()
    try:
        assert entered.wait(10)
        (record,) = list(raw_redis.scan_iter(match=f"{key_prefix}idem:*"))
        renewals = [0]
        last = [int(raw_redis.pttl(record))]

        def renewed_four_times() -> bool:
            left = int(raw_redis.pttl(record))
            if left > last[0]:
                renewals[0] += 1
            last[0] = left
            return renewals[0] >= 4  # more than three leases (0.3 s each) have passed

        assert eventually(renewed_four_times, timeout=5)
        assert app.test_client().post("/slow-charge", headers=key()).status_code == 409
    finally:
        release.set()
        first.join(10)
    assert results[0].status_code == 201
    third = app.test_client().post("/slow-charge", headers=key())
    assert (third.status_code, third.headers["X-Idempotency-Replayed"]) == (201, "true")
    assert runs == [1]
    assert AppIdempotency.of(app).stats()["lease_renewals"] >= 4


# -- §2 Redis failing after the view ran -------------------------------------------------------


def test_completion_is_retried_when_redis_fails_after_the_view_ran(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = throwaway_redis
    app, _ = make_app(
        RESILIENCE_REDIS_URL=url, RESILIENCE_REDIS_SOCKET_TIMEOUT=0.2, RESILIENCE_IDEMPOTENCY_LEASE=30
    )
    runs: list[int] = []

    @app.post("/charge")
    @idempotent()
    def charge() -> ResponseReturnValue:
        runs.append(1)
        os.kill(server.pid, signal.SIGSTOP)  # Redis stops answering right after the charge
        return jsonify(charged=True), 201

    client = app.test_client()
    try:
        assert client.post("/charge", headers=key()).status_code == 201
    finally:
        os.kill(server.pid, signal.SIGCONT)
    service = AppIdempotency.of(app)

    def replayed() -> bool:
        response = client.post("/charge", headers=key())
        return response.status_code == 201 and response.headers.get("X-Idempotency-Replayed") == "true"

    assert eventually(replayed, timeout=10)
    assert runs == [1]
    assert service.stats()["completion_retries"] >= 1


def test_init_app_warns_when_redis_does_not_persist(
    make_app: MakeApp, throwaway_redis: tuple[str, subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = throwaway_redis  # started with --save "" --appendonly no
    with caplog.at_level(logging.WARNING, logger="flask_resilience"):
        make_app(RESILIENCE_REDIS_URL=url)
    assert any("persist" in record.getMessage() for record in caplog.records)


# -- §3 the fingerprint says what the request meant ----------------------------------------------


@pytest.fixture
def echo_app(make_app: MakeApp, redis_url: str) -> tuple[Flask, list[int]]:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    runs: list[int] = []

    @app.post("/transfer")
    @idempotent()
    def transfer() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(amount=request.args.getlist("amount"), body=request.get_data(as_text=True)), 201

    @app.post("/canonical")
    @idempotent(fingerprint="json")
    def canonical() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(ok=True), 201

    return app, runs


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            {"data": b'{"a":1}', "content_type": "application/json"},
            {"data": b'{"a":1}', "content_type": "text/plain"},
        ),
        ({"data": b"a=1", "content_type": "application/x-www-form-urlencoded"}, {"data": b"a=1"}),
        ({"query_string": "amount=1&amount=1000"}, {"query_string": "amount=1000&amount=1"}),
    ],
    ids=["json-vs-text", "form-vs-untyped", "repeated-query-order"],
)
def test_requests_that_mean_different_things_are_a_mismatch(
    echo_app: tuple[Flask, list[int]], first: dict[str, Any], second: dict[str, Any]
) -> None:
    app, runs = echo_app
    client = app.test_client()
    assert client.post("/transfer", headers=key(), **first).status_code == 201
    assert client.post("/transfer", headers=key(), **second).status_code == 422
    assert runs == [1]


def test_query_parameter_names_may_come_in_any_order(echo_app: tuple[Flask, list[int]]) -> None:
    app, runs = echo_app
    client = app.test_client()
    client.post("/transfer", headers=key(), query_string="a=1&b=2")
    assert (
        client.post("/transfer", headers=key(), query_string="b=2&a=1").headers["X-Idempotency-Replayed"]
        == "true"
    )
    assert runs == [1]


@pytest.mark.parametrize("sent", ["order-1001\xa0", " order-1001", "order-1001 ", "\torder"])
def test_keys_are_taken_as_sent(echo_app: tuple[Flask, list[int]], sent: str) -> None:
    app, runs = echo_app
    client = app.test_client()
    client.post("/transfer", headers=key())
    response = client.post("/transfer", headers={"Idempotency-Key": sent})
    assert response.status_code == 400
    assert response.json is not None and response.json["type"].endswith("idempotency-key-invalid")
    assert runs == [1]


def test_json_fingerprint_ignores_key_order_and_whitespace(echo_app: tuple[Flask, list[int]]) -> None:
    app, runs = echo_app
    client = app.test_client()
    client.post("/canonical", headers=key(), data=b'{"a": 1, "b": [1, 2]}', content_type="application/json")
    same = client.post(
        "/canonical", headers=key(), data=b'{"b":[1,2],"a":1}', content_type="application/json"
    )
    assert same.headers["X-Idempotency-Replayed"] == "true"
    other = client.post(
        "/canonical", headers=key(), data=b'{"b":[2,1],"a":1}', content_type="application/json"
    )
    assert other.status_code == 422
    deep = b"[" * 100_000 + b"]" * 100_000
    assert (
        client.post("/canonical", headers=key("deep"), data=deep, content_type="application/json").status_code
        == 201
    )
    assert runs == [1, 1]


# -- §4 every copy honours the record's own expiry ------------------------------------------------


def test_memory_copies_expire_with_the_decorators_ttl(
    make_app: MakeApp, redis_url: str, key_prefix: str
) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    runs: list[int] = []

    @app.post("/short")
    @idempotent(ttl=2)
    def short() -> ResponseReturnValue:
        runs.append(1)
        return jsonify(runs=len(runs)), 201

    service = AppIdempotency.of(app)
    clock = FakeClock(1_700_000_000)
    service.clock = clock
    client = app.test_client()
    client.post("/short", headers=key())
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening()
    for _ in range(3):  # replays (from Redis, then from memory)
        assert client.post("/short", headers=key()).headers["X-Idempotency-Replayed"] == "true"
    clock.advance(3)
    store.delete_matching("idem:*")  # what Redis does by itself after 2 s
    again = client.post("/short", headers=key())
    assert again.headers["X-Idempotency-Replayed"] == "false"
    assert runs == [1, 1]


def test_memory_mode_is_bounded_and_sweeps_expired_records(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_IDEMPOTENCY_MEMORY_ENTRIES=100, RESILIENCE_IDEMPOTENCY_TTL=60)

    @app.post("/note")
    @idempotent()
    def note() -> ResponseReturnValue:
        return "", 204

    service = AppIdempotency.of(app)
    clock = FakeClock(1_700_000_000)
    service.clock = clock
    client = app.test_client()
    for number in range(150):
        client.post("/note", headers=key(f"k-{number}"))
    assert len(service.records) <= 100
    clock.advance(61)
    client.post("/note", headers=key("after-expiry"))
    assert len(service.records) == 1


# -- issue 18: no memory copy before the process listens for invalidations ------------------------


def test_no_memory_copy_is_served_before_the_listener_is_confirmed(make_app: MakeApp, redis_url: str) -> None:
    def build() -> tuple[Flask, list[int]]:
        app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
        runs: list[int] = []

        @app.post("/pay")
        @idempotent()
        def pay() -> ResponseReturnValue:
            runs.append(1)
            return jsonify(runs=len(runs)), 201

        return app, runs

    first_app, _ = build()
    second_app, runs = build()
    second_store = get_state(second_app).redis
    assert second_store is not None
    subscriber = second_store.subscriber
    subscriber.in_this_process()  # its per-process lock is made now, not at the first request
    with subscriber._lock:  # the second process's listener cannot confirm its subscription yet
        client = second_app.test_client()
        client.post("/pay", headers=key())
        assert client.post("/pay", headers=key()).headers["X-Idempotency-Replayed"] == "true"
        with first_app.app_context():
            assert invalidate_idempotency_key("order-1001") == 1  # its message never reaches the second
        assert client.post("/pay", headers=key()).headers["X-Idempotency-Replayed"] == "false"
    assert subscriber.wait_until_listening()
    assert client.post("/pay", headers=key()).headers["X-Idempotency-Replayed"] == "true"
    assert runs == [1, 1]


# -- §5 conflicts and mismatches are signals ---------------------------------------------------------


def test_conflicts_and_mismatches_are_sent_as_signals(make_app: MakeApp, redis_url: str) -> None:
    app, runs = _outcome_app(make_app, redis_url)
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_mismatch(sender: object, **data: Any) -> None:
        seen.append(("mismatch", data))

    def on_conflict(sender: object, **data: Any) -> None:
        seen.append(("conflict", data))

    idempotency_mismatch.connect(on_mismatch, app)
    idempotency_conflict.connect(on_conflict, app)
    try:
        client = app.test_client()
        client.post("/charge-then-503", headers=key(), json={"a": 1})
        client.post("/charge-then-503", headers=key(), json={"a": 2})
    finally:
        idempotency_mismatch.disconnect(on_mismatch, app)
        idempotency_conflict.disconnect(on_conflict, app)
    assert [(kind, data["status"], data["endpoint"]) for kind, data in seen] == [
        ("mismatch", 422, "unavailable")
    ]
    assert runs["503"] == 1


def test_abort_inside_the_view_is_stored_like_an_answer(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    runs: list[int] = []

    @app.post("/declined")
    @idempotent()
    def declined() -> ResponseReturnValue:
        runs.append(1)
        abort(403)

    client = app.test_client()
    assert [client.post("/declined", headers=key()).status_code for _ in range(2)] == [403, 403]
    assert runs == [1]
