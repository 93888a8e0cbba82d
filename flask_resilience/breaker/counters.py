"""A breaker's statistics: calls by outcome since the last reset."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

from .config import Outcome


class Counters:
    """Updated under the breaker's lock, except the two ``itertools.count``
    counters (successes on the lock-free path, rejections), whose ``next()``
    is atomic on its own."""

    def __init__(self) -> None:
        self.fast_successes = itertools.count()
        self.rejections = itertools.count()
        self.calls = self.successes = self.failures = self.ignored = self.slow_calls = 0
        self.storage_errors = 0
        self.retry_after_capped = 0
        self.last_failure_wall: float | None = None

    def count(self, outcome: Outcome, slow: bool) -> None:
        self.calls += 1
        if outcome is Outcome.SUCCESS:
            self.successes += 1
        elif outcome is Outcome.FAILURE:
            self.failures += 1
            self.last_failure_wall = time.time()
        else:
            self.ignored += 1
        if slow:
            self.slow_calls += 1

    def snapshot(self) -> dict[str, object]:
        fast = _current(self.fast_successes)
        calls = self.calls + fast
        return {
            "calls": calls,
            "successes": self.successes + fast,
            "failures": self.failures,
            "ignored": self.ignored,
            "rejections": _current(self.rejections),
            "slow_calls": self.slow_calls,
            "failure_rate": round(100.0 * self.failures / calls, 2) if calls else 0.0,
            "last_failure_at": iso(self.last_failure_wall),
            "storage_errors": self.storage_errors,
            "retry_after_capped": self.retry_after_capped,
        }


def _current(counter: itertools.count[int]) -> int:
    # Its repr, "count(N)", is the one way to read a count without advancing it.
    return int(repr(counter)[6:-1])


def iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat()
