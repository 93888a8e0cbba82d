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

from flask_resilience import Resilience, current_request_id

resilience = Resilience()

FLIGHTS = [
    {"id": "LH401", "from": "FRA", "to": "JFK", "departs": "2026-12-01T10:15:00Z", "price_eur": 412},
    {"id": "AF1234", "from": "CDG", "to": "LIS", "departs": "2026-12-01T07:40:00Z", "price_eur": 96},
    {"id": "KL1001", "from": "AMS", "to": "LHR", "departs": "2026-12-02T06:55:00Z", "price_eur": 88},
]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY", "dev-only-secret")
    app.config.update({k: v for k, v in os.environ.items() if k.startswith("RESILIENCE_")})
    app.config.update(config or {})
    resilience.init_app(app)

    @app.get("/api/flights")
    def flights() -> ResponseReturnValue:
        return jsonify(flights=FLIGHTS, request_id=current_request_id())

    return app
