"""L1 (in-process) over L2 (Redis or a Flask-Caching backend), kept coherent.

Reads check L1, then L2 (filling L1), and report a miss otherwise. Every
invalidation is applied to L2 and published; every process's listener drops
its L1 copies. L1 entries live at most ``l1_max_ttl`` seconds, which bounds
staleness even when a message is lost, and a process that loses its
subscription empties its L1.

Tags are version stamps: an entry records the version of each of its tags
when it was stored, and is current only while those versions are.
Invalidating a tag increments one counter, whatever the number of entries
carrying it; stale entries are never read again and expire by their TTL.
``clear()`` is the same trick on a tag every entry carries.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..stats import Counters
from ..stores.memory import MemoryStore
from ..stores.redis import RedisStore, StoreUnavailableError, batched
from .backends import L2Backend, PatternsNeedRedis, RedisBackend
from .entry import CacheEntry, UnreadableEntry, decode

logger = logging.getLogger("flask_resilience.cache")

EVERYTHING = "*"  # the tag every entry carries; bumping it is clear()
_L2_COOLDOWN = 1.0  # seconds L2 is skipped after an error, so a dead Redis costs one timeout a second


class CacheStats(Counters):
    """Counters of one app's cache; thread-safe."""

    def __init__(self) -> None:
        super().__init__("bypasses", "not_stored", "errors")

    def snapshot(self, *always: str) -> dict[str, Any]:
        data = super().snapshot("l1_hits", "l2_hits", "misses", "sets", "deletes", *always)
        hits = data["l1_hits"] + data["l2_hits"]
        lookups = hits + data["misses"]
        return {**data, "hits": hits, "hit_rate": round(hits / lookups, 4) if lookups else 0.0}


