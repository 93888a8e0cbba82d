"""The app's Redis client, key naming and error mapping.

One client per app, built from ``RESILIENCE_REDIS_URL`` (or cluster nodes)
with short timeouts, so a slow Redis costs a request at most a fraction of a
second. Every key and channel lives under ``RESILIENCE_KEY_PREFIX``; keys that
one Lua script or transaction touches share a hash tag (``slot=``), so the
same code runs on a single Redis and on a Redis Cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .pubsub import Subscriber

T = TypeVar("T")

RedisClient = redis.Redis | RedisCluster


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to ``size`` items (``itertools.batched`` arrives in Python 3.12)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class StoreUnavailableError(RuntimeError):
    """Redis did not answer (refused, timed out, or errored)."""


class WrongTypeError(StoreUnavailableError):
    """Redis answered, refusing the key's type (WRONGTYPE): something else
    holds the key. A damaged value, not an outage."""


class LuaScript:
    """A Lua script run with ``EVALSHA`` straight on the client.

    Cheaper than redis-py's ``Script`` objects (no per-call encoder and
    pipeline checks). A server that does not know the script yet (restarted,
    flushed, a new cluster node) answers NOSCRIPT: the script is loaded
    (``SCRIPT LOAD``, on every primary of a cluster) and run again once.
    """

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)

    def run(self, client: RedisClient, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def parse_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` as ``(7, 0, 15)``; parts that are not numbers end it."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def build_client(
    url: str | None,
    cluster: bool | tuple[tuple[str, int], ...],
    *,
    socket_timeout: float,
    connect_timeout: float,
) -> RedisClient:
    """A Redis or RedisCluster client with short timeouts.

    A connection error is retried once at once (a pooled connection may be
    stale after Redis restarted); a timeout is not retried.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "health_check_interval": 30,
    }
    if isinstance(cluster, tuple):
        nodes = [ClusterNode(host, port) for host, port in cluster]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **options)
    if url is None:
        raise ValueError("a Redis URL is needed unless cluster startup nodes are given")
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


