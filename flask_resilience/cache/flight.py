"""Stampede protection: one computation per key per process (single flight),
and with Redis one per key across processes (a short lock)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .layered import Lookup

if TYPE_CHECKING:
    from .layered import LayeredCache


class SingleFlight:
    """``with flight(key) as leader``: the first thread in leads (computes);
    the others wait for it to finish and get ``leader=False`` (they re-read
    the cache, and compute themselves only if it stored nothing).

    An uncontended flight allocates nothing: the key maps to None until a
    second thread arrives and hangs an Event on it for the leader to set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event | None] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, timeout: float) -> Iterator[bool]:
        inflight = self._inflight
        with self._lock:
            leader = key not in inflight
            if leader:
                inflight[key] = None
                done = None
            else:
                done = inflight[key]
                if done is None:
                    done = inflight[key] = threading.Event()
        if done is not None:
            done.wait(timeout)
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                waiting = inflight.pop(key, None)
            if waiting is not None:
                waiting.set()


def wait_for_holder(
    layered: LayeredCache, key: str, resource: str, timeout: float, poll: float = 0.02
) -> Lookup:
    """Another process holds ``key``'s lock: poll for what it stores.

    A miss (with the generation to store under) when it stored nothing
    before releasing the lock or within ``timeout`` seconds; the caller then
    computes itself.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    found = Lookup()
    while time.monotonic() < deadline:
        found = layered.lookup(key, resource)
        if found.entry is not None:
            return found
        if not layered.is_locked(key, resource):
            return layered.lookup(key, resource)  # it may have stored just before unlocking
        pause.wait(poll)
    return found
