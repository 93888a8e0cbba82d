"""The write-behind queue: persists cached values from a background thread.

Bounded (a full queue drops the write and counts it), retried with backoff,
and flushed by ``stop()``, which ``resilience.shutdown()`` and interpreter
exit call. The thread starts lazily in the process that first submits, so it
exists in each gunicorn worker that uses it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..lifecycle import ProcessLocalWorker

logger = logging.getLogger("flask_resilience.cache")

_STOP = ("", None)


class WriteBehindQueue(ProcessLocalWorker):
    def __init__(
        self,
        *,
        max_size: int = 10_000,
        retry_delays: Sequence[float] = (0.1, 0.5, 2.0),
        wait: Callable[[float], object] | None = None,
    ) -> None:
        super().__init__("flask-resilience-write-behind")
        self.max_size = max_size
        self.retry_delays = tuple(retry_delays)
        self._wait = wait or self.wait  # stop() cuts a retry back-off short
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Callable[[], Any] | None]] = queue.Queue(max_size)

    def reset_process(self) -> None:
        self._queue = queue.Queue(self.max_size)

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    def submit(self, key: str, persist: Callable[[], Any]) -> bool:
        """Queue ``persist()``; False (and a counted drop) when the queue is full."""
        self.in_this_process()
        try:
            self._queue.put_nowait((key, persist))
        except queue.Full:
            self._count("dropped")
            logger.error("write-behind queue full (%d): dropped the write of %r", self.max_size, key)
            return False
        self._count("queued")
        self.ensure_running()
        return True

    def run(self) -> None:
        while True:
            key, persist = self._queue.get()
            if persist is None:
                return
            self._persist(key, persist)

    def _persist(self, key: str, persist: Callable[[], Any]) -> None:
        for attempt in range(len(self.retry_delays) + 1):
            try:
                persist()
            except Exception as exc:
                if attempt == len(self.retry_delays):
                    self._count("failed")
                    logger.error("write-behind of %r failed after %d attempts: %s", key, attempt + 1, exc)
                    return
                self._count("retries")
                self._wait(self.retry_delays[attempt])
            else:
                self._count("persisted")
                return

    def flush(self) -> None:
        """Persist everything queued now, in the calling thread."""
        while True:
            try:
                key, persist = self._queue.get_nowait()
            except queue.Empty:
                return
            if persist is not None:
                self._persist(key, persist)

    def stop(self, flush: bool = True, timeout: float = 30.0) -> None:
        """Let the thread finish what is queued, then stop it; flush leftovers."""
        if self.is_running():
            self._queue.put(_STOP)
        super().stop(flush, timeout)

    def stats(self) -> dict[str, int]:
        with self._counts_lock:
            counts = dict(self._counts)
        return {
            "pending": self._queue.qsize(),
            **{name: counts.get(name, 0) for name in ("queued", "persisted", "retries", "failed", "dropped")},
        }
