"""``@idempotent``, blueprint and prefix protection: the Flask glue of idempotency keys.

Every form runs one policy, :func:`run_protected`, right around the view:
after every app and blueprint ``before_request`` hook (so the app's own
authentication answers first and the principal is the one it set), as the
view decorator or at dispatch for blueprints and URL prefixes.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, TypeVar, cast

from flask import Blueprint, Flask, Request, Response, current_app, g, make_response, request
from werkzeug.exceptions import HTTPException

from ..context import dispatch_principal
from ..problems import Problem
from ..stores.redis import StoreUnavailableError
from ..validators import check_ttl
from .flight import Flight
from .protocol import (
    FINGERPRINT_CHOICES,
    ON_ERROR_CHOICES,
    Completed,
    Decision,
    InvalidKey,
    Record,
    Unreadable,
    check_choice,
    decide,
    fingerprint,
    parse_key,
    record_key,
)
from .replays import replay
from .service import AppIdempotency

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("flask_resilience.idempotency")

_G_OPTIONS = "_resilience_idempotency"
_blueprints_protected = False  # set once any blueprint is protected, in this process
_DISPATCH_MARK = "_resilience_idempotency_dispatch"
_DECORATED_MARK = "_resilience_idempotent"


_fail_closed = threading.Event()


def fail_closed_declared() -> bool:
    """Whether this process protects anything fail-closed (then Redis is a
    critical dependency for the health checks)."""
    return _fail_closed.is_set()


@dataclass(frozen=True)
class Options:
    """The settings of ``@idempotent`` and of blueprint/prefix protection
    (raises ValueError for an invalid ``ttl``, ``wait``, ``on_error`` or
    ``fingerprint``)."""

    ttl: int | None = None
    methods: Iterable[str] = ("POST", "PUT", "PATCH", "DELETE")
    required: bool = False
    auto_generate: bool | None = None
    key_func: Callable[[Request], str | None] | None = None
    header: str = "Idempotency-Key"
    fail_open: bool = False
    wait: int = 0
    on_error: str | None = None
    fingerprint: str = "raw"

    def __post_init__(self) -> None:
        check_ttl(self.ttl)
        if not self.fail_open:
            _fail_closed.set()
        wait = self.wait
        if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
            raise ValueError(f"wait must be a number of milliseconds >= 0, got {wait!r}")
        check_choice("on_error", self.on_error, ON_ERROR_CHOICES)
        check_choice("fingerprint", self.fingerprint, FINGERPRINT_CHOICES)
        object.__setattr__(self, "methods", frozenset(method.upper() for method in self.methods))


def idempotent(ttl: int | None = None, **settings: Any) -> Callable[[F], F]:
    """Run the view at most once per idempotency key; replay its outcome to retries.

    Settings as :class:`Options`: ``ttl`` seconds (default
    ``RESILIENCE_IDEMPOTENCY_TTL``); ``methods``; ``required``;
    ``auto_generate`` (default ``RESILIENCE_IDEMPOTENCY_AUTO_GENERATE``);
    ``key_func``; ``header``; ``fail_open``; ``wait`` (milliseconds a
    duplicate waits for the first request's response before a 409);
    ``on_error`` (``"store"`` or ``"release"``, default
    ``RESILIENCE_IDEMPOTENCY_ON_ERROR``); ``fingerprint`` (``"raw"`` or
    ``"json"``). Works on sync and ``async def`` views.
    """
    options = Options(ttl, **settings)

    def decorator(view: F) -> F:
        # Flask's ensure_sync, decided once: a sync view is called as is.
        is_async = inspect.iscoroutinefunction(view)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if is_async:
                return run_protected(options, lambda: current_app.ensure_sync(view)(*args, **kwargs))
            return run_protected(options, lambda: view(*args, **kwargs))

        setattr(wrapper, _DECORATED_MARK, True)
        return cast(F, wrapper)

    return decorator


def protect_blueprint(blueprint: Blueprint, **settings: Any) -> Blueprint:
    """Protect every view of ``blueprint`` (the seed's ``replayProtectionMiddleware``).

    The blueprint's hook only marks the request; the protection itself runs
    at dispatch, after every ``before_request`` hook of the app and blueprint.
    """
    global _blueprints_protected  # noqa: PLW0603 (tells dispatch whether to look at all)
    options = Options(**settings)

    def mark() -> None:
        setattr(g, _G_OPTIONS, options)

    blueprint.before_request(mark)
    _blueprints_protected = True
    return blueprint


def protect_dispatch(app: Flask, prefixes: list[tuple[str, Options]]) -> None:
    """Run ``app``'s views under protection when their blueprint is protected
    or their URL is under one of ``prefixes`` (read at each request)."""
    dispatch = app.dispatch_request
    if getattr(dispatch, _DISPATCH_MARK, False):
        return

    def dispatch_request() -> Any:
        if not (prefixes or _blueprints_protected):
            return dispatch()  # nothing is protected wholesale: every request pays only this test
        options: Options | None = g.__dict__.pop(_G_OPTIONS, None)
        if options is None and prefixes:
            path = request.path
            for prefix, candidate in prefixes:
                if path == prefix or path.startswith(prefix + "/"):
                    options = candidate
                    break
        if options is None or _decorated(app, request):
            return dispatch()  # unprotected, or the view's own @idempotent decides
        return run_protected(options, dispatch)

    setattr(dispatch_request, _DISPATCH_MARK, True)
    app.dispatch_request = dispatch_request  # type: ignore[method-assign]


def _decorated(app: Flask, req: Request) -> bool:
    rule = req.url_rule
    view = app.view_functions.get(rule.endpoint) if rule is not None else None
    return bool(getattr(view, _DECORATED_MARK, False))


def run_protected(options: Options, view: Callable[[], Any]) -> Any:
    """The one policy: claim the key (or answer for the view), run the view,
    keep its outcome as the key's outcome."""
    service = AppIdempotency.of()
    req: Request = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
    if not service.enabled or req.method not in options.methods:
        return view()
    flight = _begin(service, options, req)
    if flight is None:
        return view()
    if isinstance(flight, Response):
        return flight
    try:
        response = make_response(view())
    except HTTPException as exc:  # abort(403) is an answer, and is kept like one
        response = _error_response(exc)
    except Exception as exc:
        handled = _handled(exc)
        if handled is None:
            flight.crashed()
            raise
        response = handled
    except BaseException:
        flight.crashed()
        raise
    return flight.finish(response)


def _handled(exc: Exception) -> Response | None:
    """The app's own handler's answer for ``exc``, or None when it has none."""
    try:
        return make_response(current_app.handle_user_exception(exc))
    except Exception as raised:
        if raised is exc:
            return None
        raise


def _error_response(error: HTTPException) -> Response:
    """What the app answers for ``error`` (its handler, or the default page)."""
    handled = current_app.handle_http_exception(error)
    if isinstance(handled, HTTPException):
        return make_response(handled.get_response())
    return make_response(handled)


def _key(service: AppIdempotency, options: Options, req: Request, endpoint: str) -> str | None:
    """The request's key (sent, or generated), or None to run unprotected;
    raises the 400 problems."""
    raw = options.key_func(req) if options.key_func else req.environ.get(_environ_key(options.header))
    if raw is not None:
        try:
            return parse_key(raw)
        except InvalidKey as exc:
            service.counters.count("invalid_key", endpoint)
            raise Problem(400, "idempotency-key-invalid", "Invalid Idempotency-Key", str(exc)) from None
    if options.required:
        service.counters.count("missing_key", endpoint)
        raise Problem(
            400,
            "idempotency-key-missing",
            "Idempotency-Key is missing",
            f"This endpoint requires an '{options.header}' header.",
        )
    if service.auto_generate if options.auto_generate is None else options.auto_generate:
        return str(uuid.uuid4())
    service.counters.count("unprotected", endpoint)
    return None


def _begin(service: AppIdempotency, options: Options, req: Request) -> Flight | Response | None:
    """Claim the key (a Flight), answer for the view (replay, 409, 422 raised
    as problems), or None to run it unprotected."""
    endpoint = req.endpoint or req.path
    key = _key(service, options, req, endpoint)
    if key is None:
        return None
    principal = dispatch_principal()
    scope = principal.key if principal is not None else None
    route = req.url_rule.rule if req.url_rule is not None else req.path
    environ = req.environ
    print_ = fingerprint(
        req.method,
        req.path,
        req.query_string.decode("latin-1"),
        environ.get("CONTENT_TYPE"),  # what req.headers.get("Content-Type") reads, without its lookups
        b"" if environ.get("CONTENT_LENGTH") == "0" else req.get_data(cache=True),
        mode=options.fingerprint,
    )
    flight = Flight(
        service,
        options,
        key=key,
        record_key=record_key(scope or "anonymous", key, route),
        fingerprint=print_,
        endpoint=endpoint,
        scope=scope,
    )
    service.counters.count("requests", endpoint)
    remembered = service.memory.get(flight.record_key)
    if remembered is not None:
        return _answer(flight, options, remembered, read_at=None)
    return _claim(flight, options)


def _claim(flight: Flight, options: Options) -> Flight | Response | None:
    """Claim the key in the store: the flight, an answer, or None (fail open)."""
    service, endpoint = flight.service, flight.endpoint
    read_at = time.monotonic()  # before the read: a copy of it must not outlive a later invalidation
    try:
        began = perf_counter_ns()
        claim = service.records.claim(flight.record_key, flight.fingerprint, service.lease)
        service.lock_wait["claim"].since(began)
    except StoreUnavailableError as exc:
        service.counters.count("store_errors", endpoint)
        if options.fail_open:
            logger.warning("idempotency store unavailable, running %s unprotected: %s", endpoint, exc)
            service.counters.count("fail_open", endpoint)
            return None
        raise Problem(
            503,
            "idempotency-store-unavailable",
            "Idempotency store unavailable",
            "The request was not run, so that it cannot run twice. Retry later.",
            headers={"Retry-After": "5", options.header: flight.key},
        ) from None
    if claim.owner is None:
        return _answer(flight, options, claim.existing, read_at=read_at)
    service.counters.count("first_executions", endpoint)
    flight.claimed(claim.claimed)
    return flight


def _answer(flight: Flight, options: Options, existing: Record | None, *, read_at: float | None) -> Response:
    """A replay, or raise the 409/422 problem, for a key another request holds
    (``read_at``: when the store was read; None for a record from memory)."""
    service = flight.service
    decision = decide(existing, flight.fingerprint, service.clock())
    if decision is Decision.IN_PROGRESS and options.wait:
        began = perf_counter_ns()
        existing = _wait_for_completion(service, flight.record_key, options.wait) or existing
        service.lock_wait["in_progress"].since(began)
        decision = decide(existing, flight.fingerprint, service.clock())
    headers = {options.header: flight.key}
    if decision is Decision.REPLAY:
        assert isinstance(existing, Completed)
        service.counters.count("replays", flight.endpoint)
        if read_at is not None:
            service.memory.put(flight.record_key, existing, read_at)
        return replay(existing, options.header, flight.key, reused=read_at is None)
    if decision is Decision.MISMATCH:
        service.refused(422, flight.endpoint, flight.scope)
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key is already used",
            "This key was used with a different request (method, path, query, content type or body). "
            "Use a new key.",
            headers=headers,
        )
    if decision is Decision.UNREADABLE:
        service.counters.count("unreadable_records", flight.endpoint)
        logger.error(
            "idempotency record %s of %s is unreadable (written by another version, or damaged): "
            "the request was not run; forget the key once no version reads it",
            flight.record_key,
            flight.endpoint,
        )
        raise Problem(
            503,
            "idempotency-record-unreadable",
            "Idempotency record unreadable",
            "This key's record was written by another version of this service, or is damaged. "
            "The request was not run, so that it cannot run twice. Retry later.",
            headers={**headers, "Retry-After": "5"},
        )
    # IN_PROGRESS, or PROCEED for a record that expired between claim and read: retry.
    service.refused(409, flight.endpoint, flight.scope)
    raise Problem(
        409,
        "idempotency-request-in-progress",
        "A request is outstanding for this Idempotency-Key",
        "The first request with this key is still running. Retry after a moment to get its response.",
        headers={**headers, "Retry-After": "1"},
    )


def _wait_for_completion(service: AppIdempotency, where: str, wait_ms: int) -> Completed | Unreadable | None:
    pause = threading.Event()
    # Elapsed time, not the (injectable, steppable) wall clock records expire by.
    deadline = time.monotonic() + wait_ms / 1000
    while time.monotonic() < deadline:
        pause.wait(0.01)
        try:
            found = service.records.get(where)
        except StoreUnavailableError:
            return None  # answer 409: the client retries later
        if isinstance(found, Completed | Unreadable):  # an unreadable one will not turn readable here
            return found
        if found is None:  # released: the first request failed
            return None
    return None


@functools.lru_cache(maxsize=64)
def _environ_key(header: str) -> str:
    """Where WSGI puts ``header`` (what ``request.headers.get(header)`` reads)."""
    name = header.upper().replace("-", "_")
    return name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
