"""Stampede protection: one computation per key per process (single flight),
and with Redis one per key across processes (a short lock)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..stores.redis import StoreUnavailableError
from .backends import L2Backend

T = TypeVar("T")


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


def across_processes(
    l2: L2Backend | None,
    lock_key: str,
    timeout: float,
    reread: Callable[[], T | None],
    poll: float = 0.02,
) -> tuple[bool, T | None]:
    """Take the cross-process lock for a key, or wait for its holder's result.

    Returns ``(holding, found)``: ``holding`` means this process computes (and
    must call :func:`release`); otherwise ``found`` is what the holder stored,
    or None if it stored nothing within ``timeout`` (compute anyway).
    """
    if l2 is None:
        return False, None
    token = uuid.uuid4().hex.encode()
    try:
        if l2.add(lock_key, token, timeout):
            return True, None
    except StoreUnavailableError:
        return False, None
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        found = reread()
        if found is not None:
            return False, found
        try:
            if l2.get(lock_key) is None:
                return False, reread()
        except StoreUnavailableError:
            return False, None
        pause.wait(poll)
    return False, None


def release(l2: L2Backend | None, lock_key: str) -> None:
    if l2 is not None:
        with contextlib.suppress(StoreUnavailableError):
            l2.delete([lock_key])
