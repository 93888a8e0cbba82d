"""A clock the tests move by hand."""

from __future__ import annotations

import threading
from collections.abc import Callable


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``predicate()`` becomes true within ``timeout`` seconds.

    For conditions another thread or process brings about (a message
    delivered, a row written); never used to let time pass.
    """
    pause = threading.Event()
    for _ in range(int(timeout * 200)):
        if predicate():
            return True
        pause.wait(0.005)
    return predicate()
