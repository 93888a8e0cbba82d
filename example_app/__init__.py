"""A small travel-booking API that uses Flask-Resilience.

Run it with ``flask --app example_app run``. It works on a bare machine (no
Redis, no database server); set ``RESILIENCE_REDIS_URL`` and
``RESILIENCE_AUDIT_DATABASE_URI`` (or any other ``RESILIENCE_*`` key) in the
environment to point it at real services.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_resilience import (
    AuditEventType,
    CircuitOpenError,
    Resilience,
    audited,
    cached,
    current_request_id,
    idempotent,
    invalidates,
)

resilience = Resilience()

# Created at import time; the app's RESILIENCE_BREAKER_DEFAULTS fill in the rest.
flights_api = resilience.circuit_breaker("travelpayouts-api", failure_threshold=5, timeout=60)

FLIGHTS = [
    {"id": "LH401", "from": "FRA", "to": "JFK", "departs": "2026-12-01T10:15:00Z", "price_eur": 412},
    {"id": "AF1234", "from": "CDG", "to": "LIS", "departs": "2026-12-01T07:40:00Z", "price_eur": 96},
    {"id": "KL1001", "from": "AMS", "to": "LHR", "departs": "2026-12-02T06:55:00Z", "price_eur": 88},
]


def fetch_flights() -> list[dict[str, Any]]:
    """Stands in for the partner API call the breaker protects."""
    return FLIGHTS


def create_app(config: dict[str, Any] | None = None, instance_path: str | None = None) -> Flask:
    app = Flask(__name__, instance_path=instance_path)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-secret")
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("RESILIENCE_")})
    app.config.update(config or {})
    resilience.init_app(app)

    @app.get("/api/flights")
    @cached(ttl=300, tags=["flights"], prefix="api", query_args=["from", "to"])
    def flights() -> ResponseReturnValue:
        try:
            found = flights_api.call(fetch_flights)
        except CircuitOpenError as exc:
            retry = str(int(exc.retry_after or 60))
            return jsonify(error="flight search is unavailable"), 503, {"Retry-After": retry}
        return jsonify(flights=found)

    @app.post("/api/bookings")
    @idempotent(ttl=86400)
    @audited(AuditEventType.CREATE, resource="booking", include_body=True)
    def book() -> ResponseReturnValue:
        return jsonify(booked=True, request_id=current_request_id()), 201

    @app.post("/api/flights/refresh")
    @invalidates(tags=["flights"])
    def refresh_flights() -> ResponseReturnValue:
        return jsonify(refreshed=True, request_id=current_request_id())

    return app
