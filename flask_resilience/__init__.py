"""Flask-Resilience: circuit breakers, a two-layer cache, idempotency keys,
an audit log and health endpoints for production Flask APIs."""

from .audit.api import (
    create_audit_log,
    get_audit_stats,
    log_auth_event,
    log_data_change,
    log_security_alert,
    reset_audit_stats,
    start_audit_log_flushing,
    stop_audit_log_flushing,
)
from .audit.events import AuditEntry, AuditEventType, AuditStatus, Severity
from .audit.views import audit_blueprint, audited
from .breaker.api import (
    are_all_circuits_healthy,
    create_circuit_breaker,
    get_circuit_breaker_stats,
    reset_circuit_breaker_stats,
    with_circuit_breaker,
)
from .breaker.breaker import CircuitBreaker
from .breaker.config import BreakerConfig
from .breaker.states import CircuitOpenError
from .breaker.states import State as CircuitState
from .cache.api import (
    clear_all_caches,
    get_cache_stats,
    invalidate_cache,
    invalidate_cache_by_pattern,
    invalidate_cache_by_tag,
    reset_cache_stats,
    warmup_cache,
    warmup_view,
)
from .cache.strategies import CacheStrategy, InvalidationStrategy
from .cache.views import cached, invalidates
from .context import Principal, current_principal, current_request_id
from .extension import Resilience
from .health.auth import admin_required
from .idempotency.api import (
    clear_all_idempotency_keys,
    get_replay_protection_stats,
    invalidate_idempotency_key,
    reset_replay_protection_stats,
)
from .idempotency.views import idempotent
from .logs import RequestIdFilter
from .problems import Problem
from .signals import circuit_state_changed
from .stores.redis import StoreUnavailableError
from .version import __version__

__all__ = [
    "AuditEntry",
    "AuditEventType",
    "AuditStatus",
    "BreakerConfig",
    "CacheStrategy",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "InvalidationStrategy",
    "Principal",
    "Problem",
    "RequestIdFilter",
    "Resilience",
    "Severity",
    "StoreUnavailableError",
    "__version__",
    "admin_required",
    "are_all_circuits_healthy",
    "audit_blueprint",
    "audited",
    "cached",
    "circuit_state_changed",
    "clear_all_caches",
    "clear_all_idempotency_keys",
    "create_audit_log",
    "create_circuit_breaker",
    "current_principal",
    "current_request_id",
    "get_audit_stats",
    "get_cache_stats",
    "get_circuit_breaker_stats",
    "get_replay_protection_stats",
    "idempotent",
    "invalidate_cache",
    "invalidate_cache_by_pattern",
    "invalidate_cache_by_tag",
    "invalidate_idempotency_key",
    "invalidates",
    "log_auth_event",
    "log_data_change",
    "log_security_alert",
    "reset_audit_stats",
    "reset_cache_stats",
    "reset_circuit_breaker_stats",
    "reset_replay_protection_stats",
    "start_audit_log_flushing",
    "stop_audit_log_flushing",
    "warmup_cache",
    "warmup_view",
    "with_circuit_breaker",
]
