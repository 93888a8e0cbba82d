"""Per-app state, kept in ``app.extensions["resilience"]`` and reached
through ``current_app``; the extension object itself never holds an app.

The state knows no feature: each feature registers its service in
``ResilienceState.features`` from ``init_app`` and offers a typed accessor
(``AppCache.of(app)``). What the application plugs in (principal loader,
admin check, its own health checks) reaches the features through
:class:`AppHooks`, which the extension object fills."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

from flask import Flask, current_app, has_app_context

from .config import Config
from .stores.redis import RedisStore
from .stores.sql import Database

EXTENSION_NAME = "resilience"
logger = logging.getLogger("flask_resilience")

BuiltinCheck = Callable[[], bool]
"""Returns True when the dependency is up, False when it is not configured
(left out of the report); raises when it is down."""

CheckFunction = Callable[[], object]
PrincipalLoader = Callable[[], "str | int | None"]
AdminCheck = Callable[[], bool]

StatsProvider = Callable[[bool], Mapping[str, object]]
"""Returns a feature's statistics; the argument says whether figures that
name users may be included (the caller is an admin)."""


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass(frozen=True)
class HealthCheck:
    """A check the application added with ``@resilience.health_check``."""

    name: str
    run: CheckFunction
    critical: bool | None = None  # None: RESILIENCE_HEALTH_CRITICAL (or its default) decides


@dataclass(eq=False)
class AppHooks:
    """What the application plugged into the extension object; shared by
    every app that object is registered on, and read at request time (a
    decorator applied after ``init_app`` still counts)."""

    principal_loader: PrincipalLoader | None = None
    admin_check: AdminCheck | None = None
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)


@dataclass(eq=False)
class ResilienceState:
    """Everything the extension keeps for one app."""

    hooks: AppHooks
    config: Config
    redis: RedisStore | None
    database: Database
    features: dict[str, Any] = field(default_factory=dict)
    """Feature name -> its service for this app; each feature registers
    itself here in ``init_app`` and reads itself back, typed, with
    ``<Service>.of()`` (``Any`` so that the per-request accessor needs no cast)."""
    started_monotonic: float = field(default_factory=time.monotonic)
    health_checks: dict[str, BuiltinCheck] = field(default_factory=dict)
    stats_providers: dict[str, StatsProvider] = field(default_factory=dict)
    background: list[Stoppable] = field(default_factory=list)

    def add_background(self, service: Stoppable) -> None:
        """Register something that ``shutdown()`` must stop (and flush)."""
        self.background.append(service)

    def shutdown(self) -> None:
        """Stop background work, newest first; one failure does not stop the rest.

        Idempotent, and the services stay registered: one used after a first
        shutdown (an entry recorded by a request that was still running) is
        stopped and flushed again by the next one (atexit).
        """
        for service in reversed(self.background):
            try:
                service.stop()
            except Exception:
                logger.exception("error while stopping %r", service)
        if self.redis is not None:
            self.redis.close()
        self.database.dispose()


def get_state(app: Flask | None = None) -> ResilienceState:
    """The state of ``app`` (default: the current app).

    Raises :class:`RuntimeError` when there is no app context or the extension
    was never registered on the app.
    """
    if app is None:
        if not has_app_context():
            raise RuntimeError(
                "Flask-Resilience needs an application context; call this inside a "
                "request or 'with app.app_context():'."
            )
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        state: ResilienceState = app.extensions[EXTENSION_NAME]
    except KeyError:
        raise RuntimeError(
            f"Flask-Resilience is not registered on the app {app.name!r}. "
            "Did you forget to call 'resilience.init_app(app)'?"
        ) from None
    return state


class Feature:
    """Base of a feature's per-app service (``AppCache``, ``AppAudit``, ...):
    :meth:`register` puts it in ``state.features`` under ``feature_name``,
    :meth:`of` reads it back, typed, with one dict lookup."""

    feature_name: ClassVar[str]

    @classmethod
    def of(cls, app: Flask | None = None) -> Self:
        """This feature's service of ``app`` (default: the current app)."""
        service: Self = get_state(app).features[cls.feature_name]  # set by register()
        return service

    def register(self, state: ResilienceState) -> None:
        """Become ``state``'s service for this feature; a feature adds its
        stats provider and background work."""
        state.features[self.feature_name] = self
