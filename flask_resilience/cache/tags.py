"""Cache tags: their names, and this process's copy of their versions.

Tags are version stamps: an entry records the version of each of its tags
(and the epoch of the counters) when its computation *began*, and is
current only while those are. Invalidating a tag increments one counter,
whatever the number of entries carrying it. ``clear()`` is the same trick on
:data:`EVERYTHING`, a tag every entry carries.

Reading the counters from Redis on every hit would cost a round trip, so
each process keeps a copy, updated by the invalidation messages it receives.
The copy is trusted only while it is younger than the L1 TTL cap *and* was
learned while the process was listening for those messages (issue: a worker
that is not yet subscribed, or is resubscribing, misses them).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable

EVERYTHING = "*"
LOCAL_EPOCH = "local"  # no second layer: the counters are this process's own
OFFLINE_EPOCH = "offline"  # the second layer is unreachable: nothing it stamped matches
SUSPENDED = -1  # a tag's version while its invalidation waits for the second layer (counters start at 1)

_TAG = re.compile(r"[A-Za-z0-9._:/-]{1,128}")

# Reads the epoch and the given tags' counters from the second layer; None
# while it is unreachable.
Fetch = Callable[[list[str]], "tuple[str, list[int]] | None"]


def validate_tags(tags: Iterable[str]) -> list[str]:
    """The tags, checked; raises ValueError naming the first invalid one."""
    checked = list(tags)
    for tag in checked:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise ValueError(f"a cache tag must match [A-Za-z0-9._:/-]{{1,128}}, got {tag!r}")
    return checked


class TagVersions:
    """This process's copy of the epoch and tag counters.

    ``fetch`` is None without a second layer: the copy is then the truth.
    ``max_age`` (seconds) bounds how long a learned value is used without
    asking the second layer again.
    """

    def __init__(
        self, fetch: Fetch | None, max_age: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, float]] = {}  # tag -> (version, when learned)
        self._epoch: tuple[str, float] | None = (LOCAL_EPOCH, 0.0) if fetch is None else None

    def current(self, tags: Iterable[str], trusted_since: float | None) -> tuple[str, dict[str, int]]:
        """The epoch and the versions of ``tags`` (EVERYTHING included).

        ``trusted_since``: values learned before it are asked again (None:
        nothing in the copy is trusted).
        """
        wanted = [EVERYTHING, *tags]
        with self._lock:
            epoch = self._epoch
            seen = {tag: self._seen.get(tag) for tag in wanted}
        if self._fetch is None:
            return LOCAL_EPOCH, {tag: known[0] if known else 0 for tag, known in seen.items()}
        now = self._clock()

        def fresh(learned_at: float) -> bool:
            return (
                trusted_since is not None
                and learned_at >= trusted_since
                and now - learned_at <= self._max_age
            )

        stale = [tag for tag, known in seen.items() if known is None or not fresh(known[1])]
        if not stale and epoch is not None and fresh(epoch[1]):
            return epoch[0], {tag: known[0] for tag, known in seen.items() if known is not None}
        fetched = self._fetch(stale)
        if fetched is None:
            # Unreachable: entries stamped now match only each other, never
            # what Redis stamps once it is back.
            return OFFLINE_EPOCH, {tag: known[0] if known else 0 for tag, known in seen.items()}
        new_epoch, versions = fetched
        with self._lock:
            if self._epoch is None or self._epoch[0] != new_epoch:
                self._forget_counters()  # counters of another epoch mean nothing now
            self._epoch = (new_epoch, now)
            for tag, version in zip(stale, versions, strict=True):
                learned = self._seen.get(tag)
                if learned is not None and (learned is not seen[tag] or learned[0] == SUSPENDED):
                    # Suspended, or learned while the fetch ran (newer than what it read).
                    seen[tag] = learned
                    continue
                self._seen[tag] = (version, now)
                seen[tag] = (version, now)
        return new_epoch, {tag: known[0] for tag, known in seen.items() if known is not None}

    def matches(self, epoch: str, versions: dict[str, int], trusted_since: float | None) -> bool | None:
        """Whether an entry's stamp is current, when the copy can tell (None:
        ask :meth:`current`). The hit path: no lock, no new containers."""
        if self._fetch is None:
            return epoch == LOCAL_EPOCH and all(
                (self._seen.get(tag) or (0, 0.0))[0] == version for tag, version in versions.items()
            )
        known_epoch = self._epoch
        if trusted_since is None or known_epoch is None:
            return None
        oldest = self._clock() - self._max_age
        if known_epoch[1] < trusted_since or known_epoch[1] < oldest:
            return None
        if known_epoch[0] != epoch:
            return False
        for tag, version in versions.items():
            known = self._seen.get(tag)
            if known is None or known[1] < trusted_since or known[1] < oldest:
                return None
            if known[0] != version:
                return False
        return True

    def learn(self, tag: str, version: int, *, here: bool = False) -> None:
        """A newer version: from an invalidation this process made (``here``,
        which also ends a :meth:`suspend`) or from another's message (which
        does not: it may predate the suspended invalidation)."""
        with self._lock:
            known = self._seen.get(tag)
            if known is None or (known[0] <= version and (here or known[0] != SUSPENDED)):
                self._seen[tag] = (version, self._clock())

    def suspend(self, tag: str) -> None:
        """An invalidation of ``tag`` could not reach the second layer: until
        it does (and :meth:`learn` hears the new version), no entry carrying
        ``tag`` is current here, whatever the second layer still says."""
        with self._lock:
            self._seen[tag] = (SUSPENDED, self._clock())

    def bump_local(self, tag: str) -> int:
        """Without a second layer: the next version of ``tag``."""
        with self._lock:
            known = self._seen.get(tag)
            version = (known[0] if known else 0) + 1
            self._seen[tag] = (version, self._clock())
            return version

    def forget(self) -> None:
        """Messages may have been missed: ask the second layer next time."""
        with self._lock:
            self._forget_counters()
            if self._fetch is not None:
                self._epoch = None

    def suspensions(self) -> dict[str, tuple[int, float]]:
        """The suspended tags now (for :meth:`resume`)."""
        with self._lock:
            return {tag: known for tag, known in self._seen.items() if known[0] == SUSPENDED}

    def resume(self, suspensions: dict[str, tuple[int, float]]) -> None:
        """A clear landed: every entry is stale, so the ``suspensions`` taken
        before it end (not one made since: its invalidation is still owed)."""
        with self._lock:
            for tag, known in suspensions.items():
                if self._seen.get(tag) is known:
                    del self._seen[tag]

    def _forget_counters(self) -> None:
        """Drop the learned versions, keeping suspensions (their invalidation is still owed)."""
        self._seen = {tag: known for tag, known in self._seen.items() if known[0] == SUSPENDED}
