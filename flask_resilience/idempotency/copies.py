"""The memory layer: completed records a process keeps for fast replays.

With Redis, :class:`ProcessCopies` keeps copies of completed records (never
in-flight ones: those must always be read from the store) and drops them when
any process invalidates a key, through pub/sub. A copy is trusted only while
this process's listener is confirmed, and only if it was stored after the
last confirmation (issue 18): before that, invalidations may have been
missed. Every copy expires with its record's own absolute expiry.

Without Redis the records themselves live in memory, so there is nothing to
copy: :class:`NoCopies`. The choice is made once, at ``init_app``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..stores.memory import MemoryStore
from ..stores.redis import RedisStore, StoreUnavailableError
from .protocol import Completed

logger = logging.getLogger("flask_resilience.idempotency")


class Copies(Protocol):
    clock: Callable[[], float]

    def get(self, record_key: str) -> Completed | None: ...

    def put(self, record_key: str, record: Completed, read_at: float) -> None: ...

    def forget(self, pattern: str) -> None: ...

    def listen(self) -> None: ...

    def clear(self) -> None: ...

    def keys(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...


class NoCopies:
    """Memory mode: the records are already in this process."""

    clock: Callable[[], float] = time.time

    def get(self, record_key: str) -> Completed | None:
        return None

    def put(self, record_key: str, record: Completed, read_at: float) -> None:
        return None

    def forget(self, pattern: str) -> None:
        return None

    def listen(self) -> None:
        return None

    def clear(self) -> None:
        return None

    def keys(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True)
class _Copy:
    record: Completed
    stored_at: float  # time.monotonic() before the record was read, compared with the confirmation


class ProcessCopies:
    """Copies of completed records, kept coherent through Redis pub/sub."""

    def __init__(
        self,
        redis: RedisStore,
        *,
        max_entries: int,
        max_bytes: int,
        count: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._channel = redis.channel("idempotency")
        self._count = count
        self.clock = clock
        self._memory: MemoryStore[_Copy] = MemoryStore(
            max_entries=max_entries,
            max_bytes=max_bytes,
            sizeof=lambda copy: len(copy.record.response.body),
        )
        self._dropped_at = 0.0  # time.monotonic() of the last invalidation seen here

    def get(self, record_key: str) -> Completed | None:
        since = self._redis.subscriber.listening_since()
        if since is None:
            self._count("memory_unsynced")
            return None
        copy = self._memory.get(record_key)
        if copy is None:
            return None
        if copy.stored_at < since or copy.record.expires_at <= self.clock():
            self._memory.delete(record_key)
            return None
        return copy.record

    def put(self, record_key: str, record: Completed, read_at: float) -> None:
        """Keep a copy of ``record``, read from the store at ``read_at``
        (``time.monotonic()`` taken before the read): not if an invalidation
        was seen since, as it may have removed the record after that read."""
        since = self._redis.subscriber.listening_since()
        if since is None or read_at < since or read_at <= self._dropped_at:
            return  # it could have missed an invalidation: keep nothing
        remaining = record.expires_at - self.clock()
        if remaining > 0:
            self._memory.set(record_key, _Copy(record, read_at), remaining)

    def forget(self, pattern: str) -> None:
        """Drop matching copies here, and tell every other process to."""
        self._drop(pattern)
        try:
            self._redis.publish(self._channel, json.dumps({"pattern": pattern}).encode())
        except StoreUnavailableError:
            logger.warning("could not tell other processes to forget idempotency keys %s", pattern)

    def listen(self) -> None:
        def handle(raw: bytes) -> None:
            self._drop(str(json.loads(raw)["pattern"]))

        def forget_all() -> None:
            self.clear()

        self._redis.subscriber.on_gap(forget_all)
        self._redis.subscribe(self._channel, handle)

    def clear(self) -> None:
        self._dropped_at = time.monotonic()
        self._memory.clear()

    def keys(self) -> Iterator[str]:
        return self._memory.keys()

    def __len__(self) -> int:
        return len(self._memory)

    def _drop(self, pattern: str) -> None:
        self._dropped_at = time.monotonic()  # first: a put of an earlier read is refused
        self._memory.delete_where(lambda key: fnmatch.fnmatchcase(key, pattern))
