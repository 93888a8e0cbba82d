"""The data cache: ``resilience.cache.get/set/delete/get_or_set``, write-through
and write-behind, over the same two layers as the response cache."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..stores.redis import StoreUnavailableError
from .coherence import Coherence
from .entry import CacheEntry, Stamp
from .flight import SingleFlight
from .keys import DATA_VARIANT, full_key
from .layered import LayeredCache, Lookup
from .tags import validate_tags
from .writeback import WriteBehindQueue

T = TypeVar("T")
_MISSING = object()


@dataclass(frozen=True)
class _Since:
    stamp: Stamp
    generation: str | None
    mark: tuple[int, float]


class Serializer(Protocol):
    def dumps(self, value: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class JSONSerializer:
    """The default: JSON, so nothing read back from Redis can run code."""

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class CacheParts(Protocol):
    """What the data cache uses of the app's cache (``AppCache``), read on
    every call so that switching the cache off takes effect at once."""

    enabled: bool
    default_ttl: int
    lock_timeout: float
    layered: LayeredCache
    coherence: Coherence
    flight: SingleFlight
    write_behind: WriteBehindQueue


class DataCache:
    """Cache-aside access to values. ``ttl`` in seconds (default
    ``RESILIENCE_CACHE_DEFAULT_TTL``); ``tags`` for tag invalidation."""

    def __init__(self, cache: CacheParts, serializer: Serializer | None = None) -> None:
        self._cache = cache
        self.serializer: Serializer = serializer or JSONSerializer()

    def _lookup(self, key: str, *, count_miss: bool = True) -> tuple[Any, Lookup]:
        """The value (or _MISSING) and the lookup (its generation to store under)."""
        layered = self._cache.layered
        if not self._cache.enabled:
            return _MISSING, Lookup()
        found = layered.lookup(full_key(DATA_VARIANT, key), key)
        entry = found.entry
        if entry is None or entry.kind != "data":
            if count_miss:
                layered.stats.count("misses", "data")
            return _MISSING, found
        try:
            value = self.serializer.loads(entry.body)
        except ValueError:
            layered.stats.count_reason("errors", "unreadable_value")
            return _MISSING, found
        layered.stats.count(f"{found.layer}_hits", "data")
        return value, found

    def get(self, key: str, default: Any = None) -> Any:
        value, _ = self._lookup(key)
        return default if value is _MISSING else value

    def set(self, key: str, value: Any, ttl: int | None = None, tags: Iterable[str] = ()) -> None:
        """Store ``value``; raises TypeError/ValueError when the serializer cannot."""
        self._store(key, value, ttl, tags, None)

    def _store(
        self, key: str, value: Any, ttl: int | None, tags: Iterable[str], since: _Since | None
    ) -> None:
        """With ``since`` (the stamp, generation and mark taken before the value
        was loaded), the store is refused if the key was invalidated meanwhile."""
        if not self._cache.enabled:
            return
        lifetime = ttl if ttl is not None else self._cache.default_ttl
        if lifetime <= 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        body = self.serializer.dumps(value)
        layered = self._cache.layered
        if since is None:
            since = _Since(layered.stamp(validate_tags(tags), layered.trusted_since()), None, layered.mark())
        now = layered.clock()
        entry = CacheEntry("data", body, now, now + lifetime, since.stamp)
        layered.put(full_key(DATA_VARIANT, key), key, entry, generation=since.generation, since=since.mark)

    def delete(self, key: str) -> None:
        self._cache.coherence.invalidate_resource(key)

    def get_or_set(
        self, key: str, loader: Callable[[], T], ttl: int | None = None, tags: Iterable[str] = ()
    ) -> T:
        """Cache-aside: the cached value, or ``loader()`` stored and returned.
        Concurrent misses in this process call ``loader`` once; an invalidation
        while ``loader`` runs keeps its result out of the cache."""
        value, _ = self._lookup(key)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        checked = validate_tags(tags)
        layered = self._cache.layered
        with self._cache.flight(f"data:{key}", self._cache.lock_timeout):
            # Whether it waited for a leader or leads a flight that began just
            # after another ended, the value may be there now.
            mark = layered.mark()
            stamp = layered.stamp(checked, layered.trusted_since())
            value, found = self._lookup(key, count_miss=False)
            if value is not _MISSING:
                return value  # type: ignore[no-any-return]
            loaded = loader()
            self._store(key, loaded, ttl, checked, _Since(stamp, found.generation, mark))
            return loaded

    def write_through(
        self,
        key: str,
        value: T,
        persist: Callable[[T], Any],
        ttl: int | None = None,
        tags: Iterable[str] = (),
    ) -> Any:
        """Persist first, then cache: if ``persist`` raises, the cache is not
        touched (and the old entry is dropped, since the store may have changed)."""
        try:
            result = persist(value)
        except BaseException:
            # persist's own error is the one to raise; a Redis outage is counted.
            with contextlib.suppress(StoreUnavailableError):
                self.delete(key)
            raise
        self.set(key, value, ttl, tags)
        return result

    def write_behind(
        self,
        key: str,
        value: T,
        persist: Callable[[T], Any],
        ttl: int | None = None,
        tags: Iterable[str] = (),
    ) -> bool:
        """Cache now, persist from a bounded background queue with retries.

        Returns False when the queue is full (the write is dropped and
        counted; the cached value stays until its TTL).
        """
        self.set(key, value, ttl, tags)
        return self._cache.write_behind.submit(key, lambda: persist(value))
