"""Histograms cheap enough for the hot paths (a call through a breaker, a cache lookup).

Observing is a few list increments, no lock and no client library: a
duration in nanoseconds lands in the cell of its bit length (power-of-two
buckets), a size in the first bound that holds it. Turning cells into
cumulative Prometheus buckets happens at scrape time (:meth:`snapshot`).
Increments from threads racing on one cell may, rarely, lose one (CPython
does not switch threads inside ``cells[i] += 1`` today, but promises
nothing); the figures only ever grow, so a scrape never sees a decrease.
Histograms are never reset: statistics resets leave them alone, as
Prometheus expects of anything it rates.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from time import perf_counter_ns

_CELLS = 64  # bit lengths 0..63: every duration below 292 years
_SUM = _CELLS
# Exported bounds: 2**b ns for even b, 1.024 microseconds to 68.7 seconds.
_EXPORTED_BITS = tuple(range(10, 37, 2))
_MAX_NS = 2**62


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative ``(upper bound, count)`` pairs ending with ``+Inf``, the sum and the count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Timings:
    """A histogram of durations, observed in nanoseconds, exported in seconds."""

    __slots__ = ("cells",)

    def __init__(self) -> None:
        # cells[b]: observations in (2**(b-1), 2**b] ns (that is, ns - 1 has bit
        # length b: a value on a bound belongs to it, as ``le`` says); cells[_SUM]: the sum
        self.cells = [0] * (_CELLS + 1)

    def observe_ns(self, ns: int) -> None:
        cells = self.cells
        cells[(ns - 1).bit_length()] += 1
        cells[_SUM] += ns

    def observe_sample(self, ns: int, weight: int) -> None:
        """One observation that stands for ``weight`` alike (a sampled path)."""
        cells = self.cells
        cells[(ns - 1).bit_length()] += weight
        cells[_SUM] += ns * weight

    def observe_seconds(self, seconds: float) -> None:
        """For durations read from a float clock (an injected one may jump: clamped)."""
        self.observe_ns(min(max(int(seconds * 1e9), 0), _MAX_NS))

    def since(self, began_ns: int) -> None:
        """Observe the time since ``began_ns``, a ``time.perf_counter_ns()`` reading."""
        self.observe_ns(max(perf_counter_ns() - began_ns, 0))

    def count(self) -> int:
        return sum(self.cells[:_CELLS])

    def snapshot(self) -> HistogramSnapshot:
        cells = list(self.cells)
        buckets: list[tuple[float, int]] = []
        below = 0
        cell = 0
        for bits in _EXPORTED_BITS:
            # every value in a cell up to ``bits`` is <= 2**bits ns
            while cell <= bits:
                below += cells[cell]
                cell += 1
            buckets.append((2**bits / 1e9, below))
        count = sum(cells[:_CELLS])
        buckets.append((float("inf"), count))
        return HistogramSnapshot(tuple(buckets), cells[_SUM] / 1e9, count)


SIZE_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)


class Sizes:
    """A histogram of counts (a batch's size) over fixed bounds."""

    __slots__ = ("bounds", "cells")

    def __init__(self, bounds: tuple[float, ...] = SIZE_BOUNDS) -> None:
        self.bounds = bounds
        self.cells = [0] * (len(bounds) + 2)  # one per bound, +Inf, then the sum

    def observe(self, value: int) -> None:
        cells = self.cells
        cells[bisect.bisect_left(self.bounds, value)] += 1
        cells[-1] += value

    def snapshot(self) -> HistogramSnapshot:
        cells = list(self.cells)
        buckets: list[tuple[float, int]] = []
        below = 0
        for bound, count in zip((*self.bounds, float("inf")), cells[:-1], strict=True):
            below += count
            buckets.append((bound, below))
        return HistogramSnapshot(tuple(buckets), float(cells[-1]), below)


class Batches:
    """How long each batch that held something took, and how many items it held."""

    __slots__ = ("seconds", "sizes")

    def __init__(self) -> None:
        self.seconds = Timings()
        self.sizes = Sizes()

    def record(self, began_ns: int, size: int) -> int:
        """Observe a batch of ``size`` items begun at ``began_ns``
        (``time.perf_counter_ns()``); returns ``size``."""
        if size > 0:
            self.seconds.since(began_ns)
            self.sizes.observe(size)
        return size
