"""The example app end to end, over HTTP: on the embedded defaults (SQLite,
in-process state) and on Redis + PostgreSQL, plus its demo command."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from example_app import create_app, shutdown
from example_app.demo import run_demo
from tests.example_server import Running, serve
from tests.test_audit_migrations import scratch_schema


@pytest.fixture(params=["embedded", "redis+postgres"])
def services(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The environment the app reads: nothing, or Redis and PostgreSQL (a
    schema of its own: the demo verifies every audit chain it finds, and other
    tests leave chains of other keys, and unclosed ones, in the shared schema)."""
    if request.param != "redis+postgres":
        monkeypatch.delenv("DATABASE_URL", raising=False)
        yield str(request.param)
        return
    monkeypatch.setenv("RESILIENCE_REDIS_URL", request.getfixturevalue("redis_url"))
    monkeypatch.setenv("RESILIENCE_KEY_PREFIX", request.getfixturevalue("key_prefix"))
    with scratch_schema(request.getfixturevalue("postgres_url"), "rt_example") as url:
        monkeypatch.setenv("DATABASE_URL", url)
        yield str(request.param)


@pytest.fixture
def example(services: str, tmp_path: Path) -> Iterator[Running]:
    app = create_app({"EXAMPLE_BREAKER_OPEN_SECONDS": 1.0}, instance_path=str(tmp_path / "instance"))
    yield from serve(app)


def test_runs_on_the_configured_services(example: Running, services: str) -> None:
    with example.app.app_context():
        database = example.app.extensions["sqlalchemy"].engine.url.get_backend_name()
    state = example.app.extensions["example_resilience"].state(example.app)
    if services == "embedded":
        assert (database, state.redis) == ("sqlite", None)
    else:
        assert database == "postgresql"
        assert state.redis is not None
        health = example.call("GET", "/api/health").json()
        assert health["checks"]["redis"]["status"] == "up"


def test_flight_search_is_cached_and_a_booking_invalidates_it(example: Running) -> None:
    path = f"/api/flights?from=FRA&to=JFK&date={uuid.uuid4().hex}"
    first, second = example.call("GET", path), example.call("GET", path)
    assert [first.headers["X-Cache"], second.headers["X-Cache"]] == ["MISS", "HIT"]
    assert [flight["id"] for flight in first.json()["flights"]] == ["LH401", "LH403"]
    token = example.login("alice")
    booked = example.call("POST", "/api/bookings", token, json={"flight": "LH401", "passenger": "A"})
    assert booked.status_code == 201
    assert example.call("GET", path).headers["X-Cache"] == "MISS"


def test_booking_changes_are_audited_and_invalidate_the_bookings_tag(example: Running) -> None:
    alice, bob = example.login("alice"), example.login("bob")
    booking_id = example.call(
        "POST", "/api/bookings", alice, json={"flight": "AF1234", "passenger": "A"}
    ).json()["id"]
    assert example.call("GET", f"/api/bookings/{booking_id}", alice).json()["seats"] == 1
    assert example.call("GET", f"/api/bookings/{booking_id}", bob).status_code == 404  # not bob's
    changed = example.call("PATCH", f"/api/bookings/{booking_id}", alice, json={"seats": 3})
    assert changed.status_code == 200
    # The cached copy was dropped with its tag: the change shows at once.
    assert example.call("GET", f"/api/bookings/{booking_id}", alice).json()["seats"] == 3
    assert example.call("DELETE", f"/api/bookings/{booking_id}", alice).status_code == 204
    assert example.call("GET", f"/api/bookings/{booking_id}", alice).status_code == 404

    admin = example.login("admin")
    entries = example.call(
        "GET", "/api/health/audit/entries?user_id=alice&limit=1000&since=2000-01-01", admin
    ).json()["entries"]
    mine = [entry for entry in entries if entry["resource_id"] == str(booking_id)]
    assert sorted(entry["event_type"] for entry in mine) == ["CREATE", "DELETE", "UPDATE"]
    update = next(entry for entry in mine if entry["event_type"] == "UPDATE")
    assert "seats" in str(update["changes"])


