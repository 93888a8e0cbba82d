"""L1 (in-process) over L2 (Redis or a Flask-Caching backend), kept coherent.

Reads check L1, then L2 (filling L1), and report a miss otherwise. A miss
learns the resource's generation and the tag versions *before* its view runs
and stores under them; the store is refused (L2) or the entry is stale on
arrival (tags) when an invalidation came in between. Every invalidation is
applied to L2 and published; every process's listener drops its L1 copies
(see :mod:`.coherence`). L1 entries live at most ``l1_max_ttl`` seconds when
there is a second layer, which bounds staleness even when a message is lost,
and L1 is used only while this process is listening for those messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from time import perf_counter_ns

from ..stores.memory import MemoryStore
from ..stores.redis import RedisStore, StoreUnavailableError
from .backends import L2Backend
from .entry import CacheEntry, Stamp, UnreadableEntry, decode
from .stats import CacheStats
from .tags import TagVersions

logger = logging.getLogger("flask_resilience.cache")

_L2_COOLDOWN = 1.0  # seconds L2 is skipped after an error, so a dead Redis costs one timeout a second
_ALWAYS = float("-inf")
# L1 lookups are timed one in SAMPLE (a power of two), the sample standing for
# SAMPLE in the histogram: an estimate, as the breaker's fast path times.
SAMPLE = 32
_SAMPLE_MASK = SAMPLE - 1


@dataclass
class Lookup:
    """What a lookup found: an entry and its layer, or a miss with the
    resource's generation (to store under) and whether this caller holds
    the stampede lock (``locked``) or another process does (``busy``)."""

    entry: CacheEntry | None = None
    layer: str = ""
    generation: str | None = None
    locked: bool = False
    busy: bool = False


class LayeredCache:
    """The cache of one app. ``clock`` returns wall-clock seconds (entries
    carry absolute expiry times shared between processes)."""

    def __init__(
        self,
        *,
        l2: L2Backend | None,
        redis: RedisStore | None,
        l1_max_entries: int,
        l1_max_bytes: int,
        l1_max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.l2 = l2
        # pub/sub (and so the listening gate) only when L2 is our Redis
        self.redis = redis if l2 is not None and l2.shares_invalidations else None
        self.l1: MemoryStore[tuple[CacheEntry, float]] = MemoryStore(
            max_entries=l1_max_entries,
            max_bytes=l1_max_bytes,
            clock=clock,
            sizeof=lambda stored: len(stored[0].body) + 200,
        )
        # Without a second layer nothing else can invalidate: no cap (docs/cache.rst, embedded mode).
        self.l1_max_ttl = l1_max_ttl if l2 is not None else None
        self.clock = clock
        self.stats = CacheStats()
        self._l1_lookups = 0  # which lookup is timed (a race only moves the sample)
        self.tags = TagVersions(self._fetch_versions if l2 is not None else None, l1_max_ttl)
        self.l1_changes = 0  # bumped by every L1 invalidation: a fill racing one is dropped
        self.l1_fills = 0  # bumped by every L1 fill: a reader that saw it unchanged need not look again
        self.down_until = 0.0
        self._down_lock = threading.Lock()
        self._l2_back: list[Callable[[], None]] = []
        # Resources whose L2 entries must not be read (an invalidation of them is owed).
        self.skips_l2: Callable[[str], bool] = lambda _resource: False
        # Times the cool-down after an L2 error (monotonic seconds); tests move it by hand.
        self.outage_clock: Callable[[], float] = time.monotonic

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Replace the time source (wall-clock seconds) of both layers; for tests."""
        self.clock = clock
        self.l1.set_clock(clock)

    # -- L2 access that fails open ------------------------------------------------

    def usable_l2(self) -> L2Backend | None:
        if self.l2 is None or self.outage_clock() < self.down_until:
            return None
        return self.l2

    def l2_failed(self, operation: str, exc: Exception) -> None:
        self.stats.count_reason("errors", f"l2_{operation}")
        with self._down_lock:
            if self.down_until == 0.0:
                logger.warning("cache L2 unavailable, serving from L1 and the views (%s)", exc)
            self.down_until = self.outage_clock() + _L2_COOLDOWN

    def on_l2_back(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when L2 may answer again: at the first request
        after the cool-down (a process serving only L1 hits uses L2 no more),
        and when L2 answered after an error. It runs on that request's thread,
        so it must return at once when it has nothing to do."""
        self._l2_back.append(callback)

    def l2_answered(self) -> None:
        """L2 answered a call: end the cool-down (if any)."""
        if self.down_until:
            with self._down_lock:
                back, self.down_until = self.down_until != 0.0, 0.0
            if back:
                logger.info("cache L2 reachable again")
                for callback in self._l2_back:
                    callback()

    def cooling_down(self) -> bool:
        """Whether L2 is being skipped after an error."""
        return self.down_until != 0.0 and self.outage_clock() < self.down_until

    def after_cooldown(self) -> None:
        """Call the :meth:`on_l2_back` callbacks when the cool-down is over (L2 may
        answer again). The request middleware calls it whenever ``down_until`` is set."""
        if self.down_until and self.outage_clock() >= self.down_until:
            for callback in self._l2_back:
                callback()

    def l2_available(self) -> bool:
        return self.down_until == 0.0

    # -- the listening gate (L1 coherence) ------------------------------------------

    def trusted_since(self) -> float | None:
        """Monotonic time from which L1 contents are trusted; None: not now.

        With our Redis, L1 is trusted only while the pub/sub listener has
        confirmed its subscriptions, and only for what was stored after that.
        While Redis is unreachable L1 serves as an outage cache (nobody can
        publish through it either). Without pub/sub, always.
        """
        if self.down_until:
            self.after_cooldown()  # the cool-down may be over: time to try L2 again
            return _ALWAYS if self.down_until or self.redis is None else self.trusted_since()
        if self.redis is None:
            return _ALWAYS
        since = self.redis.subscriber.listening_since()
        if since is None:
            self.redis.subscriber.ensure_running()
        return since

    # -- tag versions ----------------------------------------------------------------

    def _fetch_versions(self, tags: list[str]) -> tuple[str, list[int]] | None:
        l2 = self.usable_l2()
        if l2 is None:
            return None
        try:
            fetched = l2.tag_versions(tags)
        except StoreUnavailableError as exc:
            self.l2_failed("tags", exc)
            return None
        self.l2_answered()
        return fetched

    def stamp(self, tags: Iterable[str], trusted_since: float | None) -> Stamp:
        """What a new entry is made under; read it before computing the entry."""
        epoch, versions = self.tags.current(tags, trusted_since)
        return Stamp(epoch, versions)

    def is_current(self, entry: CacheEntry, now: float, trusted_since: float | None) -> bool:
        if entry.expires_at <= now:
            return False
        stamp = entry.stamp
        known = self.tags.matches(stamp.epoch, stamp.tags, trusted_since)
        if known is not None:
            return known  # the in-process copy could tell: no round trip
        return self.stamp(stamp.tags, trusted_since) == Stamp(stamp.epoch, stamp.tags)

    # -- read ---------------------------------------------------------------------------

    def get_l1(self, key: str, trusted_since: float | None) -> CacheEntry | None:
        """The current L1 entry for ``key``; None also while L1 is not trusted."""
        if trusted_since is None:
            return None
        self._l1_lookups = lookups = self._l1_lookups + 1
        if lookups & _SAMPLE_MASK:
            stored = self.l1.get(key)
        else:  # one lookup in SAMPLE is timed and stands for SAMPLE (two clock reads cost a third of a hit)
            began = perf_counter_ns()
            stored = self.l1.get(key)
            self.stats.lookup_seconds["l1"].observe_sample(perf_counter_ns() - began, SAMPLE)
        if stored is None:
            return None
        entry, stored_at = stored
        if stored_at >= trusted_since and self.is_current(entry, self.clock(), trusted_since):
            return entry
        self.l1.delete(key)
        return None

    def lookup(self, key: str, resource: str, *, token: str = "", lock_ttl: float | None = None) -> Lookup:
        """L1, then L2 in one round trip (which also takes the stampede lock
        when ``lock_ttl`` is given and nothing current is there)."""
        since = self.trusted_since()
        entry = self.get_l1(key, since)
        if entry is not None:
            return Lookup(entry, "l1")
        return self.lookup_l2(key, resource, since, token=token, lock_ttl=lock_ttl)

    def lookup_l2(
        self, key: str, resource: str, since: float | None, *, token: str = "", lock_ttl: float | None = None
    ) -> Lookup:
        l2 = self.usable_l2()
        if l2 is None or self.skips_l2(resource):
            return Lookup()
        changes, began = self.l1_changes, time.monotonic()
        try:
            began_ns = perf_counter_ns()
            data, generation, locked = l2.lookup(key, resource, token, lock_ttl)
            self.stats.lookup_seconds["l2"].since(began_ns)
            entry = self._accept(data, since)
            if data is not None and entry is None and lock_ttl is not None:
                locked = l2.lock(key, resource, token, lock_ttl)  # stale by its tags: a miss after all
        except StoreUnavailableError as exc:
            self.l2_failed("get", exc)
            return Lookup()
        self.l2_answered()
        if entry is not None:
            self._fill_l1(key, entry, began, changes)
            return Lookup(entry, "l2", generation)
        return Lookup(None, "", generation, locked, busy=lock_ttl is not None and not locked)

    def _accept(self, data: bytes | None, since: float | None) -> CacheEntry | None:
        if data is None:
            return None
        try:
            entry = decode(data)
        except UnreadableEntry:
            self.stats.count_reason("errors", "unreadable_entry")
            return None
        return entry if self.is_current(entry, self.clock(), since) else None

    # -- write --------------------------------------------------------------------------

    def _fill_l1(self, key: str, entry: CacheEntry, began: float, changes: int) -> None:
        """Keep ``entry``, whose making (or reading) began at monotonic
        ``began``, in L1: not while unlistened, and not if an invalidation
        arrived meanwhile. :meth:`get_l1` drops it if listening was (re)confirmed
        after ``began``."""
        if self.trusted_since() is None:
            return
        if changes != self.l1_changes:
            return
        ttl = entry.expires_at - self.clock()
        if self.l1_max_ttl is not None:
            ttl = min(ttl, self.l1_max_ttl)
        if ttl > 0:
            self.l1.set(key, (entry, began), ttl)
            self.l1_fills += 1
            if changes != self.l1_changes:  # one raced the set: it counts before it deletes
                self.l1.delete(key)

    def keep_in_l1(self, key: str, entry: CacheEntry, since: tuple[int, float]) -> bool:
        """Keep ``entry`` in L1 only (``since``: :meth:`mark` taken before its
        lookup); False when an invalidation or the listening state forbade it."""
        changes, began = since
        self._fill_l1(key, entry, began, changes)
        return key in self.l1

    def put(
        self,
        key: str,
        resource: str,
        entry: CacheEntry,
        *,
        generation: str | None = None,
        since: tuple[int, float] | None = None,
        token: str | None = None,
        counted: bool = True,
    ) -> bool:
        """Store in both layers; False when an invalidation since the lookup
        refused it (``generation`` from the lookup, and ``since`` =
        :meth:`mark` taken before it). With ``token``, release the stampede
        lock in the same round trip. L2 failures are counted, not raised;
        ``counted=False`` keeps a marker out of the ``sets`` count."""
        changes, began = self.mark() if since is None else since
        if counted:
            self.stats.count("sets")
        l2 = self.usable_l2()
        if l2 is not None:
            try:
                stored = l2.put(
                    key, resource, entry.encode(), entry.ttl(self.clock()), generation=generation, token=token
                )
            except StoreUnavailableError as exc:
                self.l2_failed("set", exc)
            else:
                self.l2_answered()
                if not stored:
                    if counted:
                        self.stats.count_reason("not_stored", "invalidated")
                    return False
        self._fill_l1(key, entry, began, changes)
        return True

    def mark(self) -> tuple[int, float]:
        """Where this process is now: its L1 invalidation count and the
        monotonic time. Take it before a lookup whose miss you will store."""
        return self.l1_changes, time.monotonic()

    def unlock(self, key: str, resource: str, token: str) -> None:
        l2 = self.usable_l2()
        if l2 is not None:
            try:
                l2.unlock(key, resource, token)
            except StoreUnavailableError as exc:
                self.l2_failed("unlock", exc)

    def is_locked(self, key: str, resource: str) -> bool:
        l2 = self.usable_l2()
        if l2 is None:
            return False
        try:
            return l2.is_locked(key, resource)
        except StoreUnavailableError:
            return False
