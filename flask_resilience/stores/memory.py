"""A thread-safe in-process LRU with per-entry TTL, bounded by entries and bytes."""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


def default_sizeof(value: object) -> int:
    """Bytes charged for a value: its length for bytes/str, else ``sys.getsizeof``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return sys.getsizeof(value)


@dataclass
class MemoryStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    entries: int = 0
    bytes: int = 0


@dataclass
class _Entry(Generic[V]):
    value: V
    size: int
    expires_at: float | None


class MemoryStore(Generic[V]):
    """Least-recently-used store; every operation is O(1) under one lock.

    ``ttl`` is in seconds; ``None`` means no expiry. An entry is evicted when
    either bound (``max_entries``, ``max_bytes``) would be exceeded, oldest use
    first; a value larger than ``max_bytes`` is not stored at all. ``clock``
    returns seconds and is injectable for tests (default: ``time.monotonic``).
    """

    def __init__(
        self,
        *,
        max_entries: int = 1000,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sizeof: Callable[[V], int] = default_sizeof,
    ) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be greater than 0, got {max_entries}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be greater than 0, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._sizeof = sizeof
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._stats = MemoryStats()

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Replace the time source; entries keep their absolute expiry times."""
        with self._lock:
            self._clock = clock

    def get(self, key: str) -> V | None:
        """The value, or None when absent or expired; a hit refreshes its recency."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at is not None and entry.expires_at <= self._clock():
                self._remove(key)
                self._stats.expirations += 1
                entry = None
            if entry is None:
                self._stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self._stats.hits += 1
            return entry.value

    def set(self, key: str, value: V, ttl: float | None = None) -> bool:
        """Store ``value``; False when it is larger than ``max_bytes``."""
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be greater than 0 or None, got {ttl}")
        size = self._sizeof(value)
        with self._lock:
            if key in self._entries:
                self._remove(key)
            if self.max_bytes is not None and size > self.max_bytes:
                return False
            expires_at = None if ttl is None else self._clock() + ttl
            self._entries[key] = _Entry(value, size, expires_at)
            self._bytes += size
            self._evict_over_bounds()
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            if key not in self._entries:
                return False
            self._remove(key)
            return True

    def delete_where(self, predicate: Callable[[str], bool]) -> int:
        """Delete every key for which ``predicate(key)`` is true; returns the count."""
        with self._lock:
            doomed = [key for key in self._entries if predicate(key)]
            for key in doomed:
                self._remove(key)
            return len(doomed)

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._bytes = 0
            return count

    def keys(self) -> Iterator[str]:
        """A snapshot of the keys, least recently used first (expired ones included)."""
        with self._lock:
            return iter(list(self._entries))

    def stats(self) -> MemoryStats:
        with self._lock:
            return MemoryStats(
                hits=self._stats.hits,
                misses=self._stats.misses,
                evictions=self._stats.evictions,
                expirations=self._stats.expirations,
                entries=len(self._entries),
                bytes=self._bytes,
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = MemoryStats()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            entry = self._entries.get(key) if isinstance(key, str) else None
            return entry is not None and (entry.expires_at is None or entry.expires_at > self._clock())

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    def _evict_over_bounds(self) -> None:
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            _key, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            if entry.expires_at is not None and entry.expires_at <= self._clock():
                self._stats.expirations += 1
            else:
                self._stats.evictions += 1
