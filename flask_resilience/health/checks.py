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
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app

from ..audit.service import FEATURE as AUDIT
from ..audit.service import AppAudit
from ..config import AUDIT_SPILL_PATH, HEALTH_CHECK_TIMEOUT, HEALTH_CRITICAL
from ..idempotency.service import FEATURE as IDEMPOTENCY
from ..idempotency.service import AppIdempotency
from ..idempotency.views import fail_closed_declared
from ..state import HealthCheck, ResilienceState

logger = logging.getLogger("flask_resilience.health")


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
    if (
        cast("AppAudit", state.features[AUDIT]).enabled
        and (state.config[AUDIT_SPILL_PATH] or "").lower() == "off"
    ):
        names.add("database")
    if (
        state.redis is not None
        and cast("AppIdempotency", state.features[IDEMPOTENCY]).enabled
        and fail_closed_declared()
    ):
        names.add("redis")
    return frozenset(names)


def registered_checks(state: ResilienceState) -> Iterator[HealthCheck]:
    """The built-in checks of this app, then the app's own
    (``@resilience.health_check``); an own check of a built-in's name replaces it."""
    custom = state.hooks.health_checks
    for name, run in state.health_checks.items():
        if name not in custom:
            yield HealthCheck(name, run)
    yield from custom.values()


def run_checks(state: ResilienceState) -> list[CheckReport]:
    """Every check, run side by side; one still running after
    ``RESILIENCE_HEALTH_CHECK_TIMEOUT`` seconds is reported down."""
    configured = state.config[HEALTH_CRITICAL]
    critical_names = default_critical(state) if configured is None else frozenset(configured)
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    deadline = time.monotonic() + state.config[HEALTH_CHECK_TIMEOUT]
    checks = list(registered_checks(state))
    _warn_unknown_critical(critical_names, checks)
    runs = [
        (check, check.critical if check.critical is not None else check.name in critical_names,
         _start(state, check, app))
        for check in checks
    ]  # fmt: skip
    reports = []
    for check, critical, run in runs:
        report = run.report(check, critical, deadline)
        if report is not None:
            reports.append(report)
    return reports


def _warn_unknown_critical(critical_names: frozenset[str], checks: list[HealthCheck]) -> None:
    """Log once per name a critical name that no check has (a typo would
    silently leave the dependency non-critical)."""
    unknown = critical_names - {check.name for check in checks} - _warned_unknown
    for name in sorted(unknown):
        _warned_unknown.add(name)
        logger.warning(
            "RESILIENCE_HEALTH_CRITICAL names %r, but no health check has that name (checks: %s)",
            name,
            ", ".join(sorted(check.name for check in checks)) or "none",
        )


_warned_unknown: set[str] = set()


class _Run:
    """One check running in a thread of its own, so that a dependency that
    hangs (a connect into a black hole) cannot hold the probe."""

    def __init__(self, check: HealthCheck, app: Flask) -> None:
        self.done = threading.Event()
        self.started = time.perf_counter()
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(check, app), name=f"resilience-health-{check.name}", daemon=True
        )
        self.thread.start()

    def _run(self, check: HealthCheck, app: Flask) -> None:
        try:
            with app.app_context():
                self.result = check.run()
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def report(self, check: HealthCheck, critical: bool, deadline: float) -> CheckReport | None:
        if not self.done.wait(max(0.0, deadline - time.monotonic())):
            timeout = TimeoutError(f"no answer within {_since(self.started) / 1000:.1f} s")
            logger.warning("health check %s failed: %s", check.name, timeout)
            return CheckReport(check.name, "down", critical, _since(self.started), timeout)
        if self.error is not None:
            logger.warning("health check %s failed: %s", check.name, self.error)
            return CheckReport(check.name, "down", critical, _since(self.started), self.error)
        if self.result is False:
            return None  # not configured
        status = "degraded" if self.result == "degraded" else "up"
        return CheckReport(check.name, status, critical, _since(self.started))


def _start(state: ResilienceState, check: HealthCheck, app: Flask) -> _Run:
    """A new run of ``check``, or the one still in flight: a hung check
    occupies one thread, however many probes ask meanwhile."""
    with _in_flight_lock:
        in_flight = _in_flight.setdefault(state, {})
        running = in_flight.get(check.name)
        if running is not None and running.thread.is_alive() and not running.done.is_set():
            return running
        run = _Run(check, app)
        in_flight[check.name] = run
        return run


# Per app (its state), by check name; a forked worker sees the parent's
# threads as not alive and starts its own.
_in_flight: weakref.WeakKeyDictionary[ResilienceState, dict[str, _Run]] = weakref.WeakKeyDictionary()
_in_flight_lock = threading.Lock()


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
