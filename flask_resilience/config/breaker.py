"""Settings of the circuit breakers."""

from __future__ import annotations

from typing import Any

from ..validators import boolean, breaker_defaults, one_of
from .setting import Setting

BREAKER_ENABLED = Setting(
    "RESILIENCE_BREAKER_ENABLED",
    True,
    boolean,
    "False puts every circuit breaker in DISABLED: calls pass, nothing trips.",
    env="CIRCUIT_BREAKER_ENABLED",
)
BREAKER_DEFAULTS = Setting[dict[str, Any]](
    "RESILIENCE_BREAKER_DEFAULTS",
    {},
    breaker_defaults,
    "Parameters applied to every circuit breaker unless it names its own.",
)
BREAKER_STORAGE = Setting(
    "RESILIENCE_BREAKER_STORAGE",
    "local",
    one_of("local", "redis"),
    "'redis' shares circuit state across processes and hosts (needs RESILIENCE_REDIS_URL).",
)

SECTION: tuple[Setting[Any], ...] = (
    BREAKER_ENABLED,
    BREAKER_DEFAULTS,
    BREAKER_STORAGE,
)
