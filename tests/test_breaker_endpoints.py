"""The circuit breaker endpoints of the health blueprint."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from flask.testing import FlaskClient

from flask_resilience import CircuitState, Resilience
from flask_resilience.breaker.breaker import CircuitBreaker
from flask_resilience.problems import PROBLEM_CONTENT_TYPE
from tests.conftest import MakeApp
from tests.services import free_port, start_redis_server

TOKEN = "breaker-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class Boom(Exception):
    pass


def _fail() -> None:
    raise Boom


@pytest.fixture
def setup(make_app: MakeApp) -> tuple[FlaskClient, CircuitBreaker, CircuitBreaker]:
    extension = Resilience()
    flights = extension.circuit_breaker("flights-api", failure_threshold=1)
    hotels = extension.circuit_breaker("hotels-api", failure_threshold=1)
    app, _ = make_app(extension, RESILIENCE_ADMIN_TOKEN=TOKEN)
    for breaker in (flights, hotels):
        with pytest.raises(Boom):
            breaker.call(_fail)
    return app.test_client(), flights, hotels


def test_listing_needs_admin(setup: tuple[FlaskClient, CircuitBreaker, CircuitBreaker]) -> None:
    client, _, _ = setup
    assert client.get("/api/health/circuit-breakers").status_code == 401
    response = client.get("/api/health/circuit-breakers", headers=ADMIN)
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert body["healthy"] is False
    stats = body["circuit_breakers"]["flights-api"]
    assert stats["state"] == "OPEN"
    for field in ("calls", "successes", "failures", "rejections", "slow_calls", "failure_rate",
                  "last_failure_at", "last_transition_at", "seconds_until_trial"):  # fmt: skip
        assert field in stats


def test_listing_is_public_when_configured(make_app: MakeApp) -> None:
    extension = Resilience()
    extension.circuit_breaker("public-api")
    app, _ = make_app(extension, RESILIENCE_HEALTH_PUBLIC=True)
    response = app.test_client().get("/api/health/circuit-breakers")
    assert response.status_code == 200
    assert response.json is not None and response.json["healthy"] is True


def test_reset_one_and_all(setup: tuple[FlaskClient, CircuitBreaker, CircuitBreaker]) -> None:
    client, flights, hotels = setup
    assert client.post("/api/health/circuit-breakers/reset").status_code == 401
    assert (
        client.post(
            "/api/health/circuit-breakers/reset", headers={"Authorization": "Bearer nope"}
        ).status_code
        == 403
    )
    response = client.post("/api/health/circuit-breakers/reset", json={"name": "flights-api"}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json == {"reset": ["flights-api"]}
    assert flights.state is CircuitState.CLOSED
    assert hotels.state is CircuitState.OPEN
    response = client.post("/api/health/circuit-breakers/reset", headers=ADMIN)
    assert response.json is not None and sorted(response.json["reset"]) == ["flights-api", "hotels-api"]
    assert hotels.state is CircuitState.CLOSED


def test_reset_unknown_name_and_bad_bodies(setup: tuple[FlaskClient, CircuitBreaker, CircuitBreaker]) -> None:
    client, _, _ = setup
    unknown = client.post("/api/health/circuit-breakers/reset", json={"name": "nope"}, headers=ADMIN)
    assert unknown.status_code == 404
    assert unknown.content_type == "application/problem+json"
    assert unknown.json is not None and unknown.json["type"].endswith("unknown-circuit-breaker")
    for body in (b"{not json", b"[1, 2]", b'{"name": 5}'):
        bad = client.post(
            "/api/health/circuit-breakers/reset",
            data=body,
            headers={**ADMIN, "Content-Type": "application/json"},
        )
        assert bad.status_code == 400
        assert bad.content_type == "application/problem+json"


def test_set_state(setup: tuple[FlaskClient, CircuitBreaker, CircuitBreaker]) -> None:
    client, flights, _ = setup
    url = "/api/health/circuit-breakers/flights-api/state"
    assert client.post(url, json={"state": "FORCED_OPEN"}).status_code == 401
    response = client.post(url, json={"state": "FORCED_OPEN"}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json is not None and response.json["state"] == "FORCED_OPEN"
    assert flights.state is CircuitState.FORCED_OPEN
    for state in ("DISABLED", "METRICS_ONLY", "CLOSED"):
        assert client.post(url, json={"state": state}, headers=ADMIN).status_code == 200
        assert flights.state is CircuitState(state)
    for bad in ({"state": "HALF_OPEN"}, {"state": "open"}, {}, None):
        response = client.post(url, json=bad, headers=ADMIN)
        assert response.status_code == 400, bad
    missing = client.post("/api/health/circuit-breakers/nope/state", json={"state": "CLOSED"}, headers=ADMIN)
    assert missing.status_code == 404


def test_dashboard_includes_the_breakers(setup: tuple[FlaskClient, CircuitBreaker, CircuitBreaker]) -> None:
    client, _, _ = setup
    body = client.get("/api/health/dashboard", headers=ADMIN).json
    assert body is not None
    assert body["features"]["circuit_breakers"]["hotels-api"]["state"] == "OPEN"


def test_an_operator_change_that_cannot_be_shared_is_not_reported_as_done(make_app: MakeApp) -> None:
    # Forcing a shared circuit open while Redis is down used to answer 200
    # FORCED_OPEN: no other worker saw it, and this one silently went back to
    # CLOSED when Redis returned. The operator is told to retry instead.
    directory = tempfile.mkdtemp(prefix="resilience-operator-")
    port = free_port()
    server = start_redis_server(directory, port)
    try:
        extension = Resilience()
        extension.circuit_breaker("partner")
        app, _ = make_app(
            extension,
            RESILIENCE_ADMIN_TOKEN=TOKEN,
            RESILIENCE_REDIS_URL=f"redis://127.0.0.1:{port}/0",
            RESILIENCE_BREAKER_STORAGE="redis",
        )
        client = app.test_client()
        forced = {"state": "FORCED_OPEN"}
        url = "/api/health/circuit-breakers/partner/state"
        assert client.post(url, json=forced, headers=ADMIN).status_code == 200
        assert client.post("/api/health/circuit-breakers/reset", headers=ADMIN).status_code == 200
        server.terminate()
        server.wait(10)
        for response in (
            client.post(url, json=forced, headers=ADMIN),
            client.post("/api/health/circuit-breakers/reset", json={"name": "partner"}, headers=ADMIN),
        ):
            assert (response.status_code, response.content_type) == (503, PROBLEM_CONTENT_TYPE)
            assert response.json is not None and "partner" in response.json["detail"]
            assert "Retry-After" in response.headers
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
