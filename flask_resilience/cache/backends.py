"""The second layer: Redis (ours), or any Flask-Caching backend an app already has.

A backend is handed logical names (an entry's key, its resource, a tag) and
names them itself. Each resource has a *generation*: a random token created
on its first lookup. Every entry records the generation it was computed
under, and a store succeeds only while that generation is still current, so
invalidating a resource (deleting its generation) makes every variant of it
stale, including one whose view is still running. Tag counters and an
*epoch* start at random values, so a counter or epoch lost to eviction,
failover or a flush never makes an old entry current again.

Every method raises :class:`StoreUnavailableError` when the backend fails;
the layered cache decides what that means (it fails open).
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..stores.redis import RedisStore, StoreUnavailableError
from . import scripts

Lookup = tuple[bytes | None, str | None, bool]  # value, the resource's generation, lock taken


class PatternsNeedRedis(RuntimeError):
    """Pattern invalidation (and cross-process L1 coherence) need the Redis backend."""


def fresh_counter() -> int:
    """A new tag counter's start: this host's clock in microseconds, so a
    counter recreated after it was lost (evicted, flushed) is above every
    version processes knew and matches no old entry (they take a lower one
    for a late message and ignore it). Redis starts its counters from its
    own clock the same way (``_RESTART``)."""
    return time.time_ns() // 1000


GENERATION_LENGTH = 16


def fresh_token() -> str:
    """A new generation (or lock owner): GENERATION_LENGTH hex characters."""
    return secrets.token_hex(GENERATION_LENGTH // 2)


class L2Backend(Protocol):
    name: str
    shares_invalidations: bool

    def lookup(self, key: str, resource: str, token: str, lock_ttl: float | None) -> Lookup: ...
    def put(
        self, key: str, resource: str, value: bytes, ttl: float, *, generation: str | None, token: str | None
    ) -> bool: ...
    def lock(self, key: str, resource: str, token: str, lock_ttl: float) -> bool: ...
    def unlock(self, key: str, resource: str, token: str) -> None: ...
    def is_locked(self, key: str, resource: str) -> bool: ...
    def invalidate_resource(self, resource: str) -> None: ...
    def invalidate_matching(self, glob: str, matches: Callable[[str], bool]) -> int: ...
    def tag_versions(self, tags: list[str]) -> tuple[str, list[int]]: ...
    def bump_tag(self, tag: str) -> int: ...
    def drop_entries(self) -> None: ...


_TAGS = "cache-tags"  # the hash slot of the epoch and every tag counter


def _slot(resource: str) -> str:
    return hashlib.blake2b(resource.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class RedisBackend:
    """Our own Redis: plain bytes, Lua for conditional stores, pub/sub for coherence.

    An entry, its lock and its resource's generation share a hash slot (the
    resource's digest), so the scripts also run on a Redis Cluster.
    """

    name = "redis"
    shares_invalidations = True

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._lookup = store.script(scripts.LOOKUP)
        self._put = store.script(scripts.PUT)
        self._unlock = store.script(scripts.UNLOCK)
        self._versions = store.script(scripts.VERSIONS)
        self._bump = store.script(scripts.BUMP)
        # Where the resource sits in a generation key relative to the prefix: "{slot}:cache:g:".
        self._generation_head = len(store.key("cache", "g", "", slot=_slot(""))) - len(store.prefix)

    def names(self, key: str, resource: str) -> tuple[str, str, str]:
        """The Redis keys of an entry, its lock and its resource's generation."""
        slot = _slot(resource)
        store = self.store
        return (
            store.key("cache", "e", key, slot=slot),
            store.key("cache", "l", key, slot=slot),
            store.key("cache", "g", resource, slot=slot),
        )

    def lookup(self, key: str, resource: str, token: str, lock_ttl: float | None) -> Lookup:
        """The entry (or None), the resource's generation, and whether this
        caller now holds the stampede lock (only when ``lock_ttl`` is given)."""
        lock_ms = 0 if lock_ttl is None else max(1, int(lock_ttl * 1000))
        # A new generation lives at least as long as a computation may take.
        keep_ms = max(lock_ms, 1000) * 4
        value, generation, locked = self.store.run_script(
            self._lookup, list(self.names(key, resource)), [token, lock_ms, fresh_token(), keep_ms]
        )
        return value, _text(generation), bool(locked)

    def put(
        self, key: str, resource: str, value: bytes, ttl: float, *, generation: str | None, token: str | None
    ) -> bool:
        entry, lock, generation_key = self.names(key, resource)
        args = [value, max(1, int(ttl * 1000)), generation or "", token or "", fresh_token()]
        return bool(self.store.run_script(self._put, [entry, generation_key, lock], args))

    def lock(self, key: str, resource: str, token: str, lock_ttl: float) -> bool:
        return self.store.set(self.names(key, resource)[1], token.encode(), lock_ttl, only_if_absent=True)

    def unlock(self, key: str, resource: str, token: str) -> None:
        self.store.run_script(self._unlock, [self.names(key, resource)[1]], [token])

    def is_locked(self, key: str, resource: str) -> bool:
        return self.store.get(self.names(key, resource)[1]) is not None

    def invalidate_resource(self, resource: str) -> None:
        self.store.delete(self.names("", resource)[2])

    def invalidate_matching(self, glob: str, matches: Callable[[str], bool]) -> int:
        """Drop the generation of every resource matching (SCAN, never KEYS);
        returns how many resources went. Their entries are stale from then on
        and expire by their TTL."""
        head = self._generation_head
        return self.store.delete_matching(
            "{*}:cache:g:" + glob, where=lambda relative: matches(relative[head:])
        )

    def tag_versions(self, tags: list[str]) -> tuple[str, list[int]]:
        keys = [self.store.key("cache", "epoch", slot=_TAGS)]
        keys += [self.store.key("cache", "t", tag, slot=_TAGS) for tag in tags]
        starts: list[Any] = [fresh_token()]  # counters start from the server's clock
        values = self.store.run_script(self._versions, keys, starts)
        return _text(values[0]) or "", [int(value) for value in values[1:]]

    def bump_tag(self, tag: str) -> int:
        key = self.store.key("cache", "t", tag, slot=_TAGS)
        return int(self.store.run_script(self._bump, [key], []))

    def drop_entries(self) -> None:
        self.store.delete_matching("{*}:cache:[egl]:*")


