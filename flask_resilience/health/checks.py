"""The health check registry: which dependencies are checked, which of them
are critical, and how one check is run and reported.

A check is a callable: returning ``False`` means "not configured" (left out
of the report), ``"degraded"`` reports a dependency that works partly, any
other return means up, and raising means down. Only a critical check that is
down makes ``/ready`` (and the summary) answer 503: every feature keeps
working without Redis (the cache serves from L1 and the view, breakers decide
locally) except fail-closed idempotency, so Redis is critical only when that
is in use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..config import AUDIT_SPILL_PATH, HEALTH_CRITICAL
from ..idempotency.views import fail_closed_declared
from ..state import ResilienceState

logger = logging.getLogger("flask_resilience.health")

CheckFunction = Callable[[], object]


@dataclass(frozen=True)
class HealthCheck:
    name: str
    run: CheckFunction
    critical: bool | None = None  # None: RESILIENCE_HEALTH_CRITICAL (or its default) decides


@dataclass(frozen=True)
class CheckReport:
    name: str
    status: str  # up | down | degraded
    critical: bool
    latency_ms: float
    error: BaseException | None = None

    def as_dict(self, *, details: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "status": self.status,
            "critical": self.critical,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.error is not None:
            body["error"] = type(self.error).__name__
            if details:
                body["detail"] = str(self.error)
        return body


def default_critical(state: ResilienceState) -> frozenset[str]:
    """The database when the audit log must be durable (no spill file to fall
    back on); Redis when fail-closed idempotency is in use."""
    names = set()
    if state.audit.enabled and (state.config[AUDIT_SPILL_PATH] or "").lower() == "off":
        names.add("database")
    if state.redis is not None and state.idempotency.enabled and fail_closed_declared():
        names.add("redis")
    return frozenset(names)


def registered_checks(state: ResilienceState) -> Iterator[HealthCheck]:
    """The built-in checks of this app, then the app's own (``@resilience.health_check``)."""
    for name, run in state.health_checks.items():
        yield HealthCheck(name, run)
    yield from state.extension.custom_health_checks.values()


def run_checks(state: ResilienceState) -> list[CheckReport]:
    configured = state.config[HEALTH_CRITICAL]
    critical_names = default_critical(state) if configured is None else frozenset(configured)
    reports = []
    for check in registered_checks(state):
        critical = check.critical if check.critical is not None else check.name in critical_names
        report = _run(check, critical)
        if report is not None:
            reports.append(report)
    return reports


def _run(check: HealthCheck, critical: bool) -> CheckReport | None:
    started = time.perf_counter()
    try:
        result = check.run()
    except Exception as exc:
        logger.warning("health check %s failed: %s", check.name, exc)
        return CheckReport(check.name, "down", critical, _since(started), exc)
    if result is False:
        return None  # not configured
    status = "degraded" if result == "degraded" else "up"
    return CheckReport(check.name, status, critical, _since(started))


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
