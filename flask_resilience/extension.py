"""The extension object: wires configuration, stores, hooks and the blueprint."""

from __future__ import annotations

import atexit
import logging
import re
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, request

from . import config as cfg
from .audit.cli import register as register_audit_commands
from .audit.events import AuditEventType
from .audit.keys import app_keyring, warn_if_unkeyed
from .audit.service import AppAudit
from .audit.views import audit_blueprint, record_request
from .breaker.api import FEATURE as BREAKERS
from .breaker.breaker import CircuitBreaker
from .breaker.config import defaults_from_config
from .breaker.link import LocalSharing, Sharing
from .breaker.registry import BreakerRegistry
from .breaker.shared import RedisSharing
from .breaker.states import State as CircuitState
from .cache.access import CacheAccess
from .cache.service import AppCache
from .cli import resilience as resilience_cli
from .health import health_blueprint
from .health.blueprint import answer_routing_problems
from .idempotency.service import AppIdempotency
from .idempotency.views import Options as IdempotencyOptions
from .idempotency.views import protect_blueprint, protect_dispatch
from .lifecycle import install_signal_hook
from .metrics import fleet as fleet_metrics
from .middleware import RequestMiddleware
from .signals import circuit_state_changed, idempotency_conflict, idempotency_mismatch
from .state import (
    EXTENSION_NAME,
    AdminCheck,
    AppHooks,
    HealthCheck,
    PrincipalLoader,
    ResilienceState,
    get_state,
)
from .stores.redis import RedisStore, build_client
from .stores.sql import Database

_CACHE_ACCESS = CacheAccess()
logger = logging.getLogger("flask_resilience")

register_audit_commands(resilience_cli)

L = TypeVar("L", bound=PrincipalLoader)
A = TypeVar("A", bound=AdminCheck)
C = TypeVar("C", bound=Callable[[], object])
_CHECK_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_warned_no_redis = threading.Event()


