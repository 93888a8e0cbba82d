"""Idempotency keys: replay, conflicts, mismatches, isolation, failure modes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, abort, jsonify, request
from flask.testing import FlaskClient
from flask.typing import ResponseReturnValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_resilience import (
    AuditEventType,
    Resilience,
    clear_all_idempotency_keys,
    get_replay_protection_stats,
    idempotent,
    invalidate_idempotency_key,
    reset_replay_protection_stats,
)
from flask_resilience.idempotency.service import AppIdempotency
from flask_resilience.state import get_state
from tests.clock import FakeClock
from tests.conftest import MakeApp
from tests.services import free_port

RUNS: Counter[str] = Counter()
TOKEN = "idempotency-admin-token-01234"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def build(app: Flask) -> Flask:
    RUNS.clear()

    @app.route("/payments/<payment_id>", methods=["POST", "PUT"])
    @idempotent()
    def pay(payment_id: str) -> ResponseReturnValue:
        RUNS["pay"] += 1
        response = jsonify(
            payment=payment_id, run=RUNS["pay"], amount=(request.get_json(silent=True) or {}).get("amount")
        )
        response.status_code = 201
        response.headers["Location"] = f"/payments/{payment_id}"
        response.set_cookie("seen", "1")
        return response

    @app.post("/text")
    @idempotent()
    def text() -> ResponseReturnValue:
        RUNS["text"] += 1
        return Response(f"plain {RUNS['text']}\r\n\x00bytes".encode(), status=202, content_type="text/plain")

    @app.post("/server-error")
    @idempotent()
    def server_error() -> ResponseReturnValue:
        RUNS["server-error"] += 1
        return "try again", 503

    @app.post("/client-error")
    @idempotent()
    def client_error() -> ResponseReturnValue:
        RUNS["client-error"] += 1
        abort(400)

    @app.post("/boom")
    @idempotent()
    def boom() -> ResponseReturnValue:
        RUNS["boom"] += 1
        raise RuntimeError("exploded")

    @app.post("/stream")
    @idempotent()
    def stream() -> ResponseReturnValue:
        RUNS["stream"] += 1
        return Response(iter(["a", "b"]))

    @app.post("/required")
    @idempotent(required=True)
    def required() -> ResponseReturnValue:
        return "", 204

    @app.post("/auto")
    @idempotent(auto_generate=True)
    def auto() -> ResponseReturnValue:
        RUNS["auto"] += 1
        return jsonify(run=RUNS["auto"])

    @app.post("/open")
    @idempotent(fail_open=True)
    def open_() -> ResponseReturnValue:
        RUNS["open"] += 1
        return jsonify(run=RUNS["open"])

    @app.get("/payments")
    @idempotent()
    def list_payments() -> ResponseReturnValue:
        RUNS["list"] += 1
        return jsonify([])

    return app


@pytest.fixture(params=["redis", "memory"])
def app(request: pytest.FixtureRequest, make_app: MakeApp) -> Flask:
    config: dict[str, Any] = {"RESILIENCE_ADMIN_TOKEN": TOKEN, "PROPAGATE_EXCEPTIONS": False}
    if request.param == "redis":
        config["RESILIENCE_REDIS_URL"] = request.getfixturevalue("redis_url")
    app, _ = make_app(**config)
    return build(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def key(value: str = "key-1") -> dict[str, str]:
    return {"Idempotency-Key": value}


def test_replay_is_byte_for_byte(client: FlaskClient) -> None:
    first = client.post("/payments/p1", json={"amount": 10}, headers=key())
    assert first.status_code == 201
    assert (first.headers["Idempotency-Key"], first.headers["X-Idempotency-Replayed"]) == ("key-1", "false")
    second = client.post("/payments/p1", json={"amount": 10}, headers=key())
    assert second.status_code == 201
    assert second.data == first.data
    assert second.headers["Location"] == "/payments/p1"
    assert second.headers["Content-Type"] == first.headers["Content-Type"]
    assert second.headers["X-Idempotency-Replayed"] == "true"
    assert second.headers["X-Original-Timestamp"].endswith("Z")
    assert "Set-Cookie" not in second.headers
    assert RUNS["pay"] == 1


def test_non_json_body_replays_byte_for_byte(client: FlaskClient) -> None:
    first = client.post("/text", data=b"\x00\x01", headers=key())
    second = client.post("/text", data=b"\x00\x01", headers=key())
    assert (second.status_code, second.data, second.content_type) == (202, first.data, first.content_type)
    assert RUNS["text"] == 1


def test_quoted_structured_field_key_is_the_same_key(client: FlaskClient) -> None:
    client.post("/payments/p1", json={"amount": 1}, headers=key("abc-123"))
    replay = client.post("/payments/p1", json={"amount": 1}, headers=key('"abc-123"'))
    assert replay.headers["X-Idempotency-Replayed"] == "true"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/payments/p1", {"amount": 99}),
        ("POST", "/payments/p2", {"amount": 10}),
        ("PUT", "/payments/p1", {"amount": 10}),
    ],
    ids=["body", "path", "method"],
)
def test_same_key_with_another_request_is_422(
    client: FlaskClient, method: str, path: str, body: dict[str, int]
) -> None:
    client.post("/payments/p1", json={"amount": 10}, headers=key())
    response = client.open(path, method=method, json=body, headers=key())
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert response.json is not None and response.json["type"].endswith("idempotency-key-reused")
    assert RUNS["pay"] == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"CONTENT_LENGTH": "0"}, {"CONTENT_LENGTH": "1", "body": b"x"}),
        ({"CONTENT_LENGTH": "1", "body": b"x"}, {"CONTENT_LENGTH": "0"}),
        ({"CONTENT_LENGTH": "0"}, {"CONTENT_LENGTH": "0", "CONTENT_TYPE": "text/plain"}),
        ({}, {"CONTENT_LENGTH": "0", "CONTENT_TYPE": "text/plain"}),
    ],
    ids=["empty-then-body", "body-then-empty", "content-type-added", "no-length-then-type"],
)
def test_an_empty_body_is_told_from_a_body_and_from_another_content_type(
    client: FlaskClient, first: dict[str, Any], second: dict[str, Any]
) -> None:
    def post(sent: dict[str, Any]) -> Any:
        environ = {name: value for name, value in sent.items() if name != "body"}
        return client.post(
            "/payments/p1", data=sent.get("body", b""), headers=key(), environ_overrides=environ
        )

    assert post(first).status_code == 201
    assert post(first).headers["X-Idempotency-Replayed"] == "true"
    assert post(second).status_code == 422
    assert RUNS["pay"] == 1


@pytest.mark.parametrize("bad", ["", "a" * 256, "tab\tkey", "ünïcode", '"unterminated', '"bad\\x"'])
def test_malformed_keys_are_400(client: FlaskClient, bad: str) -> None:
    response = client.post("/payments/p1", json={}, headers={"Idempotency-Key": bad})
    assert response.status_code == 400
    assert response.json is not None and response.json["type"].endswith("idempotency-key-invalid")
    assert RUNS["pay"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=300))
def test_arbitrary_header_values_never_500(client: FlaskClient, value: str) -> None:
    try:
        header = value.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        header = value.encode("utf-8").decode("latin-1")
    if "\n" in header or "\r" in header:
        return  # not sendable as a header value
    response = client.post("/text", data=b"x", headers={"Idempotency-Key": header})
    assert response.status_code in (202, 400), response.data


def test_other_methods_and_missing_keys_pass_through(client: FlaskClient) -> None:
    client.get("/payments", headers=key())
    client.get("/payments", headers=key())
    assert RUNS["list"] == 2
    client.post("/payments/p1", json={})
    client.post("/payments/p1", json={})
    assert RUNS["pay"] == 2
    missing = client.post("/required")
    assert missing.status_code == 400
    assert missing.json is not None and missing.json["type"].endswith("idempotency-key-missing")


def test_auto_generated_key_is_returned_and_replays(client: FlaskClient) -> None:
    first = client.post("/auto")
    generated = first.headers["Idempotency-Key"]
    assert len(generated) == 36
    again = client.post("/auto", headers=key(generated))
    assert again.headers["X-Idempotency-Replayed"] == "true"
    assert RUNS["auto"] == 1


def test_users_never_see_each_others_responses(client: FlaskClient) -> None:
    alice = client.post(
        "/payments/p1", json={"amount": 5}, headers={**key("shared"), "Authorization": "Bearer alice"}
    )
    bob = client.post(
        "/payments/p1", json={"amount": 5}, headers={**key("shared"), "Authorization": "Bearer bob"}
    )
    assert bob.headers["X-Idempotency-Replayed"] == "false"
    assert alice.json is not None and bob.json is not None
    assert alice.json["run"] != bob.json["run"]
    assert RUNS["pay"] == 2


@pytest.mark.parametrize(("path", "replayed"), [("/server-error", 503), ("/boom", 500), ("/stream", 413)])
def test_failures_and_streams_are_the_keys_outcome(client: FlaskClient, path: str, replayed: int) -> None:
    client.post(path, headers=key())
    second = client.post(path, headers=key())
    assert (second.status_code, second.headers["X-Idempotency-Replayed"]) == (replayed, "true")
    assert RUNS[path.strip("/")] == 1


def test_client_errors_are_stored(client: FlaskClient) -> None:
    client.post("/client-error", headers=key())
    replay = client.post("/client-error", headers=key())
    assert (replay.status_code, replay.headers["X-Idempotency-Replayed"]) == (400, "true")
    assert RUNS["client-error"] == 1


def test_oversized_bodies_are_sent_and_never_run_again(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url, RESILIENCE_IDEMPOTENCY_MAX_BODY_BYTES=10)
    client = build(app).test_client()
    assert client.post("/payments/p1", json={"amount": 1}, headers=key()).status_code == 201
    assert client.post("/payments/p1", json={"amount": 1}, headers=key()).status_code == 413
    assert RUNS["pay"] == 1


def test_invalidation_and_clear(app: Flask, client: FlaskClient) -> None:
    client.post("/payments/p1", json={}, headers=key("k1"))
    client.post("/payments/p1", json={}, headers={**key("k2"), "Authorization": "Bearer x"})
    with app.app_context():
        assert invalidate_idempotency_key("k1") == 1
        client.post("/payments/p1", json={}, headers=key("k1"))
        assert RUNS["pay"] == 3
        assert clear_all_idempotency_keys() == 2
        stats = get_replay_protection_stats()
        assert stats["first_executions"] == 3
        reset_replay_protection_stats()
        assert get_replay_protection_stats()["requests"] == 0
    client.post("/payments/p1", json={}, headers={**key("k2"), "Authorization": "Bearer x"})
    assert RUNS["pay"] == 4


def test_invalidation_for_one_user(make_app: MakeApp, redis_url: str) -> None:
    extension = Resilience()
    extension.principal_loader(lambda: request.headers.get("X-User"))
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url)
    client = build(app).test_client()
    for user in ("ana", "bo"):
        client.post("/payments/p1", json={}, headers={**key(), "X-User": user})
    with app.app_context():
        assert invalidate_idempotency_key("key-1", user_id="ana") == 1
    client.post("/payments/p1", json={}, headers={**key(), "X-User": "ana"})
    client.post("/payments/p1", json={}, headers={**key(), "X-User": "bo"})
    assert RUNS["pay"] == 3


def test_memory_layer_serves_replays(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    client = build(app).test_client()
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening()
    client.post("/payments/p1", json={}, headers=key())
    for full_key in list(store.scan("idem:*")):
        store.delete(full_key)  # the shared record is gone; this process still remembers
    assert client.post("/payments/p1", json={}, headers=key()).headers["X-Idempotency-Replayed"] == "true"
    assert AppIdempotency.of(app).stats()["memory_entries"] == 1


def test_a_replay_from_memory_does_not_rewrite_the_copy(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    client = build(app).test_client()
    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening()
    client.post("/payments/p1", json={}, headers=key())
    memory = AppIdempotency.of(app).memory
    (record_key,) = list(memory.keys())
    copy = memory.get(record_key)
    for _ in range(3):
        assert client.post("/payments/p1", json={}, headers=key()).headers["X-Idempotency-Replayed"] == "true"
    assert memory.get(record_key) is copy
    assert client.post("/payments/p1", json={}, headers={"Idempotency-Key": "x" * 10_000}).status_code == 400


def test_replays_from_memory_are_the_replay_from_redis_and_share_no_headers(
    make_app: MakeApp, redis_url: str
) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    client = build(app).test_client()
    hooked = Counter[str]()

    @app.after_request
    def stamp(response: Response) -> Response:  # a hook that changes every response
        hooked["n"] += 1
        response.headers.add("X-Hook", str(hooked["n"]))
        return response

    store = get_state(app).redis
    assert store is not None and store.subscriber.wait_until_listening()
    first = client.post("/payments/p1", json={}, headers=key())
    AppIdempotency.of(app).memory.clear()
    from_redis = client.post("/payments/p1", json={}, headers=key())
    for full_key in list(store.scan("idem:*")):
        store.delete(full_key)  # from now on only this process's copy can answer
    from_memory = [client.post("/payments/p1", json={}, headers=key()) for _ in range(3)]

    def shown(response: Any) -> list[tuple[str, str]]:
        return [(name, value) for name, value in response.headers if name not in ("X-Request-ID", "X-Hook")]

    for replayed in from_memory:
        assert replayed.get_data() == from_redis.get_data() == first.get_data()
        assert replayed.status_code == from_redis.status_code == 201
        assert shown(replayed) == shown(from_redis)
        assert len(replayed.headers.getlist("X-Hook")) == 1  # nothing left over from the last replay
    assert len({replayed.headers["X-Hook"] for replayed in from_memory}) == 3
    assert RUNS["pay"] == 1


def test_ttl_expiry_follows_the_injected_clock(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_IDEMPOTENCY_TTL=60)
    client = build(app).test_client()
    clock = FakeClock(1_700_000_000)
    AppIdempotency.of(app).clock = clock
    client.post("/payments/p1", json={}, headers=key())
    clock.advance(59)
    assert client.post("/payments/p1", json={}, headers=key()).headers["X-Idempotency-Replayed"] == "true"
    clock.advance(2)
    assert client.post("/payments/p1", json={}, headers=key()).headers["X-Idempotency-Replayed"] == "false"
    assert RUNS["pay"] == 2


def test_store_unavailable_fails_closed_or_open(make_app: MakeApp) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = build(app).test_client()
    closed = client.post("/payments/p1", json={}, headers=key())
    assert closed.status_code == 503
    assert closed.headers["Retry-After"] == "5"
    assert closed.json is not None and closed.json["type"].endswith("idempotency-store-unavailable")
    assert RUNS["pay"] == 0
    assert client.post("/open", headers=key()).status_code == 200
    assert RUNS["open"] == 1
    stats = AppIdempotency.of(app).stats()
    assert (stats["store_errors"], stats["fail_open"]) == (2, 1)


# -- concurrency in one process ------------------------------------------------------------------


@pytest.fixture
def slow_app(make_app: MakeApp, redis_url: str) -> Iterator[tuple[Flask, threading.Event, threading.Event]]:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    @app.post("/slow")
    @idempotent()
    def slow() -> ResponseReturnValue:
        runs.append(1)
        entered.set()
        release.wait(10)
        return jsonify(runs=len(runs))

    @app.post("/slow-wait")
    @idempotent(wait=5000)
    def slow_wait() -> ResponseReturnValue:
        runs.append(1)
        entered.set()
        release.wait(10)
        return jsonify(runs=len(runs))

    app.config["RUNS"] = runs
    yield app, entered, release
    release.set()


def test_twenty_threads_one_key_run_the_view_once(
    slow_app: tuple[Flask, threading.Event, threading.Event],
) -> None:
    app, entered, release = slow_app
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def post() -> None:
        response = app.test_client().post("/slow", headers=key("race"))
        with lock:
            statuses.append((response.status_code, response.headers.get("X-Idempotency-Replayed")))

    first = threading.Thread(target=post)
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=post) for _ in range(19)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(10)
    release.set()
    first.join(10)
    assert app.config["RUNS"] == [1]
    assert statuses.count((200, "false")) == 1
    assert statuses.count((409, None)) == 19
    replay = app.test_client().post("/slow", headers=key("race"))
    assert replay.headers["X-Idempotency-Replayed"] == "true"


def test_wait_turns_a_conflict_into_a_replay(
    slow_app: tuple[Flask, threading.Event, threading.Event],
) -> None:
    app, entered, release = slow_app
    results: list[Any] = []

    def post() -> None:
        results.append(app.test_client().post("/slow-wait", headers=key("patient")))

    first = threading.Thread(target=post)
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=post)
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert sorted(r.headers["X-Idempotency-Replayed"] for r in results) == ["false", "true"]
    assert results[0].data == results[1].data
    assert app.config["RUNS"] == [1]


# -- blueprints, prefixes, endpoints, audit -----------------------------------------------------------


def test_blueprint_and_prefix_protection(make_app: MakeApp, redis_url: str) -> None:
    extension = Resilience()
    runs: Counter[str] = Counter()
    payments = Blueprint("payments", __name__, url_prefix="/bp")

    @payments.post("/charge")
    def charge() -> ResponseReturnValue:
        runs["bp"] += 1
        return jsonify(run=runs["bp"]), 201

    extension.idempotent_blueprint(payments)
    extension.idempotent_blueprint("/api/refunds", required=True)
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url)
    app.register_blueprint(payments)

    @app.post("/api/refunds/<refund_id>")
    def refund(refund_id: str) -> ResponseReturnValue:
        runs["prefix"] += 1
        return jsonify(run=runs["prefix"])

    @app.post("/api/refunds/decorated")
    @idempotent(ttl=60)
    def decorated_refund() -> ResponseReturnValue:
        runs["decorated"] += 1
        return jsonify(run=runs["decorated"])

    client = app.test_client()
    for _ in range(2):
        client.post("/bp/charge", headers=key())
        client.post("/api/refunds/r1", headers=key())
        assert client.post("/api/refunds/decorated", headers=key()).status_code == 200  # protected once
    assert runs == {"bp": 1, "prefix": 1, "decorated": 1}
    assert client.post("/api/refunds/r1").status_code == 400  # required under the prefix
    with pytest.raises(ValueError, match="prefix"):
        extension.idempotent_blueprint("api")


def test_endpoints(client: FlaskClient) -> None:
    client.post("/payments/p1", json={}, headers=key())
    client.post("/payments/p1", json={}, headers=key())
    assert client.get("/api/health/replay-protection").status_code == 401
    stats = client.get("/api/health/replay-protection", headers=ADMIN).json
    assert stats is not None
    assert (stats["requests"], stats["first_executions"], stats["replays"], stats["replay_rate"]) == (
        2,
        1,
        1,
        0.5,
    )
    assert stats["endpoints"]["pay"]["replays"] == 1
    assert client.post("/api/health/replay-protection/clear", json={"key": "key-1"}).status_code == 401
    cleared = client.post("/api/health/replay-protection/clear", json={"key": "key-1"}, headers=ADMIN)
    assert cleared.json == {"removed": 1}
    assert client.post("/api/health/replay-protection/clear", headers=ADMIN).status_code == 200
    bad = client.post("/api/health/replay-protection/clear", json={"user_id": "x"}, headers=ADMIN)
    assert bad.status_code == 400
    assert client.post("/api/health/replay-protection/reset", headers=ADMIN).json == {"reset": True}
    dashboard = client.get("/api/health/dashboard", headers=ADMIN).json
    assert dashboard is not None and dashboard["features"]["replay_protection"]["requests"] == 0


def test_conflicts_are_audited(make_app: MakeApp, redis_url: str) -> None:
    app, _ = make_app(RESILIENCE_REDIS_URL=redis_url)
    client = build(app).test_client()
    client.post("/payments/p1", json={"amount": 1}, headers=key())
    client.post("/payments/p1", json={"amount": 2}, headers=key())
    with app.app_context():
        from flask_resilience import get_audit_stats

        assert get_audit_stats()["by_event_type"] == {AuditEventType.IDEMPOTENCY_CONFLICT.value: 1}


def test_prefix_protection_keeps_a_propagated_exception_as_the_outcome(
    make_app: MakeApp, redis_url: str
) -> None:
    extension = Resilience()
    extension.idempotent_blueprint("/api/orders")
    extension.idempotent_blueprint("/api/rerunnable", on_error="release")
    app, _ = make_app(extension, RESILIENCE_REDIS_URL=redis_url)  # TESTING: exceptions propagate
    runs: list[int] = []

    @app.post("/api/orders")
    @app.post("/api/rerunnable", endpoint="rerunnable")
    def order() -> ResponseReturnValue:
        runs.append(1)
        if len(runs) in (1, 2):
            raise RuntimeError("first attempt fails")
        return jsonify(ok=True)

    client = app.test_client()
    with pytest.raises(RuntimeError, match="first attempt"):
        client.post("/api/orders", headers=key())
    replayed = client.post("/api/orders", headers=key())
    assert (replayed.status_code, replayed.headers["X-Idempotency-Replayed"]) == (500, "true")
    with pytest.raises(RuntimeError, match="first attempt"):
        client.post("/api/rerunnable", headers=key())
    assert client.post("/api/rerunnable", headers=key()).status_code == 200
    assert runs == [1, 1, 1]


def test_a_custom_key_header_is_read_whatever_its_case(make_app: MakeApp) -> None:
    app, _ = make_app()
    runs = Counter[str]()

    @app.post("/orders")
    @idempotent(header="X-Order-Key", required=True)
    def order() -> ResponseReturnValue:
        runs["order"] += 1
        return jsonify(run=runs["order"]), 201

    client = app.test_client()
    first = client.post("/orders", headers={"x-order-key": "o-1"})
    again = client.post("/orders", headers={"X-ORDER-KEY": "o-1"})
    assert first.status_code == again.status_code == 201
    assert again.headers["X-Idempotency-Replayed"] == "true" and again.headers["X-Order-Key"] == "o-1"
    assert client.post("/orders", headers={"Idempotency-Key": "o-1"}).status_code == 400  # not its header
    assert runs["order"] == 1
