"""``@cached`` and ``@invalidates``: the Flask glue of the cache.

Each decorator states its policy once; the view runs through
``current_app.ensure_sync`` (as Flask-Caching does), so async views work too.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar, cast

from flask import Request, Response, current_app, make_response, request

from ..stores.redis import StoreUnavailableError
from ..validators import check_ttl
from .front import FRONT_MARK
from .plan import serve
from .policy import ViewPolicy
from .service import AppCache
from .strategies import VIEW_STRATEGIES, CacheStrategy, InvalidationStrategy
from .tags import validate_tags

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("flask_resilience.cache")


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
    vary_host: bool = True,
    front: bool | None = None,
    strategy: CacheStrategy = CacheStrategy.CACHE_ASIDE,
    invalidation: InvalidationStrategy = InvalidationStrategy.TTL,
    timeout: int | None = None,
    unless: Callable[[], bool] | None = None,
) -> Callable[[F], F]:
    """Cache a GET/HEAD view's response in both layers (see the docs for the HTTP rules).

    ``ttl`` in seconds (default ``RESILIENCE_CACHE_DEFAULT_TTL``); ``tags``
    for :func:`invalidate_cache_by_tag`; ``per_user`` keys on the caller's
    principal instead of bypassing requests that carry credentials (also with
    ``key_func``, which supplies only the resource part of the key);
    ``query_args`` limits which query parameters are part of the key;
    ``vary_host=False`` leaves scheme and host out of the key (only for apps
    that pin ``SERVER_NAME``/trusted hosts). On a hit the view does not run:
    authorize in ``before_request`` or in a decorator placed above this one.
    Flask-Caching's spellings work too: ``timeout`` is ``ttl``, and
    ``unless()`` returning True skips the cache (``condition`` returning False).
    ``front=True`` serves hits before Flask dispatches (no app code runs:
    public responses only; None follows ``RESILIENCE_CACHE_FRONT``; see
    docs/front-tier.rst).
    """
    ttl, condition = _flask_caching_spellings(ttl, timeout, condition, unless)
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
        vary_host=vary_host,
        front=front,
    )

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            def run() -> Response:
                return make_response(current_app.ensure_sync(view)(*args, **kwargs))

            return serve(AppCache.of(), policy, run)

        if front:
            setattr(wrapper, FRONT_MARK, True)
        return cast(F, wrapper)

    return decorator


def _flask_caching_spellings(
    ttl: int | None,
    timeout: int | None,
    condition: Callable[[Request], bool] | None,
    unless: Callable[[], bool] | None,
) -> tuple[int | None, Callable[[Request], bool] | None]:
    """``ttl`` and ``condition`` from either spelling; both spellings of one is a TypeError."""
    if timeout is not None:
        if ttl is not None:
            raise TypeError("give ttl= or its Flask-Caching spelling timeout=, not both")
        ttl = timeout
    if unless is not None:
        if condition is not None:
            raise TypeError("give condition= or its Flask-Caching spelling unless=, not both")
        skip = unless
        condition = lambda _request: not skip()  # noqa: E731
    return ttl, condition


def invalidates(
    *,
    tags: Iterable[str] = (),
    keys: Iterable[str] = (),
    patterns: Iterable[str | re.Pattern[str]] = (),
) -> Callable[[F], F]:
    """After a 2xx response of the decorated (write) view, invalidate ``tags``,
    ``keys`` (resource keys: every variant of each) and ``patterns`` (the seed's ON_WRITE)."""
    tag_list, key_list, pattern_list = list(validate_tags(tags)), list(keys), list(patterns)

    def apply(response: Response) -> Response:
        if not 200 <= response.status_code < 300:
            return response
        cache = AppCache.of()
        coherence = cache.coherence
        try:
            coherence.invalidate(tags=tag_list, resources=key_list, patterns=pattern_list)
        except StoreUnavailableError as exc:
            # The write succeeded; failing its response would invite a retry of
            # the write. The invalidations are owed: applied when Redis answers.
            cache.layered.stats.count_reason("errors", "invalidation_failed")
            logger.error(
                "could not invalidate the cache after %s (kept; applied when Redis answers): %s",
                request.path,
                exc,
            )
        return response

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            return apply(make_response(current_app.ensure_sync(view)(*args, **kwargs)))

        return cast(F, wrapper)

    return decorator