class Resilience:
    """Flask-Resilience.

    ``options`` are the config keys without the ``RESILIENCE_`` prefix, in
    lower case (``redis_url=...``, ``admin_token=...``); they win over
    ``app.config``. Configuration is read once, in :meth:`init_app`.
    """

    def __init__(self, app: Flask | None = None, **options: object) -> None:
        cfg.check_options(options)
        self._options = options
        self.hooks = AppHooks()
        self.breakers = BreakerRegistry()
        self._audited_prefixes: list[tuple[str, str, bool, bool]] = []
        self._idempotent_prefixes: list[tuple[str, IdempotencyOptions]] = []
        self._states: weakref.WeakSet[ResilienceState] = weakref.WeakSet()
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._prefix_hooked: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._exit_hook_registered = False
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register on ``app``; raises RuntimeError when already registered and
        ValueError naming any invalid config key."""
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                f"Flask-Resilience is already registered on the app {app.name!r}; call init_app once per app."
            )
        config = cfg.resolve(app.config, self._options)
        breaker_defaults = defaults_from_config(config)
        redis_store = _redis_store(config)
        app_cache = AppCache.from_config(config, redis_store)
        database = Database(config[cfg.DATABASE_URI])
        keyring = app_keyring(app, config)
        warn_if_unkeyed(keyring, debug=app.debug, testing=app.testing)
        app_audit = AppAudit.from_config(config, database, Path(app.instance_path), keyring)
        app_idempotency = AppIdempotency.from_config(config, redis_store)
        state = ResilienceState(hooks=self.hooks, config=config, redis=redis_store, database=database)
        if state.redis is None and not _warned_no_redis.is_set():
            _warned_no_redis.set()  # once per process, not on every `flask` command
            logger.warning(
                "RESILIENCE_REDIS_URL is not set: circuit, cache and idempotency state "
                "is kept in this process only; set it when running more than one worker."
            )
        if config[cfg.ADMIN_TOKEN] in cfg.EXAMPLE_ADMIN_TOKENS:
            logger.warning(
                "RESILIENCE_ADMIN_TOKEN is an example value from the documentation: anyone who read "
                "it can use the admin endpoints; set a random one, e.g. secrets.token_urlsafe(32)."
            )
        self.breakers.configure(
            breaker_defaults, _breaker_sharing(config, state.redis), disabled=not config[cfg.BREAKER_ENABLED]
        )
        app.extensions[EXTENSION_NAME] = state
        self._states.add(state)
        state.features[BREAKERS] = self.breakers
        state.stats_providers["circuit_breakers"] = lambda _private: self.breakers.stats()
        app_cache.register(state)
        app_idempotency.register(state)
        protect_dispatch(app, self._idempotent_prefixes)
        app_audit.register(state)
        if app_audit.enabled:
            state.add_background(_audit_circuit_changes(app, app_audit, self.breakers))
            state.add_background(_IdempotencyAuditing(app, app_audit))
        install_signal_hook()

        _register_health_checks(state)
        state.stats_providers["stores"] = lambda _private: _stores_stats(state)
        fleet_metrics.install(app, state)  # only with PROMETHEUS_MULTIPROC_DIR set
        # What every request needs runs in one WSGI middleware; Flask hooks
        # only for the features that need them (each costs a dispatch per request).
        _install_middleware(app, state)
        self._apps.add(app)
        if self._audited_prefixes:
            self._audit_prefixes_on(app)
        if config[cfg.HEALTH_ENABLED]:
            answer_routing_problems(app, config[cfg.HEALTH_PREFIX])
        # Also reachable through the flask.commands entry point; registering it
        # here makes it part of app.cli (and of app.test_cli_runner()).
        app.cli.add_command(resilience_cli)
        if config[cfg.HEALTH_ENABLED]:
            app.register_blueprint(health_blueprint, url_prefix=config[cfg.HEALTH_PREFIX])

        if not self._exit_hook_registered:
            atexit.register(self.shutdown)
            self._exit_hook_registered = True

    def circuit_breaker(self, name: str, **config: Any) -> CircuitBreaker:
        """The breaker called ``name``, created with ``config`` on first use.

        Callable at import time, before ``init_app``; the app's
        ``RESILIENCE_BREAKER_DEFAULTS`` fill in what ``config`` leaves out.
        Raises ValueError for invalid parameters.
        """
        return self.breakers.get_or_create(name, **config)

    def health_check(self, name: str, *, critical: bool | None = None) -> Callable[[C], C]:
        """Decorator: add the app's own dependency check to the health endpoints.

        The check returns anything for up, ``"degraded"`` for partly working
        or ``False`` for not configured, and raises when the dependency is
        down. ``critical=True`` makes ``/ready`` answer 503 while it is down;
        None leaves it to ``RESILIENCE_HEALTH_CRITICAL``.
        """
        if not isinstance(name, str) or not _CHECK_NAME.fullmatch(name):
            raise ValueError(f"a health check name must match [A-Za-z0-9._-]{{1,64}}, got {name!r}")

        def register(check: C) -> C:
            self.hooks.health_checks[name] = HealthCheck(name, check, critical)
            return check

        return register

    @property
    def cache(self) -> CacheAccess:
        """The current app's data cache: ``get``, ``set``, ``delete``,
        ``get_or_set``, ``write_through``, ``write_behind``, ``memoize``,
        ``delete_memoized`` (``memoize`` works before any app exists)."""
        return _CACHE_ACCESS

    def audit_blueprint(
        self,
        blueprint: Blueprint | str,
        event_type: AuditEventType | str = AuditEventType.ADMIN,
        *,
        include_body: bool = True,
        include_query: bool = True,
    ) -> Blueprint | str:
        """Audit every request to a blueprint's views, or to every URL under a
        prefix such as ``"/api/admin"`` (the seed's ``auditMiddleware``)."""
        if isinstance(blueprint, Blueprint):
            return audit_blueprint(
                blueprint, event_type, include_body=include_body, include_query=include_query
            )
        if not blueprint.startswith("/"):
            raise ValueError(f"a URL prefix must start with '/', got {blueprint!r}")
        self._audited_prefixes.append((blueprint.rstrip("/"), str(event_type), include_body, include_query))
        for app in list(self._apps):
            self._audit_prefixes_on(app)
        return blueprint

    def _audit_prefixes_on(self, app: Flask) -> None:
        """Register the URL-prefix auditing hook on ``app`` (once)."""
        if app in self._prefix_hooked:
            return
        self._prefix_hooked.add(app)
        prefixes = self._audited_prefixes

        def audit_prefixes(response: Response) -> Response:
            path = request.path
            for prefix, event_type, include_body, include_query in prefixes:
                if path == prefix or path.startswith(prefix + "/"):
                    record_request(event_type, response.status_code, include_body, include_query)
                    break
            return response

        app.after_request(audit_prefixes)

    def idempotent_blueprint(self, blueprint: Blueprint | str, **settings: Any) -> Blueprint | str:
        """Protect every view of a blueprint, or every URL under a prefix such
        as ``"/api/payments"`` (the seed's ``replayProtectionMiddleware``);
        ``settings`` as for ``@idempotent``."""
        if isinstance(blueprint, Blueprint):
            return protect_blueprint(blueprint, **settings)
        if not blueprint.startswith("/"):
            raise ValueError(f"a URL prefix must start with '/', got {blueprint!r}")
        self._idempotent_prefixes.append((blueprint.rstrip("/"), IdempotencyOptions(**settings)))
        return blueprint

    def principal_loader(self, loader: L) -> L:
        """Decorator: ``loader()`` returns the current caller's user id, or None."""
        self.hooks.principal_loader = loader
        return loader

    def admin_check(self, check: A) -> A:
        """Decorator: ``check()`` returns True when the current caller is an admin."""
        self.hooks.admin_check = check
        return check

    def state(self, app: Flask | None = None) -> ResilienceState:
        """The per-app state of ``app`` (default: the current app)."""
        return get_state(app)

    def shutdown(self) -> None:
        """Stop every background thread of every app, flushing what they hold."""
        for state in list(self._states):
            state.shutdown()


def _install_middleware(app: Flask, state: ResilienceState) -> None:
    front = AppCache.of(app).front
    front.app_config = app.config
    if front.enabled and getattr(app.wsgi_app, "__func__", None) is not type(app).wsgi_app:
        # A middleware installed before init_app sits between the tier and
        # Flask: whatever it does (rewrite the host, path or method, refuse a
        # request) would not happen on a front hit. The tier stays idle.
        front.enabled = False
        logger.info("a WSGI middleware wraps app.wsgi_app before init_app: the cache's front tier stays idle")
    app.wsgi_app = RequestMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        id_header=state.config[cfg.REQUEST_ID_HEADER],
        redis=state.redis,
        front=front,
        views=app.view_functions,
    )


