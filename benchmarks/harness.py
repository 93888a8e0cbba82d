"""Timing shared by the benchmarks: contenders take turns, best round wins."""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any


def interleaved(
    contenders: dict[str, Callable[[], Any]], number: int, rounds: int = 7, unit: float = 1e6
) -> dict[str, float]:
    """Time per call of each contender (seconds x ``unit``; 1e6: microseconds),
    the best of ``rounds`` rounds.

    The contenders take turns within each round, so a noisy neighbour slows
    them all alike instead of whichever happened to run at that moment.
    """
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(rounds):
        for name, call in contenders.items():
            best[name] = min(best[name], timeit.timeit(call, number=number) / number * unit)
    return best
