"""A time-bucketed sliding window of call outcomes.

The window of ``period`` seconds is split into ``buckets`` slices. Totals are
kept up to date on every record and a slice is subtracted when it falls out
of the window ("subtract on evict"), so recording and reading are O(1) and no
timer is needed: slices rotate lazily when the clock has moved on.
``period=None`` is a window that never forgets (until :meth:`clear`).

Not thread-safe: the breaker calls it under its own lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowTotals:
    calls: int
    failures: int
    slow: int

    @property
    def failure_rate(self) -> float:
        """Failures per call in percent (0 with no calls)."""
        return 100.0 * self.failures / self.calls if self.calls else 0.0

    @property
    def slow_rate(self) -> float:
        return 100.0 * self.slow / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "calls": self.calls,
            "failures": self.failures,
            "slow_calls": self.slow,
            "failure_rate": round(self.failure_rate, 2),
        }


class SlidingWindow:
    __slots__ = ("_calls", "_failures", "_head", "_size", "_slices", "_slow", "_width")

    def __init__(self, period: float | None, buckets: int = 10) -> None:
        self._size = buckets if period is not None else 1
        self._width = period / buckets if period is not None else math.inf
        # One [calls, failures, slow] list per slice, indexed by slice number % size.
        self._slices = [[0, 0, 0] for _ in range(self._size)]
        self._head = 0  # number of the newest slice
        self._calls = self._failures = self._slow = 0

    def record(self, now: float, *, failure: bool, slow: bool) -> None:
        self._rotate(now)
        current = self._slices[self._head % self._size]
        current[0] += 1
        self._calls += 1
        if failure:
            current[1] += 1
            self._failures += 1
        if slow:
            current[2] += 1
            self._slow += 1

    def totals(self, now: float) -> WindowTotals:
        self._rotate(now)
        return WindowTotals(self._calls, self._failures, self._slow)

    def failures(self, now: float) -> int:
        self._rotate(now)
        return self._failures

    def clear(self) -> None:
        for piece in self._slices:
            piece[0] = piece[1] = piece[2] = 0
        self._calls = self._failures = self._slow = 0

    def _rotate(self, now: float) -> None:
        if self._width == math.inf:
            return
        number = int(now // self._width)
        if number <= self._head:
            return
        if number - self._head >= self._size:
            self.clear()
        else:
            for expired in range(self._head + 1, number + 1):
                piece = self._slices[expired % self._size]
                self._calls -= piece[0]
                self._failures -= piece[1]
                self._slow -= piece[2]
                piece[0] = piece[1] = piece[2] = 0
        self._head = number
