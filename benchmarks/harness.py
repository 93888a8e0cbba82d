"""Timing shared by the benchmarks: contenders take turns, best round wins."""

from __future__ import annotations

import timeit
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Figure:
    """One row of ``run_all.py``'s table: a measured figure, its peer and its target.

    ``ours`` and ``peer`` are in ``unit``; ``ratio`` is what the target is
    stated in (usually ``ours / peer``, or ``ours / bare``). ``met`` is
    computed by the benchmark from the same run, never hard-coded.
    """

    figure: str
    ours: float
    peer: float | None
    ratio: float | None
    target: str
    met: bool | None
    unit: str = "us"
    note: str = ""


# The contract run_all.py relies on: every bench_*.py module (and stack.py)
# offers ``figures(quick: bool = False) -> list[Figure]``, measuring its rows
# in one interleaved run; its ``main()`` prints them with ``print_figures``.


def print_figures(rows: list[Figure]) -> None:
    """Print rows as: figure | ours | peer | ratio | target | met."""
    header = ("figure", "ours", "peer", "ratio", "target", "met")
    lines = [header]
    for row in rows:
        peer = "-" if row.peer is None else f"{row.peer:.1f} {row.unit}"
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        lines.append((row.figure, f"{row.ours:.1f} {row.unit}", peer, ratio, row.target, met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
