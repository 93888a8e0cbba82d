"""The health blueprint: the summary, liveness and readiness probes (the
dashboard is in ``dashboard_page.py``)."""

from __future__ import annotations

import logging
import time
from typing import NoReturn

from flask import Blueprint, Flask, Request, Response, jsonify
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from ..config import HEALTH_SHOW_VERSION
from ..problems import Problem
from ..state import ResilienceState, get_state
from ..version import __version__
from .auth import is_admin
from .checks import run_checks

logger = logging.getLogger("flask_resilience.health")

health_blueprint = Blueprint("resilience_health", __name__)


def no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def answer_routing_problems(app: Flask, prefix: str) -> None:
    """A 404 or 405 under the health prefix answers problem+json.

    Flask never shows routing errors to a blueprint's error handlers, so this
    wraps the app's ``raise_routing_exception``, which runs only when routing
    failed: the rest of the app keeps its own pages, and requests that
    routed pay nothing.
    """
    original = app.raise_routing_exception

    def raise_routing_exception(failed: Request) -> NoReturn:
        _raise_problem(failed, prefix)
        original(failed)

    app.raise_routing_exception = raise_routing_exception  # type: ignore[method-assign,assignment]


def _raise_problem(failed: Request, prefix: str) -> None:
    error = failed.routing_exception
    if not isinstance(error, (NotFound, MethodNotAllowed, RequestRedirect)):
        return
    path = failed.path
    if path != prefix and not path.startswith(prefix + "/"):
        return
    if isinstance(error, RequestRedirect):  # repeated slashes: werkzeug's 308 has an HTML body
        raise Problem(
            308,
            "moved-permanently",
            "Permanent redirect",
            f"This endpoint is at {error.new_url}.",
            headers={"Location": error.new_url},
        )
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        raise Problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            f"{failed.method} is not allowed here; use {allowed}.",
            headers={"Allow": allowed},
        )
    raise Problem(404, "not-found", "Not found", "No health endpoint at this URL.")


@health_blueprint.get("", strict_slashes=False)
def health() -> tuple[Response, int]:
    """Public summary: ``ok``; ``degraded`` (still 200) when a non-critical
    dependency is down or degraded; ``unavailable`` (503) when a critical one is down."""
    state = get_state()
    reports = run_checks(state)
    admin = is_admin() if any(report.error is not None for report in reports) else None
    failing = [report.name for report in reports if report.status == "down"]
    critical_down = [report.name for report in reports if report.status == "down" and report.critical]
    if critical_down:
        status = "unavailable"
    elif failing or any(report.status == "degraded" for report in reports):
        status = "degraded"
    else:
        status = "ok"
    body: dict[str, object] = {"status": status, "uptime_seconds": round(uptime(state), 3)}
    if state.config[HEALTH_SHOW_VERSION] or (admin if admin is not None else is_admin()):
        body["version"] = __version__
    body["checks"] = {report.name: report.as_dict(details=bool(admin)) for report in reports}
    if failing:
        body["failing"] = failing
    return no_store(jsonify(body)), 503 if critical_down else 200


@health_blueprint.get("/live")
def live() -> Response:
    """Liveness: 200 whenever the process can answer; checks no dependency."""
    return no_store(jsonify(status="ok"))


@health_blueprint.get("/ready")
def ready() -> tuple[Response, int]:
    """Readiness: 503 only when a critical dependency is down; each check
    reports up, down or degraded with its latency (details for admins only)."""
    reports = run_checks(get_state())
    admin = any(report.error is not None for report in reports) and is_admin()
    critical_down = [report.name for report in reports if report.status == "down" and report.critical]
    body: dict[str, object] = {
        "status": "unavailable" if critical_down else "ready",
        "checks": {report.name: report.as_dict(details=admin) for report in reports},
    }
    if critical_down:
        body["failing"] = critical_down
    return no_store(jsonify(body)), 503 if critical_down else 200


def uptime(state: ResilienceState) -> float:
    return time.monotonic() - state.started_monotonic
