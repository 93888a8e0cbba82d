"""The second layer: Redis (ours), or any Flask-Caching backend an app already has.

Keys reach a backend fully named by the layered cache. Every method raises
:class:`StoreUnavailableError` when the backend fails; the layered cache
decides what that means (it fails open).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from ..stores.redis import RedisStore, StoreUnavailableError


class PatternsNeedRedis(RuntimeError):
    """Pattern invalidation (and cross-process L1 coherence) need the Redis backend."""


class L2Backend(Protocol):
    name: str
    shares_invalidations: bool

    def get(self, key: str) -> bytes | None: ...
    def get_or_lock(
        self, key: str, lock_key: str, token: bytes, lock_ttl: float
    ) -> tuple[bytes | None, bool]: ...
    def set(self, key: str, value: bytes, ttl: float) -> None: ...
    def set_and_unlock(self, key: str, value: bytes, ttl: float, lock_key: str) -> None: ...
    def add(self, key: str, value: bytes, ttl: float) -> bool: ...
    def delete(self, keys: list[str]) -> int: ...
    def incr(self, key: str) -> int: ...
    def get_counters(self, keys: list[str]) -> list[int]: ...
    def scan(self, glob: str) -> Iterator[str]: ...


# A miss costs two round trips: this script (read, or take the stampede lock),
# then one pipeline (store and unlock).
_GET_OR_LOCK = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
return {false, 0}
"""


class RedisBackend:
    """Our own Redis: plain bytes, SCAN for patterns, pub/sub for coherence."""

    name = "redis"
    shares_invalidations = True

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self._get_or_lock = store.script(_GET_OR_LOCK)

    def get(self, key: str) -> bytes | None:
        return self.store.get(key)

    def get_or_lock(
        self, key: str, lock_key: str, token: bytes, lock_ttl: float
    ) -> tuple[bytes | None, bool]:
        """The value, or None and whether this caller now holds ``lock_key``."""
        if self.store.is_cluster:  # the two keys live in different slots
            value = self.store.get(key)
            if value is not None:
                return value, False
            return None, self.store.set(lock_key, token, lock_ttl, only_if_absent=True)
        value, locked = self.store.run_script(
            self._get_or_lock, [key, lock_key], [token, int(lock_ttl * 1000)]
        )
        return value, bool(locked)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self.store.set(key, value, ttl)

    def set_and_unlock(self, key: str, value: bytes, ttl: float, lock_key: str) -> None:
        self.store.set_and_delete(key, value, ttl, lock_key)

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        return self.store.set(key, value, ttl, only_if_absent=True)

    def delete(self, keys: list[str]) -> int:
        return self.store.delete(*keys)

    def incr(self, key: str) -> int:
        return self.store.incr(key)

    def get_counters(self, keys: list[str]) -> list[int]:
        return [int(value) if value is not None else 0 for value in self.store.get_many(keys)]

    def scan(self, glob: str) -> Iterator[str]:
        # RedisStore.scan prefixes the pattern; hand it the part after the prefix.
        return self.store.scan(glob.removeprefix(self.store.prefix))


class FlaskCachingBackend:
    """An app's ``flask_caching.Cache`` (SimpleCache, RedisCache, Memcached, ...).

    Values are stored through that backend's own serializer. It has no
    pattern listing and no pub/sub: pattern invalidation raises
    :class:`PatternsNeedRedis`, and other processes' L1 layers learn of an
    invalidation only when their entries reach ``RESILIENCE_CACHE_L1_MAX_TTL``.
    """

    name = "flask-caching"
    shares_invalidations = False

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def _backend(self) -> Any:
        return self._cache.cache

    def _run(self, action: Any) -> Any:
        try:
            return action()
        except Exception as exc:  # any backend's own errors
            raise StoreUnavailableError(f"Flask-Caching backend failed: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        value = self._run(lambda: self._backend().get(key))
        return value if isinstance(value, bytes) else None

    def get_or_lock(
        self, key: str, lock_key: str, token: bytes, lock_ttl: float
    ) -> tuple[bytes | None, bool]:
        value = self.get(key)
        if value is not None:
            return value, False
        return None, self.add(lock_key, token, lock_ttl)

    def set_and_unlock(self, key: str, value: bytes, ttl: float, lock_key: str) -> None:
        self.set(key, value, ttl)
        self.delete([lock_key])

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._run(lambda: self._backend().set(key, value, timeout=max(1, int(ttl))))

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(self._run(lambda: self._backend().add(key, value, timeout=max(1, int(ttl)))))

    def delete(self, keys: list[str]) -> int:
        return int(bool(self._run(lambda: self._backend().delete_many(*keys))))

    def incr(self, key: str) -> int:
        # cachelib's inc is atomic on Redis and Memcached, best effort elsewhere.
        return int(self._run(lambda: self._backend().inc(key, 1)) or 0)

    def get_counters(self, keys: list[str]) -> list[int]:
        values = self._run(lambda: self._backend().get_many(*keys))
        return [int(value) if isinstance(value, int) else 0 for value in values]

    def scan(self, glob: str) -> Iterator[str]:
        raise PatternsNeedRedis(
            "pattern invalidation needs the Redis backend (RESILIENCE_REDIS_URL); "
            f"the configured L2 is {self.name}"
        )