class FlaskCachingBackend:
    """An app's ``flask_caching.Cache`` (SimpleCache, RedisCache, Memcached, ...).

    Values are stored through that backend's own serializer. It has no
    scripts: a store checks the generation, then writes (not atomic). It has
    no pattern listing and no pub/sub: pattern invalidation raises
    :class:`PatternsNeedRedis`, and other processes' L1 layers learn of an
    invalidation only when their entries reach ``RESILIENCE_CACHE_L1_MAX_TTL``.
    """

    name = "flask-caching"
    shares_invalidations = False

    def __init__(self, cache: Any, prefix: str) -> None:
        self._cache = cache
        self._prefix = prefix + "cache:"

    def _run(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:  # any backend's own errors
            raise StoreUnavailableError(f"Flask-Caching backend failed: {exc}") from exc

    def _backend(self) -> Any:
        return self._cache.cache

    def _current(self, name: str, start: object) -> Any:
        backend = self._backend()
        value = self._run(lambda: backend.get(name))
        if value is None:
            self._run(lambda: backend.add(name, start, timeout=0))
            value = self._run(lambda: backend.get(name))
        return value

    def lookup(self, key: str, resource: str, token: str, lock_ttl: float | None) -> Lookup:
        generation = str(self._current(f"{self._prefix}g:{resource}", fresh_token()))
        value = self._run(lambda: self._backend().get(f"{self._prefix}e:{key}"))
        if isinstance(value, bytes) and value[:GENERATION_LENGTH] == generation.encode():
            return value[GENERATION_LENGTH:], generation, False
        if lock_ttl is None:
            return None, generation, False
        return None, generation, self.lock(key, resource, token, lock_ttl)

    def put(
        self, key: str, resource: str, value: bytes, ttl: float, *, generation: str | None, token: str | None
    ) -> bool:
        backend = self._backend()
        if generation is None:
            current = str(self._current(f"{self._prefix}g:{resource}", fresh_token()))
        else:
            current = self._run(lambda: backend.get(f"{self._prefix}g:{resource}"))
        stored = current is not None and (generation is None or current == generation)
        if stored:
            stamped = str(current).encode() + value
            self._run(lambda: backend.set(f"{self._prefix}e:{key}", stamped, timeout=max(1, int(ttl))))
        if token is not None:
            self.unlock(key, resource, token)
        return stored

    def lock(self, key: str, resource: str, token: str, lock_ttl: float) -> bool:
        lock = f"{self._prefix}l:{key}"
        return bool(self._run(lambda: self._backend().add(lock, token, timeout=max(1, int(lock_ttl)))))

    def unlock(self, key: str, resource: str, token: str) -> None:
        self._run(lambda: self._backend().delete(f"{self._prefix}l:{key}"))

    def is_locked(self, key: str, resource: str) -> bool:
        return self._run(lambda: self._backend().get(f"{self._prefix}l:{key}")) is not None

    def invalidate_resource(self, resource: str) -> None:
        self._run(lambda: self._backend().delete(f"{self._prefix}g:{resource}"))

    def invalidate_matching(self, glob: str, matches: Callable[[str], bool]) -> int:
        raise PatternsNeedRedis(
            "pattern invalidation needs the Redis backend (RESILIENCE_REDIS_URL); "
            f"the configured L2 is {self.name}"
        )

    def tag_versions(self, tags: list[str]) -> tuple[str, list[int]]:
        epoch = self._current(f"{self._prefix}epoch", fresh_token())
        return str(epoch), [self._counter(f"{self._prefix}t:{tag}") for tag in tags]

    def bump_tag(self, tag: str) -> int:
        # cachelib's inc is atomic on Redis and Memcached, best effort elsewhere.
        name = f"{self._prefix}t:{tag}"
        self._counter(name)
        return int(self._run(lambda: self._backend().inc(name, 1)) or 0)

    def _counter(self, name: str) -> int:
        """A tag counter's value; one that is not a whole number (written by
        something else, damaged) starts again from the clock."""
        value = self._current(name, fresh_counter())
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, (str, bytes)) and value.isdigit() and len(value) <= 18:
            return int(value)
        restarted = fresh_counter()
        self._run(lambda: self._backend().set(name, restarted, timeout=0))
        return restarted

    def drop_entries(self) -> None:
        """Nothing to list; bumping the tag every entry carries already made them stale."""


def glob_matcher(glob: str) -> Callable[[str], bool]:
    return lambda resource: fnmatch.fnmatchcase(resource, glob)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
