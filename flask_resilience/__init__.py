"""Flask-Resilience: circuit breakers, a two-layer cache, idempotency keys,
an audit log and health endpoints for production Flask APIs."""

from .context import Principal, current_principal, current_request_id
from .extension import Resilience
from .health.auth import admin_required
from .problems import Problem
from .stores.redis import StoreUnavailableError
from .version import __version__

__all__ = [
    "Principal",
    "Problem",
    "Resilience",
    "StoreUnavailableError",
    "__version__",
    "admin_required",
    "current_principal",
    "current_request_id",
]
