"""The health blueprint: liveness with dependency checks, and the dashboard."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify

from ..state import ResilienceState, get_state
from ..version import __version__
from .auth import is_admin, stats_access

logger = logging.getLogger("flask_resilience")

health_blueprint = Blueprint("resilience_health", __name__)


def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


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
    # -- HTML dashboard (health/dashboard_page.py): a browser gets the page --
    from .dashboard_page import dashboard_page, prefers_html  # noqa: PLC0415 (it imports this module)

    if prefers_html():
        return dashboard_page()
    # -- end HTML dashboard --
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
