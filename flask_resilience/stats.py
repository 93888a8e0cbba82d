"""Thread-safe named counters, overall, by reason and per endpoint."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Counters:
    """``count("replays", "pay")`` adds to the total and to the endpoint's
    figure; ``count_reason("bypasses", "authorization", ...)`` adds to a named
    table of reasons (and to the endpoint's figure for the table)."""

    def __init__(self, *tables: str) -> None:
        self._tables = tables
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts: Counter[str] = Counter()
            self._reasons: dict[str, Counter[str]] = {table: Counter() for table in self._tables}
            self._endpoints: dict[str, Counter[str]] = {}

    def count(self, name: str, endpoint: str | None = None) -> None:
        # ``with``, not acquire/release: an exception from a signal handler
        # (a request timeout, Ctrl-C) right after acquire() would leave the
        # lock held; ``with`` leaves no such gap.
        with self._lock:
            counts = self._counts
            counts[name] = counts.get(name, 0) + 1  # not +=: a Counter's += costs twice as much
            if endpoint is not None:
                counts = self._endpoints.get(endpoint) or self._endpoint(endpoint)
                counts[name] = counts.get(name, 0) + 1

    def count_reason(self, table: str, reason: str, endpoint: str | None = None) -> None:
        with self._lock:
            self._reasons[table][reason] += 1
            if endpoint is not None:
                self._endpoint(endpoint)[table] += 1

    def _endpoint(self, endpoint: str) -> Counter[str]:
        # Not setdefault(endpoint, Counter()): that builds a Counter on every call.
        counts = self._endpoints.get(endpoint)
        if counts is None:
            counts = self._endpoints[endpoint] = Counter()
        return counts

    def snapshot(self, *always: str) -> dict[str, Any]:
        """Every count (those named in ``always`` even when 0), each reason
        table, and ``endpoints``."""
        with self._lock:
            return {
                **dict(self._counts),
                **{name: self._counts.get(name, 0) for name in always},
                **{table: dict(reasons) for table, reasons in self._reasons.items()},
                "endpoints": {name: dict(values) for name, values in self._endpoints.items()},
            }