class RedisStore:
    """Thin, typed access to Redis for the extension's features.

    Methods raise :class:`StoreUnavailableError` on any Redis failure; each
    feature decides whether that fails open or closed.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.is_cluster = isinstance(client, RedisCluster)
        self._subscriber: Subscriber | None = None
        self._lock = threading.Lock()
        self._version: tuple[int, ...] | None = None

    # -- naming ------------------------------------------------------------

    def key(self, *parts: str, slot: str | None = None) -> str:
        """``prefix`` + parts joined by ``:``.

        Keys built with the same ``slot`` land in one cluster hash slot, as a
        Lua script or MULTI over several keys needs.
        """
        tag = f"{{{slot}}}:" if slot is not None else ""
        return self.prefix + tag + ":".join(parts)

    def channel(self, name: str) -> str:
        """The pub/sub channel ``name`` under our prefix."""
        return f"{self.prefix}channel:{name}"

    # -- commands ----------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        return self._run(lambda: self.client.get(key))  # type: ignore[no-any-return]

    def set(self, key: str, value: bytes, ttl: float | None = None, *, only_if_absent: bool = False) -> bool:
        """Store ``value``; ``ttl`` in seconds (millisecond precision).

        With ``only_if_absent`` it is ``SET NX``: False when the key exists.
        """
        px = None if ttl is None else max(1, int(ttl * 1000))
        return bool(self._run(lambda: self.client.set(key, value, px=px, nx=only_if_absent)))

    def set_and_delete(self, key: str, value: bytes, ttl: float, doomed: str) -> None:
        """``SET key value PX ttl`` and ``DEL doomed`` in one round trip (not atomic)."""

        def pipeline() -> None:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, value, px=max(1, int(ttl * 1000)))
                pipe.delete(doomed)
                pipe.execute()

        self._run(pipeline)

    def incr(self, key: str) -> int:
        return int(self._run(lambda: self.client.incr(key)))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``MGET``; on a cluster the keys must share a slot."""
        if not keys:
            return []
        return list(self._run(lambda: self.client.mget(keys)))

    def hash_get(self, key: str, fields: list[str]) -> list[bytes | None]:
        """``HMGET``: the values of ``fields`` in the hash ``key`` (None when absent)."""
        return list(self._run(lambda: self.client.hmget(key, fields)))

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._run(lambda: self.client.delete(*keys)))

    def scan(self, pattern: str = "*", count: int = 500) -> Iterator[str]:
        """Keys under our prefix matching the glob ``pattern`` (SCAN, never KEYS)."""
        match = self.prefix + pattern
        try:
            for key in self.client.scan_iter(match=match, count=count):
                yield key.decode() if isinstance(key, bytes) else str(key)
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis SCAN failed: {exc}") from exc

    def delete_matching(
        self, pattern: str, batch: int = 500, *, where: Callable[[str], bool] | None = None
    ) -> int:
        """Delete our keys matching the glob ``pattern`` (relative to the
        prefix, as for :meth:`scan`), ``batch`` keys per DEL; returns how many.

        With ``where``, only the keys for which ``where(key relative to the
        prefix)`` is true.
        """
        keys: Iterable[str] = self.scan(pattern, count=batch)
        if where is not None:
            start = len(self.prefix)
            keys = (key for key in keys if where(key[start:]))
        removed = 0
        for chunk in batched(keys, batch):
            removed += self.delete(*chunk)
        return removed

    def set_absent_or_get(self, key: str, value: bytes, ttl: float) -> bytes | None:
        """``SET key value NX PX ttl GET`` (Redis >= 7.0, see :meth:`server_version`):
        None when ``value`` was stored, else the value already there (untouched)."""
        px = max(1, int(ttl * 1000))
        command = self.client.execute_command
        return self._run(lambda: command("SET", key, value, "NX", "PX", px, "GET", get=True))  # type: ignore[no-any-return,no-untyped-call]

    def script(self, source: str) -> LuaScript:
        """A Lua script, run by its SHA (see :class:`LuaScript`)."""
        return LuaScript(source)

    def run_script(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        return self._run(lambda: script.run(self.client, keys, args))

    def server_version(self) -> tuple[int, ...]:
        """The Redis server's version (``INFO server``), asked once per store.

        On a cluster, the oldest node's. ``()`` when the server does not say
        (a proxy that refuses ``INFO``): callers then assume the oldest server.
        Raises :class:`StoreUnavailableError` (and asks again next time) when
        Redis does not answer.
        """
        if self._version is None:
            try:
                info = self._run(lambda: self.client.info("server"))
            except StoreUnavailableError as exc:
                if not isinstance(exc.__cause__, redis.ResponseError):
                    raise
                info = {}
            self._version = _oldest_version(info)
        return self._version

    def ping(self) -> float:
        """Round-trip time in seconds; raises when Redis does not answer."""
        started = time.perf_counter()
        self._run(self.client.ping)
        return time.perf_counter() - started

    def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` on ``channel``; returns how many listeners got it."""
        return int(self._run(lambda: self.client.publish(channel, message)))

    # -- pub/sub -----------------------------------------------------------

    @property
    def subscriber(self) -> Subscriber:
        """This process's listener; its thread starts on the first subscribe."""
        subscriber = self._subscriber
        if subscriber is not None:  # every cache lookup asks: no lock once it exists
            return subscriber
        with self._lock:
            if self._subscriber is None:
                self._subscriber = Subscriber(self.client.pubsub)
            return self._subscriber

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        self.subscriber.subscribe(channel, handler)

    def close(self) -> None:
        """Stop the listener and drop pooled connections."""
        with self._lock:
            subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.stop()
        with contextlib.suppress(redis.RedisError):
            self.client.close()

    def _run(self, command: Callable[[], Any]) -> Any:
        try:
            return command()
        except redis.ResponseError as exc:
            if "WRONGTYPE" in str(exc):  # also raised from inside a script
                raise WrongTypeError(f"Redis holds something else under the key: {exc}") from exc
            raise StoreUnavailableError(f"Redis is unavailable: {exc}") from exc
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"Redis is unavailable: {exc}") from exc


def _oldest_version(info: Any) -> tuple[int, ...]:
    """The version in an ``INFO server`` answer (a dict per node on a cluster)."""
    if not isinstance(info, dict):
        return ()
    if "redis_version" in info:
        return parse_version(str(info["redis_version"]))
    versions = [_oldest_version(node) for node in info.values() if isinstance(node, dict)]
    return min(versions) if versions and all(versions) else ()