class LayeredCache:
    """The cache of one app. ``clock`` returns wall-clock seconds (entries
    carry absolute expiry times shared between processes)."""

    def __init__(
        self,
        *,
        l2: L2Backend | None,
        redis: RedisStore | None,
        key_prefix: str,
        l1_max_entries: int,
        l1_max_bytes: int,
        l1_max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.l2 = l2
        self._redis = redis if isinstance(l2, RedisBackend) else None
        self._prefix = key_prefix
        self.l1: MemoryStore[CacheEntry] = MemoryStore(
            max_entries=l1_max_entries,
            max_bytes=l1_max_bytes,
            clock=clock,
            sizeof=lambda entry: len(entry.body) + 200,
        )
        self.l1_max_ttl = l1_max_ttl
        self.clock = clock
        self.stats = CacheStats()
        self._versions: dict[str, tuple[int, float]] = {}
        self._versions_lock = threading.Lock()
        self._l2_down_until = 0.0
        self._origin = uuid.uuid4().hex
        self._channel = redis.channel("cache") if self._redis is not None and redis is not None else None

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Replace the time source (wall-clock seconds) of both layers; for tests."""
        self.clock = clock
        self.l1.set_clock(clock)

    # -- naming ----------------------------------------------------------------

    def entry_key(self, key: str) -> str:
        return f"{self._prefix}cache:e:{key}"

    def _tag_key(self, tag: str) -> str:
        # All tag counters share one hash slot so one MGET reads them on a cluster.
        return f"{self._prefix}{{cache-tags}}:{tag}"

    def lock_key(self, key: str) -> str:
        return f"{self._prefix}cache:lock:{key}"

    # -- L2 access that fails open ------------------------------------------------

    def _l2(self) -> L2Backend | None:
        if self.l2 is None or time.monotonic() < self._l2_down_until:
            return None
        return self.l2

    def _l2_failed(self, operation: str, exc: Exception) -> None:
        self.stats.count_reason("errors", f"l2_{operation}")
        if self._l2_down_until == 0.0:
            logger.warning("cache L2 unavailable, serving from L1 and the views (%s)", exc)
        self._l2_down_until = time.monotonic() + _L2_COOLDOWN

    def _l2_ok(self) -> None:
        if self._l2_down_until:
            logger.info("cache L2 reachable again")
            self._l2_down_until = 0.0

    # -- tag versions ----------------------------------------------------------------

    def versions(self, tags: Iterable[str]) -> dict[str, int]:
        """The tag versions a new entry is made under: each of ``tags`` and
        EVERYTHING, from this process's copy when fresh, else from L2."""
        return self._current([EVERYTHING, *tags])

    def _current(self, wanted: Iterable[str]) -> dict[str, int]:
        now = self.clock()
        with self._versions_lock:
            known = {tag: self._versions.get(tag) for tag in wanted}
        stale = [tag for tag, seen in known.items() if seen is None or now - seen[1] > self.l1_max_ttl]
        l2 = self._l2()
        if stale and l2 is not None:
            try:
                counters = l2.get_counters([self._tag_key(tag) for tag in stale])
            except StoreUnavailableError as exc:
                self._l2_failed("tags", exc)
            else:
                self._l2_ok()
                with self._versions_lock:
                    for tag, version in zip(stale, counters, strict=True):
                        self._versions[tag] = (version, now)
                        known[tag] = (version, now)
        return {tag: (seen[0] if seen else 0) for tag, seen in known.items()}

    def _is_current(self, entry: CacheEntry, now: float) -> bool:
        if entry.expires_at <= now:
            return False
        return not entry.tags or self._current(entry.tags) == entry.tags

    def _learn_version(self, tag: str, version: int) -> None:
        with self._versions_lock:
            seen = self._versions.get(tag)
            if seen is None or seen[0] <= version:
                self._versions[tag] = (version, self.clock())

    # -- read and write ------------------------------------------------------------------

    def get(self, key: str) -> tuple[CacheEntry, str] | None:
        """The current entry for ``key`` and the layer it came from (``"l1"``/``"l2"``)."""
        entry = self.get_l1(key)
        if entry is not None:
            return entry, "l1"
        l2 = self._l2()
        if l2 is None:
            return None
        try:
            data = l2.get(self.entry_key(key))
        except StoreUnavailableError as exc:
            self._l2_failed("get", exc)
            return None
        self._l2_ok()
        entry = self._accept(key, data)
        return None if entry is None else (entry, "l2")

    def get_l1(self, key: str) -> CacheEntry | None:
        entry = self.l1.get(key)
        if entry is None:
            return None
        if self._is_current(entry, self.clock()):
            return entry
        self.l1.delete(key)
        return None

    def get_l2_or_lock(self, key: str, lock_ttl: float) -> tuple[CacheEntry | None, str]:
        """Read L2, or take the stampede lock for ``key`` in the same round trip.

        Returns the entry with ``"hit"``, or None with ``"locked"`` (this
        process computes and must :meth:`put` with ``unlock=True`` or
        :meth:`unlock`), ``"busy"`` (another process computes) or ``"none"``
        (no L2, or it failed: compute without a lock).
        """
        l2 = self._l2()
        if l2 is None:
            return None, "none"
        lock_key = self.lock_key(key)
        token = self._origin.encode()
        try:
            data, locked = l2.get_or_lock(self.entry_key(key), lock_key, token, lock_ttl)
            entry = self._accept(key, data)
            if data is not None and entry is None:  # stale or unreadable: a miss after all
                locked = l2.add(lock_key, token, lock_ttl)
        except StoreUnavailableError as exc:
            self._l2_failed("get", exc)
            return None, "none"
        self._l2_ok()
        if entry is not None:
            return entry, "hit"
        return None, "locked" if locked else "busy"

    def unlock(self, key: str) -> None:
        l2 = self._l2()
        if l2 is not None:
            with contextlib.suppress(StoreUnavailableError):
                l2.delete([self.lock_key(key)])

    def _accept(self, key: str, data: bytes | None) -> CacheEntry | None:
        """Decode an L2 value; a current one is copied into L1."""
        if data is None:
            return None
        try:
            entry = decode(data)
        except UnreadableEntry:
            self.stats.count_reason("errors", "unreadable_entry")
            return None
        now = self.clock()
        if not self._is_current(entry, now):
            return None
        self._fill_l1(key, entry, now)
        return entry

    def _fill_l1(self, key: str, entry: CacheEntry, now: float) -> None:
        ttl = min(entry.expires_at - now, self.l1_max_ttl)
        if ttl > 0:
            self.l1.set(key, entry, ttl)

    def put(self, key: str, entry: CacheEntry, *, unlock: str | None = None) -> None:
        """Store in both layers (L2 failures are counted, not raised); with
        ``unlock``, release that key's stampede lock in the same round trip."""
        now = self.clock()
        self._fill_l1(key, entry, now)
        self.stats.count("sets")
        l2 = self._l2()
        if l2 is None:
            return
        try:
            if unlock is None:
                l2.set(self.entry_key(key), entry.encode(), entry.expires_at - now)
            else:
                l2.set_and_unlock(
                    self.entry_key(key), entry.encode(), entry.expires_at - now, self.lock_key(unlock)
                )
        except StoreUnavailableError as exc:
            self._l2_failed("set", exc)
        else:
            self._l2_ok()

    # -- invalidation ----------------------------------------------------------------------

    def delete(self, key: str) -> None:
        self.l1.delete(key)
        self.stats.count("deletes")
        l2 = self._l2()
        if l2 is not None:
            try:
                l2.delete([self.entry_key(key)])
            except StoreUnavailableError as exc:
                self._l2_failed("delete", exc)
        self._publish({"op": "key", "key": key})

    def invalidate_tag(self, tag: str) -> int:
        """Make every entry carrying ``tag`` stale; O(1) in their number."""
        l2 = self.l2
        if l2 is not None:
            try:
                version = l2.incr(self._tag_key(tag))
            except StoreUnavailableError as exc:
                self._l2_failed("invalidate", exc)
                raise
        else:
            with self._versions_lock:
                version = self._versions.get(tag, (0, 0.0))[0] + 1
        self._learn_version(tag, version)
        self.stats.count("tag_invalidations")
        self._publish({"op": "tag", "tag": tag, "version": version})
        return version

    def invalidate_pattern(self, pattern: str | re.Pattern[str]) -> int:
        """Delete entries whose key matches a glob (``str``) or a regex; returns
        how many L2 entries went. Uses SCAN over our own keys, never KEYS."""
        matches = _matcher(pattern)
        removed = self.l1.delete_where(matches)
        if self.l2 is not None:
            if self._redis is None:
                raise PatternsNeedRedis(
                    f"pattern invalidation needs the Redis backend; the configured L2 is {self.l2.name}"
                )
            glob = pattern if isinstance(pattern, str) else "*"
            doomed = [
                full
                for full in self.l2.scan(self.entry_key(glob))
                if matches(full.removeprefix(self.entry_key("")))
            ]
            removed = 0
            for start in range(0, len(doomed), 500):
                removed += self.l2.delete(doomed[start : start + 500])
        self.stats.count("pattern_invalidations")
        if isinstance(pattern, str):
            self._publish({"op": "glob", "pattern": pattern})
        else:
            self._publish({"op": "regex", "pattern": pattern.pattern, "flags": pattern.flags})
        return removed

    def clear(self) -> None:
        """Drop everything, in every process."""
        self.invalidate_tag(EVERYTHING)
        self.l1.clear()
        if self._redis is not None:
            with contextlib.suppress(StoreUnavailableError):
                for batch in batched(self._redis.scan("cache:e:*"), 500):
                    self._redis.delete(*batch)
        self._publish({"op": "clear"})

    # -- coherence across processes ------------------------------------------------------------

    def _publish(self, message: dict[str, Any]) -> None:
        if self._redis is None or self._channel is None:
            return
        message["origin"] = self._origin
        try:
            self._redis.publish(self._channel, json.dumps(message).encode())
        except StoreUnavailableError as exc:
            self._l2_failed("publish", exc)

    def listen(self) -> None:
        """Apply other processes' invalidations to this process's L1."""
        if self._redis is None or self._channel is None:
            return
        self._redis.subscriber.on_gap(self._forget_everything)
        self._redis.subscribe(self._channel, self._on_message)

    def _forget_everything(self) -> None:
        self.l1.clear()
        with self._versions_lock:
            self._versions.clear()
        self.stats.count_reason("errors", "subscription_lost")

    def _on_message(self, raw: bytes) -> None:
        message = json.loads(raw)
        self.stats.count("invalidations_received")
        operation = message.get("op")
        if operation == "key":
            self.l1.delete(str(message["key"]))
        elif operation == "tag":
            self._learn_version(str(message["tag"]), int(message["version"]))
        elif operation == "glob":
            self.l1.delete_where(_matcher(str(message["pattern"])))
        elif operation == "regex":
            self.l1.delete_where(_matcher(re.compile(str(message["pattern"]), int(message["flags"]))))
        elif operation == "clear":
            self.l1.clear()

    # -- statistics -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        l1 = self.l1.stats()
        return {
            **self.stats.snapshot(),
            "l1": {
                "entries": l1.entries,
                "bytes": l1.bytes,
                "evictions": l1.evictions,
                "expirations": l1.expirations,
            },
            "l2": {
                "backend": None if self.l2 is None else self.l2.name,
                "available": self._l2_down_until == 0.0,
            },
        }


def _matcher(pattern: str | re.Pattern[str]) -> Callable[[str], bool]:
    if isinstance(pattern, str):
        return lambda key: fnmatch.fnmatchcase(key, pattern)
    return lambda key: pattern.search(key) is not None
