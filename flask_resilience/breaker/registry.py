"""The named breakers of one extension object.

Breakers are usually created at import time, before ``init_app``; the app's
configuration (defaults, storage, the global switch) reaches them when
``init_app`` runs, without changing what each breaker was explicitly given.

One extension object's breakers are process-wide (a breaker is called
outside any app context too), so every app registered with the same
extension must agree on the breaker settings: a second ``init_app`` with
other ones raises RuntimeError naming the setting, instead of silently
reconfiguring the first app's circuits.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

from ..lifecycle import on_fork
from .breaker import CircuitBreaker
from .config import build_config
from .link import LocalSharing, Sharing

_VALID_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_registries: weakref.WeakSet[BreakerRegistry] = weakref.WeakSet()


class BreakerRegistry:
    def __init__(self) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._defaults: dict[str, Any] = {}
        self._sharing: Sharing = LocalSharing()
        self._disabled = False
        self._configured: dict[str, object] | None = None
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
                if self._configured is not None:
                    breaker.reconfigure(self._defaults, self._sharing.link(breaker), disabled=self._disabled)
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

    def configure(self, defaults: Mapping[str, Any], sharing: Sharing, *, disabled: bool) -> None:
        """Apply an app's breaker settings to every breaker, now and later.

        Raises RuntimeError when another app already configured these
        breakers with other settings.
        """
        wanted = {
            "RESILIENCE_BREAKER_DEFAULTS": _comparable(defaults),
            "RESILIENCE_BREAKER_ENABLED": not disabled,
            "RESILIENCE_BREAKER_STORAGE": sharing.location,
        }
        with self._lock:
            if self._configured is not None:
                _check_same(self._configured, wanted)
                return
            self._configured = wanted
            self._defaults = dict(defaults)
            self._sharing = sharing
            self._disabled = disabled
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.reconfigure(self._defaults, sharing.link(breaker), disabled=disabled)
        sharing.listen()

    def mark_all_stale(self) -> None:
        self._sharing.mark_all_stale()

    def stats(self) -> dict[str, dict[str, object]]:
        return {breaker.name: breaker.stats() for breaker in self}

    def all_healthy(self) -> bool:
        return all(breaker.is_healthy for breaker in self)


def _check_same(configured: Mapping[str, object], wanted: Mapping[str, object]) -> None:
    for key, value in wanted.items():
        if configured[key] != value:
            raise RuntimeError(
                f"{key} differs from the app these circuit breakers were first registered with "
                f"({configured[key]!r} vs {value!r}); a Resilience object's breakers are shared "
                "by every app it is registered on: give this app its own Resilience() or the same setting."
            )


def _comparable(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in parameters.items() if not callable(value) or isinstance(value, type)}


def _after_fork_in_child() -> None:
    # Another process may have changed shared circuits while this one was
    # being forked; read them again before the next call.
    for registry in list(_registries):
        registry.mark_all_stale()


on_fork(_after_fork_in_child)
