"""``resilience.cache``: the current app's data cache, reachable before any app exists.

Decorating at import time (``@resilience.cache.memoize(60)``) needs no app;
every call finds the current app's cache then, as Flask-Caching's ``Cache``
object does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from .data import DataCache, Serializer
from .memoize import memo_of, memoize
from .service import AppCache

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _data() -> DataCache:
    return AppCache.of().data


class CacheAccess:
    """The current app's data cache: ``get``, ``set``, ``delete``, ``get_or_set``,
    ``write_through``, ``write_behind``, ``memoize`` and ``delete_memoized``.

    Every method but ``memoize`` needs an app context; ``ttl`` is in seconds
    (default ``RESILIENCE_CACHE_DEFAULT_TTL``).
    """

    @property
    def serializer(self) -> Serializer:
        return _data().serializer

    def get(self, key: str, default: Any = None) -> Any:
        return _data().get(key, default)

    def set(self, key: str, value: Any, ttl: int | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value``; raises TypeError/ValueError when the serializer cannot."""
        _data().set(key, value, ttl, tags)

    def delete(self, key: str) -> None:
        _data().delete(key)

    def get_or_set(
        self, key: str, loader: Callable[[], T], ttl: int | None = None, tags: Iterable[str] = ()
    ) -> T:
        """The cached value, or ``loader()`` stored and returned (one loader per key at a time)."""
        return _data().get_or_set(key, loader, ttl, tags)

    def write_through(
        self,
        key: str,
        value: T,
        persist: Callable[[T], Any],
        ttl: int | None = None,
        tags: Iterable[str] = (),
    ) -> Any:
        """``persist(value)`` first, then cache ``value``; returns what ``persist`` returned.
        If ``persist`` raises, the entry is dropped and the error propagates."""
        return _data().write_through(key, value, persist, ttl, tags)

    def write_behind(
        self,
        key: str,
        value: T,
        persist: Callable[[T], Any],
        ttl: int | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """Cache ``value`` now, ``persist(value)`` from a background queue with
        retries; False when the queue is full (the write is dropped and counted)."""
        return _data().write_behind(key, value, persist, ttl, tags)

    def memoize(
        self,
        ttl: int | None = None,
        *,
        tags: Iterable[str] = (),
        unless: Callable[[], bool] | None = None,
        timeout: int | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Cache a function's return value per arguments, like Flask-Caching's
        ``memoize`` (``timeout`` is ``ttl``'s Flask-Caching spelling; ``unless()``
        returning True calls the function uncached). See :mod:`.memoize` for
        the key and the arguments accepted."""
        if timeout is not None:
            if ttl is not None:
                raise TypeError("give ttl= or its Flask-Caching spelling timeout=, not both")
            ttl = timeout
        return memoize(_data, ttl, tags, unless)

    def delete_memoized(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Drop the entry of ``function(*args, **kwargs)``; with no arguments,
        every entry of ``function``. TypeError if it is not memoized."""
        memo = memo_of(function)
        if args or kwargs:
            _data().delete(memo.key(args, kwargs))
        else:
            AppCache.of().coherence.invalidate_tag(memo.tag)
