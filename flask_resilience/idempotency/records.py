"""Idempotency records: claim, renew, complete, release and read, atomically.

A record moves through two states under one key:

- *in flight*: the fingerprint and an owner token, stored with ``SET NX`` and
  a lease (renewed while the request runs), so a worker that dies frees the
  key within one lease;
- *completed*: the stored response and the fingerprint, until its absolute
  expiry (``x``), which every copy honours.

Both are ``responses.pack(b"I", ...)`` envelopes. Claiming (``SET NX``, or
read what is there) is one ``SET NX PX GET`` on Redis >= 7.0 and a Lua script
on older servers (chosen once per store); renewing, completing and releasing
(only while this request still owns the claim) are single Lua scripts on Redis
(:class:`RedisRecords`), and the same operations under one lock in
:class:`MemoryRecords` when there is no Redis. The backend is chosen once,
at ``init_app``.
"""

from __future__ import annotations

import fnmatch
import heapq
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..responses import StoredResponse, UnreadableRecord, pack, pack_json, unpack, valid_time
from ..stores.redis import RedisStore, WrongTypeError
from .protocol import Completed, InFlight, Record, Unreadable

KIND = b"I"
UNREADABLE = Unreadable()

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
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def in_flight_value(fingerprint: str, owner: str) -> bytes:
    """The in-flight record; compared byte for byte, so it is deterministic.

    Fingerprints and owners are hex: their JSON is written directly, the same
    bytes the encoder gives, without running it on every claim.
    """
    if fingerprint.isascii() and fingerprint.isalnum() and owner.isascii() and owner.isalnum():
        return pack_json(KIND, f'{{"p":1,"fp":"{fingerprint}","o":"{owner}"}}'.encode(), b"")
    return pack(KIND, {"p": 1, "fp": fingerprint, "o": owner}, b"")


def completed_value(record: Completed) -> bytes:
    header = {**record.response.fields(), "fp": record.fingerprint, "x": record.expires_at}
    return pack(KIND, header, record.response.body)


def decode(value: bytes) -> Record:
    """A stored record; :class:`Unreadable` for anything this version cannot read."""
    try:
        header, body = unpack(KIND, value)
        if header.get("p"):
            return InFlight(str(header["fp"]), str(header["o"]))
        expires_at = float(header["x"])
        if not valid_time(expires_at):
            return UNREADABLE
        return Completed(str(header["fp"]), expires_at, StoredResponse.from_fields(header, body))
    except (UnreadableRecord, KeyError, TypeError, ValueError, OverflowError):
        return UNREADABLE


def new_owner() -> str:
    # Unique per claim; os.urandom is slow on some VMs.
    return f"{random.getrandbits(128):032x}"


@dataclass(frozen=True)
class Claim:
    """The outcome of ``claim``: ``owner`` is set when this request now holds
    the key (``claimed`` is its in-flight value); otherwise ``existing`` is
    what holds it."""

    owner: str | None
    claimed: bytes
    existing: Record | None


class Records(Protocol):
    """Where records live. Methods raise ``StoreUnavailableError`` when the
    store fails; ``claimed`` is the in-flight value a claim stored."""

    clock: Callable[[], float]

    def claim(self, record_key: str, fingerprint: str, lease: float) -> Claim: ...

    def renew(self, record_key: str, claimed: bytes, lease: float) -> bool: ...

    def complete(self, record_key: str, claimed: bytes, value: bytes, ttl: float) -> bool: ...

    def release(self, record_key: str, claimed: bytes) -> bool: ...

    def get(self, record_key: str) -> Record | None: ...

    def fits(self, value: bytes) -> bool:
        """Whether a completed record of ``value`` can be kept at all."""
        ...

    def delete_matching(self, glob: str) -> int: ...

    def __len__(self) -> int: ...


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


# SET with NX and GET together: Redis 7.0 (6.2 refuses the pair).
SET_NX_GET_SINCE = (7, 0)


class RedisRecords:
    """Records in Redis, shared by every process.

    ``set_get`` forces the claim command: ``SET NX PX GET`` (True) or the Lua
    script (False); by default the server's version decides, asked once at
    the first claim.
    """

    def __init__(
        self, redis: RedisStore, clock: Callable[[], float] = time.time, *, set_get: bool | None = None
    ) -> None:
        self._redis = redis
        self.clock = clock
        self._set_get = set_get
        self._claim = redis.script(_CLAIM)
        self._complete = redis.script(_COMPLETE)
        self._release = redis.script(_RELEASE)
        self._renew = redis.script(_RENEW)

    def _key(self, record_key: str) -> str:
        return self._redis.key("idem", record_key)

    def claim(self, record_key: str, fingerprint: str, lease: float) -> Claim:
        owner = new_owner()
        value = in_flight_value(fingerprint, owner)
        try:
            if self.claims_with_set_get():
                existing = self._redis.set_absent_or_get(self._key(record_key), value, lease)
            else:
                existing = self._redis.run_script(self._claim, [self._key(record_key)], [value, _ms(lease)])
        except WrongTypeError:
            return Claim(None, value, UNREADABLE)
        if existing is None:
            return Claim(owner, value, None)
        return Claim(None, value, decode(existing))

    def claims_with_set_get(self) -> bool:
        """Whether a claim is one ``SET NX PX GET`` (else the Lua script)."""
        if self._set_get is None:
            self._set_get = self._redis.server_version() >= SET_NX_GET_SINCE
        return self._set_get

    def renew(self, record_key: str, claimed: bytes, lease: float) -> bool:
        return bool(self._redis.run_script(self._renew, [self._key(record_key)], [claimed, _ms(lease)]))

    def complete(self, record_key: str, claimed: bytes, value: bytes, ttl: float) -> bool:
        args = [claimed, value, _ms(ttl)]
        return bool(self._redis.run_script(self._complete, [self._key(record_key)], args))

    def release(self, record_key: str, claimed: bytes) -> bool:
        return bool(self._redis.run_script(self._release, [self._key(record_key)], [claimed]))

    def get(self, record_key: str) -> Record | None:
        try:
            value = self._redis.get(self._key(record_key))
        except WrongTypeError:
            return UNREADABLE
        return None if value is None else decode(value)

    def fits(self, value: bytes) -> bool:
        return True  # a Redis string holds 512 MB; responses are bounded far below

    def delete_matching(self, glob: str) -> int:
        return self._redis.delete_matching(f"idem:{glob}")

    def __len__(self) -> int:
        return sum(1 for _ in self._redis.scan("idem:*"))