def _redis_store(config: cfg.Config) -> RedisStore | None:
    url = config[cfg.REDIS_URL]
    cluster = config[cfg.REDIS_CLUSTER]
    if url is None and not isinstance(cluster, tuple):
        return None
    client = build_client(
        url,
        cluster,
        socket_timeout=config[cfg.REDIS_SOCKET_TIMEOUT],
        connect_timeout=config[cfg.REDIS_CONNECT_TIMEOUT],
    )
    return RedisStore(client, config[cfg.KEY_PREFIX])


class _CircuitAuditing:
    """Records this extension's circuits opening and closing (as decided in
    this process); ``stop()`` disconnects it."""

    def __init__(self, receiver: Callable[..., None]) -> None:
        self._receiver = receiver
        circuit_state_changed.connect(receiver, weak=False)

    def stop(self) -> None:
        circuit_state_changed.disconnect(self._receiver)


def _audit_circuit_changes(app: Flask, audit: AppAudit, breakers: BreakerRegistry) -> _CircuitAuditing:
    app_ref = weakref.ref(app)

    def record(breaker: object, **change: Any) -> None:
        new = change["new"]
        if change.get("source") != "local" or new not in (CircuitState.OPEN, CircuitState.CLOSED):
            return
        if breakers.get(str(change["name"])) is not breaker:
            return
        target = app_ref()
        if target is None:
            return
        with target.app_context():
            audit.record(
                {
                    "event_type": "CIRCUIT_OPENED" if new is CircuitState.OPEN else "CIRCUIT_CLOSED",
                    "severity": "WARNING" if new is CircuitState.OPEN else "INFO",
                    "resource": "circuit_breaker",
                    "resource_id": change["name"],
                    "details": {"from": str(change["old"]), "to": str(new)},
                }
            )

    return _CircuitAuditing(record)


class _IdempotencyAuditing:
    """Records this app's idempotency conflicts and mismatches (sent as
    signals, so idempotency and audit do not import each other)."""

    def __init__(self, app: Flask, audit: AppAudit) -> None:
        self._audit = audit
        self._app = weakref.ref(app)
        idempotency_conflict.connect(self._record, app, weak=False)
        idempotency_mismatch.connect(self._record, app, weak=False)

    def _record(self, sender: object, **refusal: Any) -> None:
        status = refusal["status"]
        self._audit.record(
            {
                "event_type": "IDEMPOTENCY_CONFLICT",
                "status": "FAILURE",
                "severity": "WARNING",
                "http_status": status,
                "details": {"reason": "in progress" if status == 409 else "different request"},
            }
        )

    def stop(self) -> None:
        app = self._app()
        if app is not None:
            idempotency_conflict.disconnect(self._record, app)
            idempotency_mismatch.disconnect(self._record, app)


def _breaker_sharing(config: cfg.Config, redis_store: RedisStore | None) -> Sharing:
    if config[cfg.BREAKER_STORAGE] != "redis":
        return LocalSharing()
    if redis_store is None:
        raise ValueError(
            "RESILIENCE_BREAKER_STORAGE='redis' needs RESILIENCE_REDIS_URL "
            "(or RESILIENCE_REDIS_CLUSTER startup nodes)"
        )
    return RedisSharing(redis_store)


def _register_health_checks(state: ResilienceState) -> None:
    redis_store = state.redis
    if redis_store is not None:

        def redis_check() -> bool:
            redis_store.ping()
            return True

        state.health_checks["redis"] = redis_check
    state.health_checks["database"] = state.database.ping


def _stores_stats(state: ResilienceState) -> dict[str, object]:
    redis_store = state.redis
    if redis_store is None:
        return {"backend": "memory"}
    subscriber = redis_store.subscriber
    return {
        "backend": "redis-cluster" if redis_store.is_cluster else "redis",
        "key_prefix": redis_store.prefix,
        "pubsub": {"connects": subscriber.connects, "disconnects": subscriber.disconnects},
    }