def test_payment_runs_once_per_key_and_key_scoped_per_user(example: Running) -> None:
    alice, bob, admin = example.login("alice"), example.login("bob"), example.login("admin")
    booking = example.call("POST", "/api/bookings", alice, json={"flight": "KL1001", "passenger": "A"}).json()
    order = {"booking_id": booking["id"], "amount_cents": 8800, "card_number": "4111111111111111"}
    key = {"Idempotency-Key": f"pay-{uuid.uuid4().hex}"}
    before = example.call("GET", "/api/admin/charges", admin).json()["charges"]
    first = example.call("POST", "/api/payments", alice, json=order, headers=key)
    again = example.call("POST", "/api/payments", alice, json=order, headers=key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["X-Idempotency-Replayed"] == "true"
    assert example.call("GET", "/api/admin/charges", admin).json()["charges"] == before + 1
    # Bob's request with Alice's key is his own: not a replay of hers (and not his booking).
    assert example.call("POST", "/api/payments", bob, json=order, headers=key).status_code == 404
    assert example.call("POST", "/api/payments", alice, json=order).status_code == 400  # key required

    payment_id = first.json()["payment"]["id"]
    refund_key = {"Idempotency-Key": f"refund-{uuid.uuid4().hex}"}
    refunds = [
        example.call("POST", "/api/refunds", alice, json={"payment_id": payment_id}, headers=refund_key)
        for _ in range(2)
    ]
    assert [answer.status_code for answer in refunds] == [201, 201]
    assert refunds[1].headers["X-Idempotency-Replayed"] == "true"
    other_key = {"Idempotency-Key": f"refund-{uuid.uuid4().hex}"}
    twice = example.call("POST", "/api/refunds", alice, json={"payment_id": payment_id}, headers=other_key)
    assert twice.status_code == 409
    entries = example.call("GET", "/api/health/audit/entries?event_type=PAYMENT_PROCESSED&limit=1000", admin)
    paid = [
        entry for entry in entries.json()["entries"] if entry["request_id"] == first.headers["X-Request-ID"]
    ]
    assert len(paid) == 1
    assert "4111111111111111" not in str(paid[0])


def test_tokens_logout_and_the_audited_admin_blueprint(example: Running) -> None:
    alice = example.login("alice")
    assert (
        example.call("POST", "/api/auth/login", json={"username": "alice", "password": "x"}).status_code
        == 401
    )
    assert example.call("GET", "/api/admin/charges", alice).status_code == 403
    assert example.call("GET", "/api/bookings/1", alice[:-2] + "xx").status_code == 401  # tampered
    admin = example.login("admin")
    switched = example.call("POST", "/api/admin/provider?why=test", admin, json={"mode": "slow"})
    assert switched.json() == {"mode": "slow"}
    assert example.call("POST", "/api/admin/provider", admin, json={"mode": "off"}).status_code == 400
    assert example.call("POST", "/api/auth/logout", alice).status_code == 200
    assert example.call("POST", "/api/auth/logout", alice).status_code == 401  # revoked
    entries = example.call("GET", "/api/health/audit/entries?event_type=ADMIN&limit=1000", admin).json()[
        "entries"
    ]
    switch = next(
        entry for entry in entries if entry["path"] == "/api/admin/provider" and entry["http_status"] == 200
    )
    assert switch["details"] == {"query": {"why": ["test"]}, "body": {"mode": "slow"}}
    kinds = {
        entry["event_type"]
        for entry in example.call("GET", "/api/health/audit/entries?limit=1000", admin).json()["entries"]
    }
    assert {"LOGIN", "LOGIN_FAILED", "LOGOUT", "ADMIN"} <= kinds


def test_slow_provider_opens_the_breaker_and_cached_searches_still_answer(example: Running) -> None:
    admin = example.login("admin")
    cached = "/api/flights?from=AMS&to=LHR&date=cached"
    assert example.call("GET", cached).status_code == 200
    example.call("POST", "/api/admin/provider", admin, json={"mode": "fail"})
    statuses = [example.call("GET", f"/api/flights?date={number}").status_code for number in range(4)]
    assert statuses == [502, 502, 502, 503]
    breaker = example.call("GET", "/api/health/circuit-breakers", admin).json()["circuit_breakers"]
    assert breaker["flights-provider"]["state"] == "OPEN"
    assert example.call("GET", cached).headers["X-Cache"] == "HIT"  # the cache still serves


def test_demo_command_exits_zero(services: str, tmp_path: Path) -> None:
    app = create_app(instance_path=str(tmp_path / "cli"))
    try:
        result = app.test_cli_runner().invoke(args=["demo"])
    finally:
        shutdown(app)
    assert result.exit_code == 0, result.output
    assert "✗" not in result.output
    assert result.output.count("✓") >= 15
    assert "/api/health/dashboard.html" in result.output


def test_demo_reports_a_step_that_misbehaves(tmp_path: Path) -> None:
    """With idempotency switched off a retried payment charges twice: the demo must say so."""
    app = create_app(
        {"RESILIENCE_IDEMPOTENCY_ENABLED": False, "EXAMPLE_BREAKER_OPEN_SECONDS": 1.0},
        instance_path=str(tmp_path / "broken"),
    )
    lines: list[str] = []
    for running in serve(app):
        assert run_demo(running.url, lines.append) is False
    output = "\n".join(lines)
    assert "✗  idempotency  the card was charged once" in output
    assert "Some steps did not behave" in output


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/bookings", "/api/payments", "/api/admin/provider"])
def test_hostile_bodies_get_a_problem_not_a_500(example: Running, path: str) -> None:
    token = example.login("admin" if "admin" in path else "alice")
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"hostile-{uuid.uuid4().hex}"}
    deep = "[" * 100_000 + "]" * 100_000
    lone_surrogates = (
        '{"flight": "\\ud800", "passenger": "\\udfff", "mode": "\\ud800", "username": "\\ud800"}'
    )
    for body in (deep, lone_surrogates, "not json", "\x00"):
        answer = example.call("POST", path, token, data=body.encode(), headers=headers)
        assert answer.status_code in (400, 401), (body[:20], answer.status_code)
        assert answer.headers["Content-Type"] == "application/problem+json"
        headers["Idempotency-Key"] = f"hostile-{uuid.uuid4().hex}"


