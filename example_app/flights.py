"""``GET /api/flights``: cached, calling the provider through a circuit breaker."""

from __future__ import annotations

from dataclasses import dataclass

import requests
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from flask_resilience import CircuitOpenError, Resilience, cached
from flask_resilience.breaker.http import BreakerAdapter

PROVIDER_BREAKER = "flights-provider"
CLIENT_TIMEOUT = 1.0  # seconds; the provider's "slow" mode takes longer

flights_blueprint = Blueprint("flights", __name__, url_prefix="/api/flights")


@dataclass
class ProviderClient:
    """The provider's address and a ``requests`` session whose adapter puts
    every call behind the ``flights-provider`` breaker."""

    url: str
    session: requests.Session

    @classmethod
    def create(cls, resilience: Resilience, url: str, open_seconds: float) -> ProviderClient:
        config = {"failure_threshold": 3, "timeout": open_seconds, "success_threshold": 2}
        # Created now, not on the first call, so that every worker lists it on
        # the dashboard (its state is shared through Redis when configured).
        resilience.circuit_breaker(PROVIDER_BREAKER, **config)
        session = requests.Session()
        adapter = BreakerAdapter(resilience, service=PROVIDER_BREAKER, breaker_config=config)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return cls(url.rstrip("/"), session)


def provider_client() -> ProviderClient:
    client: ProviderClient = current_app.extensions["example_provider_client"]
    return client


@flights_blueprint.get("")
@cached(ttl=300, tags=["flights"], prefix="flights", query_args=["from", "to", "date"], front=True)
def search_flights() -> ResponseReturnValue:
    client = provider_client()
    params = {name: request.args.get(name, "") for name in ("from", "to", "date")}
    try:
        answer = client.session.get(f"{client.url}/flights", params=params, timeout=CLIENT_TIMEOUT)
    except CircuitOpenError as exc:
        retry = str(max(1, round(exc.retry_after or 1)))
        return jsonify(error="flight search is paused: the provider is failing"), 503, {"Retry-After": retry}
    except requests.RequestException as exc:
        return jsonify(error=f"the flights provider did not answer ({type(exc).__name__})"), 502
    if answer.status_code != 200:
        return jsonify(error=f"the flights provider answered {answer.status_code}"), 502
    return jsonify(flights=answer.json()["flights"])
