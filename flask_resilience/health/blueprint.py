"""The health blueprint: liveness with dependency checks, and the dashboard."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..problems import Problem
from ..state import ResilienceState, get_state
from ..version import __version__
from .auth import is_admin, stats_access

logger = logging.getLogger("flask_resilience")

health_blueprint = Blueprint("resilience_health", __name__)


def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def raise_routing_problem(prefix: str) -> None:
    """``before_request``: a 404 or 405 under the health prefix answers problem+json.

    Flask raises routing errors after the ``before_request`` hooks and never
    shows them to a blueprint's error handlers, so this runs app-wide and only
    for URLs under ``prefix``; the rest of the app keeps its own pages.
    """
    error = request.routing_exception
    if not isinstance(error, (NotFound, MethodNotAllowed)):
        return
    path = request.path
    if path != prefix and not path.startswith(prefix + "/"):
        return
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        raise Problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            f"{request.method} is not allowed here; use {allowed}.",
            headers={"Allow": allowed},
        )
    raise Problem(404, "not-found", "Not found", "No health endpoint at this URL.")


@health_blueprint.get("", strict_slashes=False)
def health() -> tuple[Response, int]:
    """Public: 200 when every configured dependency answers, else 503 naming it."""
    state = get_state()
    checks: dict[str, dict[str, object]] = {}
    failing: list[str] = []
    show_details = None
    for name, check in state.health_checks.items():
        started = time.perf_counter()
        try:
            configured = check()
        except Exception as exc:
            logger.warning("health check %s failed: %s", name, exc)
            failing.append(name)
            checks[name] = {"status": "down", "error": type(exc).__name__}
            if show_details is None:
                show_details = is_admin()
            if show_details:
                checks[name]["detail"] = str(exc)
            continue
        if configured:
            elapsed_ms = (time.perf_counter() - started) * 1000
            checks[name] = {"status": "up", "latency_ms": round(elapsed_ms, 3)}
    body: dict[str, object] = {
        "status": "unavailable" if failing else "ok",
        "version": __version__,
        "uptime_seconds": round(_uptime(state), 3),
        "checks": checks,
    }
    if failing:
        body["failing"] = failing
    return no_store(jsonify(body)), 503 if failing else 200


@health_blueprint.get("/dashboard")
def dashboard() -> Response:
    """The statistics of every feature (admin-only unless RESILIENCE_HEALTH_PUBLIC)."""
    include_private = stats_access()
    state = get_state()
    features: dict[str, object] = {}
    for name, provider in state.stats_providers.items():
        try:
            features[name] = dict(provider(include_private))
        except Exception as exc:
            logger.exception("stats provider %s failed", name)
            features[name] = {"error": type(exc).__name__}
    body = {
        "generated_at": datetime.now(UTC).isoformat(),
        "version": __version__,
        "uptime_seconds": round(_uptime(state), 3),
        "features": features,
    }
    return no_store(jsonify(body))


def _uptime(state: ResilienceState) -> float:
    return time.monotonic() - state.started_monotonic
