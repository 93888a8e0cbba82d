"""``@cached`` and ``@invalidates``: the Flask glue of the cache."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Request, Response, make_response, request, session
from flask.typing import ResponseReturnValue

from ..context import current_principal
from ..state import get_state
from ..stores.redis import StoreUnavailableError
from ..validators import check_ttl
from .entry import CacheEntry
from .flight import wait_for_holder
from .rules import (
    base_key,
    etag_matches,
    response_refusal,
    stored_headers,
    strong_etag,
    varied_key,
)
from .service import AppCache
from .strategies import VIEW_STRATEGIES, CacheStrategy, InvalidationStrategy

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("flask_resilience.cache")
CACHE_ID = "flask-resilience"


@dataclass(frozen=True)
class ViewPolicy:
    ttl: int | None
    tags: tuple[str, ...]
    prefix: str
    key_func: Callable[[Request], str] | None
    condition: Callable[[Request], bool] | None
    per_user: bool
    query_args: tuple[str, ...] | None
    statuses: frozenset[int]


def cached(
    ttl: int | None = None,
    *,
    tags: Iterable[str] = (),
    prefix: str = "cache",
    key_func: Callable[[Request], str] | None = None,
    condition: Callable[[Request], bool] | None = None,
    per_user: bool = False,
    query_args: Sequence[str] | None = None,
    statuses: Collection[int] = (200,),
    strategy: CacheStrategy = CacheStrategy.CACHE_ASIDE,
    invalidation: InvalidationStrategy = InvalidationStrategy.TTL,
) -> Callable[[F], F]:
    """Cache a GET/HEAD view's response in both layers (see README for the HTTP rules).

    ``ttl`` in seconds (default ``RESILIENCE_CACHE_DEFAULT_TTL``); ``tags``
    for :func:`invalidate_cache_by_tag`; ``per_user`` keys on the caller's
    principal instead of bypassing requests that carry credentials;
    ``query_args`` limits which query parameters are part of the key.
    """
    check_ttl(ttl)
    if CacheStrategy(strategy) not in VIEW_STRATEGIES:
        raise ValueError(
            f"{strategy} is not a view strategy; use resilience.cache.write_through/write_behind"
        )
    tag_tuple = tuple(validate_tags(tags))
    if InvalidationStrategy(invalidation) is InvalidationStrategy.TAG_BASED and not tag_tuple:
        raise ValueError("invalidation=TAG_BASED needs tags")
    policy = ViewPolicy(
        ttl=ttl,
        tags=tag_tuple,
        prefix=prefix,
        key_func=key_func,
        condition=condition,
        per_user=per_user,
        query_args=None if query_args is None else tuple(query_args),
        statuses=frozenset(statuses),
    )

    def decorator(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Response:
                plan = _Plan.begin(policy)
                if plan.ready is not None:
                    return plan.ready
                if plan.bypass_reason is not None:
                    return plan.bypassed(make_response(await view(*args, **kwargs)))
                with plan.flight() as found:
                    if found is not None:
                        return found
                    return plan.store(make_response(await view(*args, **kwargs)))

            return cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            plan = _Plan.begin(policy)
            if plan.ready is not None:
                return plan.ready
            if plan.bypass_reason is not None:
                return plan.bypassed(make_response(view(*args, **kwargs)))
            with plan.flight() as found:
                if found is not None:
                    return found
                return plan.store(make_response(view(*args, **kwargs)))

        return cast(F, wrapper)

    return decorator


class _Plan:
    """One request through a cached view: look up, or compute and store."""

    def __init__(self, cache: AppCache, policy: ViewPolicy, key: str | None, bypass: str | None) -> None:
        self.cache = cache
        self.policy = policy
        self.key = key
        self.bypass_reason = bypass
        self.endpoint = request.endpoint or request.path
        self.ready: Response | None = None
        self.lock: str | None = None  # the key whose cross-process lock this request holds
        self.revalidate = False  # the client's no-cache, when the app honours it

    @classmethod
    def begin(cls, policy: ViewPolicy) -> _Plan:
        cache = get_state().cache
        bypass = cache.request_bypass_reason(policy)
        if bypass is not None:
            return cls(cache, policy, None, bypass)
        if policy.key_func is not None:
            key = f"{policy.prefix}:{policy.key_func(request)}"
        else:
            key = base_key(
                request,
                prefix=policy.prefix,
                query_args=policy.query_args,
                principal=current_principal() if policy.per_user else None,
            )
        plan = cls(cache, policy, key, None)
        plan.revalidate = (
            cache.honors_no_cache
            and "Cache-Control" in request.headers
            and bool(request.cache_control.no_cache)
        )
        if not plan.revalidate:
            plan.ready = plan.lookup_l1()
        return plan

    def lookup_l1(self) -> Response | None:
        assert self.key is not None
        layered = self.cache.layered
        entry = layered.get_l1(self.key)
        if entry is not None and entry.kind == "vary":
            entry = layered.get_l1(varied_key(self.key, request, _vary(entry)))
        if entry is None:
            return None
        layered.stats.count("l1_hits", self.endpoint)
        return self._respond(entry, "l1")

    def lookup_l2(self) -> Response | None:
        """Read L2 or take the cross-process lock in one round trip; when
        another process holds the lock, wait for what it stores."""
        assert self.key is not None
        layered = self.cache.layered
        timeout = self.cache.lock_timeout
        key = self.key
        entry, status = layered.get_l2_or_lock(key, timeout)
        if entry is not None and entry.kind == "vary":
            key = varied_key(key, request, _vary(entry))
            entry, status = layered.get_l2_or_lock(key, timeout)
        if entry is None and status == "busy":
            entry = wait_for_holder(layered, key, timeout)
            if entry is not None:
                layered.stats.count("collapsed", self.endpoint)
        if entry is not None:
            layered.stats.count("l2_hits", self.endpoint)
            return self._respond(entry, "l2")
        if status == "locked":
            self.lock = key
        return None

    @contextlib.contextmanager
    def flight(self) -> Iterator[Response | None]:
        """Single flight in this process; its leader then reads L2 or takes the
        cross-process lock. Yields a response found on the way, or None when
        the caller must run the view."""
        assert self.key is not None
        layered = self.cache.layered
        with self.cache.flight(self.key, self.cache.lock_timeout) as leader:
            try:
                if not leader:
                    found = self.lookup_l1()  # the leader has finished: it stored, or could not
                    if found is not None:
                        layered.stats.count("collapsed", self.endpoint)
                    yield found
                elif self.revalidate:
                    yield None
                else:
                    # A flight that ended just before this one began may have stored it.
                    yield self.lookup_l1() or self.lookup_l2()
            finally:
                if self.lock is not None:  # nothing was stored (an error, or a refusal)
                    layered.unlock(self.lock)
                    self.lock = None

    def bypassed(self, response: Response) -> Response:
        assert self.bypass_reason is not None
        self.cache.layered.stats.count_reason("bypasses", self.bypass_reason, self.endpoint)
        response.headers["X-Cache"] = "MISS"
        response.headers["Cache-Status"] = f"{CACHE_ID}; fwd=bypass; detail={self.bypass_reason}"
        return response

    def store(self, response: Response) -> Response:
        assert self.key is not None
        layered = self.cache.layered
        layered.stats.count("misses", self.endpoint)
        refusal = response_refusal(response, self.policy.statuses, self.cache.max_body_bytes)
        if refusal is None and session.modified:
            refusal = "session-modified"
        if refusal is not None:
            layered.stats.count_reason("not_stored", refusal, self.endpoint)
            response.headers["X-Cache"] = "MISS"
            response.headers["Cache-Status"] = f"{CACHE_ID}; fwd=uri-miss; detail=not-stored-{refusal}"
            return response
        body = response.get_data()
        now = layered.clock()
        ttl = self.policy.ttl or self.cache.default_ttl
        if "ETag" not in response.headers:
            response.headers["ETag"] = strong_etag(body)
        entry = CacheEntry(
            kind="response",
            body=body,
            created_at=now,
            expires_at=now + ttl,
            tags=layered.versions(self.policy.tags),
            status=response.status_code,
            headers=stored_headers(response, self.cache.extra_headers),
            etag=response.headers["ETag"],
        )
        key = self.key
        vary = sorted(response.vary) if "Vary" in response.headers else []
        if vary:
            layered.put(key, CacheEntry("vary", ",".join(vary).encode(), now, now + ttl, entry.tags))
            key = varied_key(key, request, vary)
        layered.put(key, entry, unlock=self.lock)
        self.lock = None
        response.headers["X-Cache"] = "MISS"
        response.headers["Cache-Status"] = f"{CACHE_ID}; fwd=uri-miss; stored"
        if entry.etag and etag_matches(request, entry.etag):
            return _not_modified(entry, response.headers.items())
        return response

    def _respond(self, entry: CacheEntry, layer: str) -> Response:
        now = self.cache.layered.clock()
        extra = (
            ("X-Cache", "HIT"),
            ("Cache-Status", f"{CACHE_ID}; hit; ttl={max(0, int(entry.expires_at - now))}; detail={layer}"),
            ("Age", str(max(0, int(now - entry.created_at)))),
        )
        headers = [*entry.headers, *extra]
        if entry.etag and etag_matches(request, entry.etag):
            return _not_modified(entry, headers)
        return Response(entry.body, status=entry.status, headers=headers)


def _vary(marker: CacheEntry) -> list[str]:
    return marker.body.decode().split(",")


def _not_modified(entry: CacheEntry, headers: Iterable[tuple[str, str]]) -> Response:
    """A 304 with the validators and caching headers a 200 would carry (RFC 9110 §15.4.5)."""
    response = Response(status=304)
    for name, value in headers:
        if name.lower() not in ("content-length", "content-type"):
            response.headers[name] = value
    if entry.etag:
        response.headers["ETag"] = entry.etag
    return response


def invalidates(
    *,
    tags: Iterable[str] = (),
    keys: Iterable[str] = (),
    patterns: Iterable[str | re.Pattern[str]] = (),
) -> Callable[[F], F]:
    """After a 2xx response of the decorated (write) view, invalidate ``tags``,
    ``keys`` and ``patterns`` (the seed's ON_WRITE)."""
    tag_list, key_list, pattern_list = list(validate_tags(tags)), list(keys), list(patterns)

    def apply(response: Response) -> Response:
        if not 200 <= response.status_code < 300:
            return response
        layered = get_state().cache.layered
        try:
            for tag in tag_list:
                layered.invalidate_tag(tag)
            for key in key_list:
                layered.delete(key)
            for pattern in pattern_list:
                layered.invalidate_pattern(pattern)
        except StoreUnavailableError as exc:
            # The write succeeded; failing its response would invite a retry of
            # the write. Other processes keep old entries for at most the L1 TTL cap.
            layered.l1.clear()
            layered.stats.count_reason("errors", "invalidation_failed")
            logger.error("could not invalidate the cache after %s: %s", request.path, exc)
        return response

    def decorator(view: F) -> F:
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Response:
                rv = await cast(Callable[..., Awaitable[ResponseReturnValue]], view)(*args, **kwargs)
                return apply(make_response(rv))

            return cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            return apply(make_response(view(*args, **kwargs)))

        return cast(F, wrapper)

    return decorator


_TAG = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def validate_tags(tags: Iterable[str]) -> list[str]:
    checked = list(tags)
    for tag in checked:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ValueError(f"a cache tag must match [A-Za-z0-9._:/-]{{1,128}}, got {tag!r}")
    return checked
