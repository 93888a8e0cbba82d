"""Flask-Resilience: circuit breakers, a two-layer cache, idempotency keys,
an audit log and health endpoints for production Flask APIs."""

from .breaker.api import (
    are_all_circuits_healthy,
    create_circuit_breaker,
    get_circuit_breaker_stats,
    reset_circuit_breaker_stats,
    with_circuit_breaker,
)
from .breaker.breaker import CircuitBreaker, CircuitOpenError
from .breaker.breaker import State as CircuitState
from .breaker.config import BreakerConfig
from .context import Principal, current_principal, current_request_id
from .extension import Resilience
from .health.auth import admin_required
from .problems import Problem
from .signals import circuit_state_changed
from .stores.redis import StoreUnavailableError
from .version import __version__

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Principal",
    "Problem",
    "Resilience",
    "StoreUnavailableError",
    "__version__",
    "admin_required",
    "are_all_circuits_healthy",
    "circuit_state_changed",
    "create_circuit_breaker",
    "current_principal",
    "current_request_id",
    "get_circuit_breaker_stats",
    "reset_circuit_breaker_stats",
    "with_circuit_breaker",
]
