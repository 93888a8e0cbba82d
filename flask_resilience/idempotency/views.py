"""``@idempotent`` and blueprint-wide protection: the Flask glue of idempotency keys."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from flask import Blueprint, Request, Response, current_app, g, make_response, request
from werkzeug.exceptions import HTTPException

from ..context import current_principal
from ..problems import Problem
from ..state import get_state
from ..stores.redis import StoreUnavailableError
from ..validators import check_ttl
from .records import Completed, InFlight
from .service import AppIdempotency

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("flask_resilience.idempotency")

_G_PLAN = "_resilience_idempotency"
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,255}")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"')
_STORED_STATUSES = frozenset(range(200, 300)) | (frozenset(range(400, 500)) - {409, 429})


_fail_closed = threading.Event()


def fail_closed_declared() -> bool:
    """Whether this process protects anything fail-closed (then Redis is a
    critical dependency for the health checks)."""
    return _fail_closed.is_set()


@dataclass(frozen=True)
class Options:
    """The settings of ``@idempotent`` and of blueprint/prefix protection
    (raises ValueError for an invalid ``ttl`` or ``wait``)."""

    ttl: int | None = None
    methods: Iterable[str] = ("POST", "PUT", "PATCH", "DELETE")
    required: bool = False
    auto_generate: bool | None = None
    key_func: Callable[[Request], str | None] | None = None
    header: str = "Idempotency-Key"
    fail_open: bool = False
    wait: int = 0

    def __post_init__(self) -> None:
        check_ttl(self.ttl)
        if not self.fail_open:
            _fail_closed.set()
        wait = self.wait
        if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
            raise ValueError(f"wait must be a number of milliseconds >= 0, got {wait!r}")
        object.__setattr__(self, "methods", frozenset(method.upper() for method in self.methods))


def idempotent(
    ttl: int | None = None,
    *,
    methods: Iterable[str] = ("POST", "PUT", "PATCH", "DELETE"),
    required: bool = False,
    auto_generate: bool | None = None,
    key_func: Callable[[Request], str | None] | None = None,
    header: str = "Idempotency-Key",
    fail_open: bool = False,
    wait: int = 0,
) -> Callable[[F], F]:
    """Run the view at most once per idempotency key; replay its response to retries.

    ``ttl`` seconds (default ``RESILIENCE_IDEMPOTENCY_TTL``); ``auto_generate``
    defaults to ``RESILIENCE_IDEMPOTENCY_AUTO_GENERATE``; ``wait`` is how many
    milliseconds a duplicate waits for the first request's response before a 409.
    """
    options = Options(
        ttl,
        methods=methods,
        required=required,
        auto_generate=auto_generate,
        key_func=key_func,
        header=header,
        fail_open=fail_open,
        wait=wait,
    )

    def decorator(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Response:
                plan = _Plan.begin(options)
                if isinstance(plan, Response):
                    return plan
                try:
                    response = make_response(await view(*args, **kwargs))
                except HTTPException as exc:  # abort(400) is an answer, and is stored like one
                    response = _error_response(exc)
                except BaseException:
                    plan.fail()
                    raise
                return plan.finish(response)

            return cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            plan = _Plan.begin(options)
            if isinstance(plan, Response):
                return plan
            try:
                response = make_response(view(*args, **kwargs))
            except HTTPException as exc:  # abort(400) is an answer, and is stored like one
                response = _error_response(exc)
            except BaseException:
                plan.fail()
                raise
            return plan.finish(response)

        return cast(F, wrapper)

    return decorator


def protect_blueprint(blueprint: Blueprint, **settings: Any) -> Blueprint:
    """Protect every view of ``blueprint`` (the seed's ``replayProtectionMiddleware``)."""
    options = Options(**settings)
    blueprint.before_request(lambda: _before(options))
    blueprint.after_request(_after)
    blueprint.teardown_request(_teardown)
    return blueprint


def protect_prefix_hooks(
    prefixes: list[tuple[str, Options]],
) -> tuple[
    Callable[[], Response | None], Callable[[Response], Response], Callable[[BaseException | None], None]
]:
    """App-wide before/after/teardown hooks protecting every URL under the given prefixes."""

    def before() -> Response | None:
        for prefix, options in prefixes:
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return _before(options)
        return None

    return before, _after, _teardown


def _before(options: Options) -> Response | None:
    plan = _Plan.begin(options)
    if isinstance(plan, Response):
        return plan
    setattr(g, _G_PLAN, plan)
    return None


def _after(response: Response) -> Response:
    plan: _Plan | None = g.pop(_G_PLAN, None)
    return response if plan is None else plan.finish(response)


def _teardown(error: BaseException | None) -> None:
    plan: _Plan | None = g.pop(_G_PLAN, None)
    if plan is not None:
        plan.fail()


def _error_response(error: HTTPException) -> Response:
    """What the app answers for ``error`` (its handler, or the default page)."""
    handled = current_app.handle_http_exception(error)
    if isinstance(handled, HTTPException):
        return make_response(handled.get_response())
    return make_response(handled)


def parse_key(value: str) -> str:
    """The key from a header value: bare, or an RFC 8941 string; raises a 400 Problem."""
    value = value.strip()
    if value.startswith('"'):
        match = _SF_STRING.fullmatch(value)
        if match is None:
            raise _invalid_key("the quoted key is not a valid structured-field string")
        value = match.group(1).replace('\\"', '"').replace("\\\\", "\\")
    if not _PRINTABLE.fullmatch(value):
        raise _invalid_key("a key is 1 to 255 printable ASCII characters")
    return value


def _invalid_key(detail: str) -> Problem:
    return Problem(400, "idempotency-key-invalid", "Invalid Idempotency-Key", detail)


def _digest(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
        digest.update(b"\x00")
    return digest.hexdigest()


class _Plan:
    """One protected request that holds the claim on its key."""

    def __init__(
        self,
        service: AppIdempotency,
        options: Options,
        *,
        key: str,
        record_key: str,
        fingerprint: str,
        owner: str,
    ) -> None:
        self.service = service
        self.options = options
        self.key = key
        self.record_key = record_key
        self.fingerprint = fingerprint
        self.owner = owner
        self.endpoint = request.endpoint or request.path
        self.done = False

    @classmethod
    def begin(cls, options: Options) -> _Plan | Response:
        """Claim the key, or answer for the view (replay, 400, 409, 422, 503)."""
        service = get_state().idempotency
        if not service.enabled or request.method not in options.methods:
            return _Unprotected()
        endpoint = request.endpoint or request.path
        raw = options.key_func(request) if options.key_func else request.headers.get(options.header)
        if raw is None:
            auto = service.auto_generate if options.auto_generate is None else options.auto_generate
            if options.required:
                service.stats.count("missing_key", endpoint)
                raise Problem(
                    400,
                    "idempotency-key-missing",
                    "Idempotency-Key is missing",
                    f"This endpoint requires an '{options.header}' header.",
                )
            if not auto:
                service.stats.count("unprotected", endpoint)
                return _Unprotected()
            key = str(uuid.uuid4())
        else:
            try:
                key = parse_key(raw)
            except Problem:
                service.stats.count("invalid_key", endpoint)
                raise
        principal = current_principal()
        scope = principal.key if principal is not None else "anonymous"
        route = request.url_rule.rule if request.url_rule is not None else request.path
        # The method is not part of the record: the same key on another method
        # is a different request with a reused key (422), as the draft says.
        record_key = f"{_digest(scope)[:32]}:{_digest(key)[:32]}:{_digest(route)[:16]}"
        query = "&".join(sorted(request.query_string.decode("latin-1").split("&")))
        fingerprint = _digest(request.method, request.path, query, request.get_data(cache=True))
        service.stats.count("requests", endpoint)
        remembered = service.remembered(record_key)
        if remembered is not None:
            return _answer_existing(
                service, options, key=key, record_key=record_key, fingerprint=fingerprint, existing=remembered
            )
        try:
            claim = service.store.claim(record_key, fingerprint, service.lease)
        except StoreUnavailableError as exc:
            service.stats.count("store_errors", endpoint)
            if options.fail_open:
                logger.warning("idempotency store unavailable, running %s unprotected: %s", endpoint, exc)
                service.stats.count("fail_open", endpoint)
                return _Unprotected()
            raise Problem(
                503,
                "idempotency-store-unavailable",
                "Idempotency store unavailable",
                "The request was not run, so that it cannot run twice. Retry later.",
                headers={"Retry-After": "5", options.header: key},
            ) from None
        if claim.owner is None:
            return _answer_existing(
                service,
                options,
                key=key,
                record_key=record_key,
                fingerprint=fingerprint,
                existing=claim.existing,
            )
        service.stats.count("first_executions", endpoint)
        return cls(
            service, options, key=key, record_key=record_key, fingerprint=fingerprint, owner=claim.owner
        )

    def finish(self, response: Response) -> Response:
        """Store the response for replays (or give the key back), and mark it."""
        if self.done:
            return response
        self.done = True
        storable = (
            response.status_code in _STORED_STATUSES
            and not response.is_streamed
            and len(response.get_data()) <= self.service.max_body_bytes
        )
        try:
            if storable:
                record = Completed(
                    fingerprint=self.fingerprint,
                    created_at=self.service.store.clock(),
                    status=response.status_code,
                    headers=self.service.stored_headers(response),
                    body=response.get_data(),
                )
                if self.service.store.complete(
                    self.record_key,
                    self.fingerprint,
                    self.owner,
                    record,
                    self.options.ttl or self.service.ttl,
                ):
                    self.service.remember(self.record_key, record, self.options.ttl or self.service.ttl)
                else:
                    self.service.stats.count("lease_lost", self.endpoint)
            else:
                self.service.store.release(self.record_key, self.fingerprint, self.owner)
        except StoreUnavailableError as exc:
            # The view ran: its response must reach the client. A retry after the
            # lease may run it again; say so loudly.
            self.service.stats.count("store_errors", self.endpoint)
            logger.error("idempotency record for %s could not be stored: %s", self.endpoint, exc)
        response.headers[self.options.header] = self.key
        response.headers["X-Idempotency-Replayed"] = "false"
        return response

    def fail(self) -> None:
        """The view raised: give the key back so that the client may retry."""
        if self.done:
            return
        self.done = True
        try:
            self.service.store.release(self.record_key, self.fingerprint, self.owner)
        except StoreUnavailableError:
            self.service.stats.count("store_errors", self.endpoint)


class _Unprotected(_Plan):
    """A request the decorator lets through untouched."""

    def __init__(self) -> None:
        self.done = True

    def finish(self, response: Response) -> Response:
        return response

    def fail(self) -> None:
        return None


def _answer_existing(
    service: AppIdempotency,
    options: Options,
    *,
    key: str,
    record_key: str,
    fingerprint: str,
    existing: Completed | InFlight | None,
) -> Response:
    endpoint = request.endpoint or request.path
    headers = {options.header: key}
    if isinstance(existing, InFlight) and existing.fingerprint == fingerprint and options.wait:
        existing = _wait_for_completion(service, record_key, options.wait) or existing
    if existing is not None and existing.fingerprint != fingerprint:
        service.stats.count("mismatches", endpoint)
        service.audit_conflict(key, 422)
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key is already used",
            "This key was used with a different request (method, path, query or body). Use a new key.",
            headers=headers,
        )
    if isinstance(existing, Completed):
        service.stats.count("replays", endpoint)
        service.remember(record_key, existing, service.ttl)
        return replay(existing, options.header, key)
    service.stats.count("conflicts", endpoint)
    service.audit_conflict(key, 409)
    raise Problem(
        409,
        "idempotency-request-in-progress",
        "A request is outstanding for this Idempotency-Key",
        "The first request with this key is still running. Retry after a moment to get its response.",
        headers={**headers, "Retry-After": "1"},
    )


def _wait_for_completion(service: AppIdempotency, record_key: str, wait_ms: int) -> Completed | None:
    pause = threading.Event()
    deadline = service.store.clock() + wait_ms / 1000
    while service.store.clock() < deadline:
        pause.wait(0.01)
        try:
            found = service.store.get(record_key)
        except StoreUnavailableError:
            return None  # answer 409: the client retries later
        if isinstance(found, Completed):
            return found
        if found is None:  # released: the first request failed
            return None
    return None


def replay(record: Completed, header: str, key: str) -> Response:
    """The stored response, byte for byte, marked as a replay."""
    response = Response(record.body, status=record.status, headers=list(record.headers))
    response.headers[header] = key
    response.headers["X-Idempotency-Replayed"] = "true"
    response.headers["X-Original-Timestamp"] = (
        datetime.fromtimestamp(record.created_at, UTC).isoformat().replace("+00:00", "Z")
    )
    return response
