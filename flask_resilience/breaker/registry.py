"""The named breakers of one extension object.

Breakers are usually created at import time, before ``init_app``; the app's
configuration (defaults, storage, the global switch) reaches them when
``init_app`` runs, without changing what each breaker was explicitly given.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from .breaker import CircuitBreaker
from .config import PARAMETERS, build_config
from .shared import SharedState

_VALID_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_registries: weakref.WeakSet[BreakerRegistry] = weakref.WeakSet()


class BreakerRegistry:
    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._defaults: dict[str, Any] = {}
        self._shared: SharedState | None = None
        self._disabled = False
        _registries.add(self)

    def get_or_create(self, name: str, **explicit: Any) -> CircuitBreaker:
        """The breaker called ``name``, created with ``explicit`` on first use.

        Asking again with different (non-callable) parameters is an error:
        one name is one circuit.
        """
        if not isinstance(name, str) or not _VALID_NAME.fullmatch(name):
            raise ValueError(f"a circuit breaker name must match [A-Za-z0-9._:-]{{1,128}}, got {name!r}")
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                breaker = CircuitBreaker(name, build_config(self._defaults, explicit), explicit=explicit)
                if self._shared is not None or self._disabled:
                    breaker.reconfigure(self._defaults, self._shared, disabled=self._disabled)
                self._breakers[name] = breaker
                return breaker
        if explicit and _comparable(explicit) != _comparable(breaker.explicit):
            raise ValueError(
                f"circuit breaker {name!r} already exists with other parameters "
                f"({_comparable(breaker.explicit)}); fetch it without parameters"
            )
        return breaker

    def get(self, name: str) -> CircuitBreaker | None:
        return self._breakers.get(name)

    def __iter__(self) -> Iterator[CircuitBreaker]:
        with self._lock:
            return iter(list(self._breakers.values()))

    def configure(self, defaults: Mapping[str, Any], shared: SharedState | None, *, disabled: bool) -> None:
        """Apply an app's breaker settings to every breaker, now and later."""
        with self._lock:
            self._defaults = dict(defaults)
            self._shared = shared
            self._disabled = disabled
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.reconfigure(self._defaults, shared, disabled=disabled)
        if shared is not None:
            shared.listen(self.get, self.mark_all_stale)

    def mark_all_stale(self) -> None:
        for breaker in self:
            breaker.mark_stale()

    def stats(self) -> dict[str, dict[str, object]]:
        return {breaker.name: breaker.stats() for breaker in self}

    def all_healthy(self) -> bool:
        return all(breaker.is_healthy for breaker in self)


def validate_defaults(defaults: object) -> dict[str, Any]:
    """Check ``RESILIENCE_BREAKER_DEFAULTS`` (raises ValueError naming the problem)."""
    if not isinstance(defaults, Mapping):
        raise ValueError("expected a mapping of circuit breaker parameters")
    unknown = sorted(set(defaults) - PARAMETERS)
    if unknown:
        raise ValueError(f"unknown circuit breaker parameter(s): {', '.join(unknown)}")
    build_config(defaults, {})
    return dict(defaults)


def _comparable(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in parameters.items() if not callable(value) or isinstance(value, type)}


def _after_fork_in_child() -> None:
    # Another process may have changed shared circuits while this one was
    # being forked; read them again before the next call.
    for registry in list(_registries):
        registry.mark_all_stale()


os.register_at_fork(after_in_child=_after_fork_in_child)
