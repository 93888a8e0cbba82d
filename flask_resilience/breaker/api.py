"""The seed's circuit breaker functions, as thin calls on the current app."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

from flask import Flask

from ..state import get_state
from .breaker import CircuitBreaker
from .registry import BreakerRegistry

FEATURE = "breakers"


def breakers_of(app: Flask | None = None) -> BreakerRegistry:
    """The breakers of ``app`` (default: the current app)."""
    return cast("BreakerRegistry", get_state(app).features[FEATURE])


def _registry() -> BreakerRegistry:
    return breakers_of()


def create_circuit_breaker(name: str, **config: Any) -> CircuitBreaker:
    """The breaker called ``name`` (created with ``config`` on first use)."""
    return _registry().get_or_create(name, **config)


def with_circuit_breaker(name: str, fn: Callable[..., Any], *args: Any, **config: Any) -> Any:
    """Call ``fn(*args)`` under the breaker ``name``; for an ``async def`` fn,
    returns the awaitable. Breaker parameters go in keyword arguments.

    Arguments ``fn`` cannot take raise TypeError before anything is called or
    counted: a caller's mistake must never trip a circuit.
    """
    _check_arguments(fn, args)
    breaker = _registry().get_or_create(name, **config)
    if inspect.iscoroutinefunction(fn):
        return breaker.call_async(fn, *args)
    return breaker.call(fn, *args)


def _check_arguments(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature to check against
        return
    try:
        signature.bind(*args)
    except TypeError as exc:
        if args and isinstance(args[0], Mapping):
            raise TypeError(
                f"with_circuit_breaker(name, fn, {{...}}): {exc}. Circuit breaker configuration "
                "goes in keyword arguments: with_circuit_breaker(name, fn, failure_threshold=3)."
            ) from None
        raise TypeError(f"with_circuit_breaker: {exc}") from None


def get_circuit_breaker_stats() -> dict[str, dict[str, object]]:
    """Statistics of every breaker, by name."""
    return _registry().stats()


def reset_circuit_breaker_stats(name: str | None = None) -> None:
    """Reset one breaker (or all): CLOSED, empty window, zeroed statistics.

    Raises KeyError for an unknown name.
    """
    registry = _registry()
    if name is None:
        for breaker in registry:
            breaker.reset()
        return
    named = registry.get(name)
    if named is None:
        raise KeyError(name)
    named.reset()


def are_all_circuits_healthy() -> bool:
    """False while any circuit rejects calls (OPEN, HALF_OPEN or FORCED_OPEN)."""
    return _registry().all_healthy()
