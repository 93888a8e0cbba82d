"""Idempotency records: claim, complete, release and replay, atomically.

A record moves through two states under one key:

- *in flight*: ``{"s": "p", "fp": fingerprint, "o": owner token}``, stored
  with ``SET NX`` and a lease, so a worker that dies frees the key by itself;
- *completed*: the stored response (status, allow-listed headers, body) and
  the fingerprint, for ``ttl`` seconds.

Claiming (``SET NX``, or read what is there), completing and releasing (only
if this request still owns the claim) are single Lua scripts on Redis, and
the same operations under one lock in memory when there is no Redis.
"""

from __future__ import annotations

import fnmatch
import json
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..stores.redis import RedisStore

_MAGIC = b"FRI1"
_LENGTH = struct.Struct(">I")

_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""
_COMPLETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


@dataclass(frozen=True)
class Completed:
    fingerprint: str
    created_at: float  # wall-clock seconds of the first response
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def encode(self) -> bytes:
        header = json.dumps(
            {
                "fp": self.fingerprint,
                "t": self.created_at,
                "s": self.status,
                "h": [list(h) for h in self.headers],
            },
            separators=(",", ":"),
        ).encode()
        return _MAGIC + _LENGTH.pack(len(header)) + header + self.body


@dataclass(frozen=True)
class InFlight:
    fingerprint: str
    owner: str


def in_flight_value(fingerprint: str, owner: str) -> bytes:
    return json.dumps({"s": "p", "fp": fingerprint, "o": owner}, separators=(",", ":")).encode()


def decode(value: bytes) -> Completed | InFlight | None:
    """A stored record; None for anything unreadable (treated as absent)."""
    try:
        if value.startswith(_MAGIC):
            (length,) = _LENGTH.unpack_from(value, len(_MAGIC))
            start = len(_MAGIC) + _LENGTH.size
            header = json.loads(value[start : start + length])
            return Completed(
                fingerprint=str(header["fp"]),
                created_at=float(header["t"]),
                status=int(header["s"]),
                headers=tuple((str(name), str(item)) for name, item in header["h"]),
                body=value[start + length :],
            )
        data = json.loads(value)
        return InFlight(str(data["fp"]), str(data["o"]))
    except (ValueError, KeyError, TypeError, struct.error):
        return None


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`RecordStore.claim`: ``owner`` is set when this
    request now holds the key; otherwise ``existing`` is what holds it."""

    owner: str | None
    existing: Completed | InFlight | None


class RecordStore:
    """Records in Redis (shared by every process) or in this process's memory."""

    def __init__(self, redis: RedisStore | None, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._prefix = prefix
        self.clock = clock
        self._memory: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        if redis is not None:
            self._claim = redis.script(_CLAIM)
            self._complete = redis.script(_COMPLETE)
            self._release = redis.script(_RELEASE)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    def full_key(self, record_key: str) -> str:
        return f"{self._prefix}idem:{record_key}"

    # -- the three transitions ------------------------------------------------------

    def claim(self, record_key: str, fingerprint: str, lease: float) -> Claim:
        """Raises StoreUnavailableError when Redis fails."""
        owner = f"{random.getrandbits(128):032x}"  # unique per claim; os.urandom is slow on some VMs
        value = in_flight_value(fingerprint, owner)
        key = self.full_key(record_key)
        if self._redis is not None:
            existing = self._redis.run_script(self._claim, [key], [value, max(1, int(lease * 1000))])
            if existing is None:
                return Claim(owner, None)
            return Claim(None, decode(existing))
        with self._lock:
            stored = self._live(key)
            if stored is None:
                self._memory[key] = (value, self.clock() + lease)
                return Claim(owner, None)
            return Claim(None, decode(stored))

    def complete(self, record_key: str, fingerprint: str, owner: str, record: Completed, ttl: float) -> bool:
        """Store the response if this request still owns the claim."""
        key = self.full_key(record_key)
        claimed = in_flight_value(fingerprint, owner)
        if self._redis is not None:
            stored = self._redis.run_script(
                self._complete, [key], [claimed, record.encode(), max(1, int(ttl * 1000))]
            )
            return bool(stored)
        with self._lock:
            if self._live(key) != claimed:
                return False
            self._memory[key] = (record.encode(), self.clock() + ttl)
            return True

    def release(self, record_key: str, fingerprint: str, owner: str) -> None:
        """Give the key back (the request failed and may be retried)."""
        key = self.full_key(record_key)
        claimed = in_flight_value(fingerprint, owner)
        if self._redis is not None:
            self._redis.run_script(self._release, [key], [claimed])
            return
        with self._lock:
            if self._live(key) == claimed:
                del self._memory[key]

    def get(self, record_key: str) -> Completed | InFlight | None:
        key = self.full_key(record_key)
        if self._redis is not None:
            value = self._redis.get(key)
        else:
            with self._lock:
                value = self._live(key)
        return None if value is None else decode(value)

    # -- administration ------------------------------------------------------------------

    def delete_matching(self, glob: str) -> int:
        """Delete records whose key (after ``idem:``) matches ``glob``."""
        pattern = self.full_key(glob)
        if self._redis is not None:
            doomed = list(self._redis.scan(pattern.removeprefix(self._prefix)))
            removed = 0
            for start in range(0, len(doomed), 500):
                removed += self._redis.delete(*doomed[start : start + 500])
            return removed
        with self._lock:
            doomed = [key for key in self._memory if fnmatch.fnmatchcase(key, pattern)]
            for key in doomed:
                del self._memory[key]
            return len(doomed)

    def _live(self, key: str) -> bytes | None:
        stored = self._memory.get(key)
        if stored is None:
            return None
        if stored[1] <= self.clock():
            del self._memory[key]
            return None
        return stored[0]
