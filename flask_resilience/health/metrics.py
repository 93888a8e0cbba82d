"""``GET /api/health/metrics``: every feature's figures in the Prometheus text format.

Built per scrape from the same statistics the other endpoints show, through
``prometheus_client`` (the ``prometheus`` extra); summed over gunicorn
workers when ``PROMETHEUS_MULTIPROC_DIR`` is set. Labels never name users.
The families live in :mod:`flask_resilience.metrics`.
"""

from __future__ import annotations

from flask import Response

from ..metrics import exposition
from ..problems import Problem
from ..state import get_state
from .auth import stats_access
from .blueprint import health_blueprint


@health_blueprint.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition (admin unless RESILIENCE_HEALTH_PUBLIC)."""
    stats_access()
    try:
        body, content_type = exposition(get_state())
    except ImportError:
        raise Problem(
            501,
            "metrics-unavailable",
            "Metrics need prometheus_client",
            "Install flask-resilience[prometheus] to serve metrics.",
        ) from None
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response
