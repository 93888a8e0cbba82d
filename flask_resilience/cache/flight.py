"""Stampede protection: one computation per key per process (single flight),
and with Redis one per key across processes (a short lock)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..stores.redis import StoreUnavailableError

if TYPE_CHECKING:
    from .entry import CacheEntry
    from .layered import LayeredCache


class SingleFlight:
    """``with flight(key) as leader``: the first thread in leads (computes);
    the others wait for it to finish and get ``leader=False`` (they re-read
    the cache, and compute themselves only if it stored nothing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, timeout: float) -> Iterator[bool]:
        with self._lock:
            done = self._inflight.get(key)
            leader = done is None
            if done is None:
                done = self._inflight[key] = threading.Event()
        if not leader:
            done.wait(timeout)
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            done.set()


def wait_for_holder(layered: LayeredCache, key: str, timeout: float, poll: float = 0.02) -> CacheEntry | None:
    """Another process holds ``key``'s lock: poll for what it stores.

    None when it stored nothing before releasing the lock or within
    ``timeout`` seconds; the caller then computes itself.
    """
    l2 = layered.l2
    if l2 is None:
        return None
    lock_key = layered.lock_key(key)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        found = layered.get(key)
        if found is not None:
            return found[0]
        try:
            if l2.get(lock_key) is None:
                found = layered.get(key)
                return None if found is None else found[0]
        except StoreUnavailableError:
            return None
        pause.wait(poll)
    return None