def test_hostile_urls_and_headers(example: Running) -> None:
    assert example.call("GET", "/api/bookings/1%00", example.login("alice")).status_code == 404
    assert example.call("GET", "/api/bookings/1", "x" * 10_000).status_code == 401
    repeated = example.call("GET", "/api/flights?from=FRA&from=CDG&to=%23&date=%3F%00")
    assert repeated.status_code == 200
    assert (
        example.call("GET", "/api/flights?from=FRA&from=CDG&to=%23&date=%3F%00").headers["X-Cache"] == "HIT"
    )


def test_booking_list_is_cached_per_user_and_invalidated_by_changes(example: Running) -> None:
    alice, bob = example.login("alice"), example.login("bob")
    booking_id = example.call(
        "POST", "/api/bookings", alice, json={"flight": "LH401", "passenger": "A"}
    ).json()["id"]
    first, second = (example.call("GET", "/api/bookings", alice) for _ in range(2))
    assert [first.headers["X-Cache"], second.headers["X-Cache"]] == ["MISS", "HIT"]
    assert booking_id in {booking["id"] for booking in second.json()["bookings"]}
    # Bob's request is keyed on his principal: never Alice's cached copy.
    bobs = example.call("GET", "/api/bookings", bob)
    assert bobs.headers["X-Cache"] == "MISS"
    assert booking_id not in {booking["id"] for booking in bobs.json()["bookings"]}
    assert example.call("PATCH", f"/api/bookings/{booking_id}", alice, json={"seats": 2}).ok
    after = example.call("GET", "/api/bookings", alice)
    assert after.headers["X-Cache"] == "MISS"
    assert {booking["id"]: booking["seats"] for booking in after.json()["bookings"]}[booking_id] == 2
    assert example.call("GET", "/api/bookings").status_code == 401
