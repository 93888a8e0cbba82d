"""The dashboard: every feature's statistics as JSON at ``GET <prefix>/dashboard``,
and as one self-contained HTML page (no external assets).

The page is served for ``GET <prefix>/dashboard`` when the client prefers
HTML, and at ``<prefix>/dashboard.html``. The page carries no figures: it fetches the
JSON dashboard with the admin token the user types in (kept in the tab's
``sessionStorage``), so it needs no protection of its own and the JSON's
protection applies unchanged. A Content-Security-Policy allows exactly its
own inline script and style, and requests to this origin.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from datetime import UTC, datetime
from importlib import resources

from flask import Response, jsonify, request, url_for
from markupsafe import escape

from ..config import HEALTH_SHOW_VERSION
from ..state import get_state
from ..version import __version__
from .auth import stats_access
from .blueprint import health_blueprint, logger, no_store, uptime

_JSON_URL_PLACEHOLDER = "__JSON_URL__"


@functools.cache
def _template() -> tuple[str, str]:
    """The page's HTML and its Content-Security-Policy (read once)."""
    html = resources.files(__package__).joinpath("dashboard.html").read_text("utf-8")

    def digest(tag: str) -> str:
        match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        assert match is not None, f"dashboard.html has no <{tag}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode() + "'"

    policy = (
        f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, policy


def prefers_html() -> bool:
    """True when the request's Accept header ranks HTML above JSON (a browser)."""
    return request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html"


@health_blueprint.get("/dashboard.html")
def dashboard_page() -> Response:
    """The HTML dashboard; it reads the JSON dashboard every few seconds."""
    html, policy = _template()
    json_url = url_for(".dashboard")
    response = Response(html.replace(_JSON_URL_PLACEHOLDER, str(escape(json_url))), mimetype="text/html")
    response.headers["Content-Security-Policy"] = policy
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Vary"] = "Accept"
    return response


@health_blueprint.get("/dashboard")
def dashboard() -> Response:
    """The statistics of every feature (admin-only unless RESILIENCE_HEALTH_PUBLIC)."""
    if prefers_html():  # a browser gets the page
        return dashboard_page()
    include_private = stats_access()
    state = get_state()
    features: dict[str, object] = {}
    for name, provider in state.stats_providers.items():
        try:
            features[name] = dict(provider(include_private))
        except Exception as exc:
            logger.exception("stats provider %s failed", name)
            features[name] = {"error": type(exc).__name__}
    body: dict[str, object] = {"generated_at": datetime.now(UTC).isoformat()}
    if include_private or state.config[HEALTH_SHOW_VERSION]:  # public only when configured
        body["version"] = __version__
    body.update(uptime_seconds=round(uptime(state), 3), features=features)
    return no_store(jsonify(body))