class MemoryRecords:
    """Records in this process only (no Redis), bounded and swept.

    In-flight records are never evicted (that would let a duplicate run);
    completed ones are kept up to ``max_entries`` and ``max_bytes``, least
    recently used evicted first, and expired ones are swept every
    ``sweep_every`` writes and before anything live is evicted.

    Completed records' expiries are kept in a heap, so a sweep costs what it
    removes, not the store's size: a full store pays no scan per write.

    Completed records expire by ``clock`` (wall-clock seconds, the absolute
    expiry every copy honours); in-flight leases by ``lease_clock``
    (``time.monotonic``), as Redis expires them: a step of the wall clock
    (NTP, a resumed VM) never frees the key of a request still running.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        lease_clock: Callable[[], float] = time.monotonic,
        sweep_every: int = 256,
    ) -> None:
        self.clock = clock
        self.lease_clock = lease_clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._sweep_every = sweep_every
        self._writes = 0
        self._lock = threading.Lock()
        self._flights: dict[str, tuple[bytes, float]] = {}
        self._done: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        # (expiry, key) of completed records; entries of records since
        # dropped stay until popped or compacted away.
        self._expiries: list[tuple[float, str]] = []
        self._bytes = 0

    def claim(self, record_key: str, fingerprint: str, lease: float) -> Claim:
        owner = new_owner()
        value = in_flight_value(fingerprint, owner)
        with self._lock:
            stored = self._live(record_key)
            if stored is None:
                self._flights[record_key] = (value, self.lease_clock() + lease)
                return Claim(owner, value, None)
            return Claim(None, value, decode(stored))

    def renew(self, record_key: str, claimed: bytes, lease: float) -> bool:
        with self._lock:
            if self._live(record_key) != claimed:
                return False
            self._flights[record_key] = (claimed, self.lease_clock() + lease)
            return True

    def complete(self, record_key: str, claimed: bytes, value: bytes, ttl: float) -> bool:
        with self._lock:
            if self._live(record_key) != claimed:
                return False
            del self._flights[record_key]
            expires = self.clock() + ttl
            self._done[record_key] = (value, expires)
            self._bytes += len(value)
            self._expire_at(expires, record_key)
            self._writes += 1
            if self._writes % self._sweep_every == 0:
                self._sweep()
            self._evict_over_bounds()
            return True

    def release(self, record_key: str, claimed: bytes) -> bool:
        with self._lock:
            if self._live(record_key) != claimed:
                return False
            del self._flights[record_key]
            return True

    def get(self, record_key: str) -> Record | None:
        with self._lock:
            value = self._live(record_key)
        return None if value is None else decode(value)

    def fits(self, value: bytes) -> bool:
        return len(value) <= self._max_bytes

    def delete_matching(self, glob: str) -> int:
        with self._lock:
            removed = 0
            for table in (self._flights, self._done):
                doomed = [key for key in table if fnmatch.fnmatchcase(key, glob)]
                for key in doomed:
                    self._drop(table, key)
                removed += len(doomed)
            return removed

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights) + len(self._done)

    def _live(self, record_key: str) -> bytes | None:
        flight = self._flights.get(record_key)
        if flight is not None:
            if flight[1] > self.lease_clock():
                return flight[0]
            self._drop(self._flights, record_key)
        done = self._done.get(record_key)
        if done is not None:
            if done[1] > self.clock():
                self._done.move_to_end(record_key)
                return done[0]
            self._drop(self._done, record_key)
        return None

    def _drop(self, table: dict[str, tuple[bytes, float]], record_key: str) -> None:
        value, _expires = table.pop(record_key)
        if table is self._done:
            self._bytes -= len(value)

    def _expire_at(self, expires: float, record_key: str) -> None:
        expiries = self._expiries
        if len(expiries) > 2 * len(self._done) + 64:  # mostly dropped records: rebuild, amortised O(1)
            expiries[:] = [(expires_at, key) for key, (_value, expires_at) in self._done.items()]
            heapq.heapify(expiries)
        else:
            heapq.heappush(expiries, (expires, record_key))

    def _sweep(self) -> None:
        leases_now, now = self.lease_clock(), self.clock()
        for key in [key for key, (_value, expires) in self._flights.items() if expires <= leases_now]:
            self._drop(self._flights, key)
        expiries, done = self._expiries, self._done
        while expiries and expiries[0][0] <= now:
            expires, key = heapq.heappop(expiries)
            stored = done.get(key)
            if stored is not None and stored[1] == expires:
                self._drop(done, key)

    def _evict_over_bounds(self) -> None:
        if len(self._done) <= self._max_entries and self._bytes <= self._max_bytes:
            return
        self._sweep()
        while self._done and (len(self._done) > self._max_entries or self._bytes > self._max_bytes):
            key = next(iter(self._done))
            self._drop(self._done, key)
