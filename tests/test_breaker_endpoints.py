"""The circuit breaker endpoints of the health blueprint."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from flask_resilience import CircuitState, Resilience
from flask_resilience.breaker.breaker import CircuitBreaker
from tests.conftest import MakeApp

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
