"""Settings of the health and metrics blueprint and its admin access."""

from __future__ import annotations

from typing import Any

from ..validators import admin_token, boolean, optional_string_list, positive_number, url_prefix
from .setting import Setting

HEALTH_ENABLED = Setting(
    "RESILIENCE_HEALTH_ENABLED",
    True,
    boolean,
    "Register the health and metrics blueprint.",
)
HEALTH_PREFIX = Setting(
    "RESILIENCE_HEALTH_PREFIX",
    "/api/health",
    url_prefix,
    "URL prefix of the health blueprint.",
)
HEALTH_PUBLIC = Setting(
    "RESILIENCE_HEALTH_PUBLIC",
    False,
    boolean,
    "Serve statistics to non-admins (never per-user figures).",
)
HEALTH_CRITICAL = Setting[tuple[str, ...] | None](
    "RESILIENCE_HEALTH_CRITICAL",
    None,
    optional_string_list,
    "Health checks whose failure makes /ready answer 503 (names, comma-separated); unset: the "
    "database when the audit log has no spill file, Redis when fail-closed idempotency is used.",
)
HEALTH_SHOW_VERSION = Setting(
    "RESILIENCE_HEALTH_SHOW_VERSION",
    False,
    boolean,
    "Show the extension's version in the public health summary (admins always see it).",
)
HEALTH_CHECK_TIMEOUT = Setting(
    "RESILIENCE_HEALTH_CHECK_TIMEOUT",
    2.0,
    positive_number,
    "Seconds a health check may take before it is reported down (a hanging dependency must "
    "not hold the probe).",
)
ADMIN_TOKEN = Setting(
    "RESILIENCE_ADMIN_TOKEN",
    None,
    admin_token,
    "Bearer token for admin endpoints (at least 16 characters). Unset and no "
    "admin check: admin endpoints answer 403.",
)

SECTION: tuple[Setting[Any], ...] = (
    HEALTH_ENABLED,
    HEALTH_PREFIX,
    HEALTH_PUBLIC,
    HEALTH_CRITICAL,
    HEALTH_SHOW_VERSION,
    HEALTH_CHECK_TIMEOUT,
    ADMIN_TOKEN,
)
