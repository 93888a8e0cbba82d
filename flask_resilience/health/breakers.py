"""Circuit breaker endpoints of the health blueprint."""

from __future__ import annotations

from flask import Response, jsonify

from ..breaker.api import breakers_of
from ..breaker.breaker import CircuitBreaker
from ..breaker.states import State
from ..problems import Problem
from .auth import admin_required, stats_access
from .blueprint import health_blueprint, no_store
from .inputs import json_object, string_field

_OPERATOR_STATES = ("CLOSED", "FORCED_OPEN", "DISABLED", "METRICS_ONLY")


def _not_shared(names: list[str]) -> Problem:
    return Problem(
        503,
        "circuit-state-not-shared",
        "Circuit state not shared",
        f"Shared storage is unavailable: the change to {', '.join(names)} holds in this process "
        "only and is replaced by the shared state when storage is back. Retry then.",
        headers={"Retry-After": "5"},
    )


def _breaker(name: str) -> CircuitBreaker:
    breaker = breakers_of().get(name)
    if breaker is None:
        raise Problem(
            404, "unknown-circuit-breaker", "Unknown circuit breaker", f"No circuit breaker {name!r}."
        )
    return breaker


@health_blueprint.get("/circuit-breakers")
def circuit_breakers() -> Response:
    """Every breaker's state and statistics (admin unless RESILIENCE_HEALTH_PUBLIC)."""
    stats_access()
    registry = breakers_of()
    for breaker in registry:  # the shared state, not a copy a message has not reached yet
        if not breaker.refresh():
            break  # Redis does not answer: one timeout, and the others show their copies
    return no_store(jsonify(healthy=registry.all_healthy(), circuit_breakers=registry.stats()))


@health_blueprint.post("/circuit-breakers/reset")
@admin_required
def reset_circuit_breakers() -> Response:
    """Admin: ``{"name": ...}`` resets one breaker; no body resets all."""
    name = string_field(json_object(required=False), "name", required=False)
    registry = breakers_of()
    targets = [_breaker(name)] if name is not None else list(registry)
    not_shared = [breaker.name for breaker in targets if not breaker.reset()]
    if not_shared:
        raise _not_shared(not_shared)
    return no_store(jsonify(reset=[breaker.name for breaker in targets]))


@health_blueprint.post("/circuit-breakers/<name>/state")
@admin_required
def set_circuit_breaker_state(name: str) -> Response:
    """Admin: ``{"state": "CLOSED"|"FORCED_OPEN"|"DISABLED"|"METRICS_ONLY"}``."""
    breaker = _breaker(name)
    wanted = string_field(json_object(required=True), "state", required=True)
    if wanted not in _OPERATOR_STATES:
        raise Problem(
            400,
            "invalid-circuit-state",
            "Invalid circuit state",
            f"'state' must be one of {', '.join(_OPERATOR_STATES)}.",
        )
    if not breaker.set_state(State(wanted)):
        raise _not_shared([breaker.name])
    return no_store(jsonify(breaker.stats()))
