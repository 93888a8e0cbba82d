"""What one histogram observation costs on the hot paths, beside prometheus_client's.

Run: ``pip install -r benchmarks/requirements.txt && python benchmarks/bench_histograms.py``

Measures, interleaved:
1. a duration observed in nanoseconds (``Timings.observe_ns``), and the same
   with its two clock reads (``perf_counter_ns`` before and ``since`` after),
   against ``prometheus_client.Histogram.observe`` (and its ``time()``);
2. a batch size (``Sizes.observe``) against ``Histogram.observe``;
3. a call through a CLOSED breaker on the lock-free path, whose durations are
   sampled one call in ``SAMPLE``, against a plain call.
"""

from __future__ import annotations

import argparse
from time import perf_counter_ns

from harness import Figure, interleaved, print_figures
from prometheus_client import CollectorRegistry, Histogram

from flask_resilience.breaker.registry import BreakerRegistry
from flask_resilience.breaker.wrapping import SAMPLE
from flask_resilience.histograms import SIZE_BOUNDS, Sizes, Timings


def noop() -> None:
    return None


def figures(quick: bool = False) -> list[Figure]:
    number = 20_000 if quick else 200_000
    rounds = 3 if quick else 7
    registry = CollectorRegistry()
    theirs = Histogram("bench_seconds", "bench", registry=registry)
    their_sizes = Histogram("bench_size", "bench", registry=registry, buckets=SIZE_BOUNDS)
    timings, sizes = Timings(), Sizes()
    breaker = BreakerRegistry().get_or_create("bench-histograms")

    def ours_timed() -> None:
        began = perf_counter_ns()
        timings.since(began)

    def theirs_timed() -> None:
        with theirs.time():
            pass

    ns = interleaved(
        {
            "observe_ns": lambda: timings.observe_ns(12_345),
            "prometheus observe": lambda: theirs.observe(12.345e-6),
            "timed (2 clock reads)": ours_timed,
            "prometheus time()": theirs_timed,
            "size": lambda: sizes.observe(37),
            "prometheus size": lambda: their_sizes.observe(37),
            "plain call": noop,
            "breaker call": lambda: breaker.call(noop),
        },
        number=number,
        rounds=rounds,
        unit=1e9,
    )
    overhead = ns["breaker call"] - ns["plain call"]
    return [
        Figure("duration observation", ns["observe_ns"], ns["prometheus observe"],
               ns["observe_ns"] / ns["prometheus observe"], "< 1 (informational)",
               ns["observe_ns"] < ns["prometheus observe"], "ns"),
        Figure("timed observation (2 clock reads)", ns["timed (2 clock reads)"], ns["prometheus time()"],
               ns["timed (2 clock reads)"] / ns["prometheus time()"], "< 1 (informational)",
               ns["timed (2 clock reads)"] < ns["prometheus time()"], "ns"),
        Figure("size observation", ns["size"], ns["prometheus size"], ns["size"] / ns["prometheus size"],
               "< 1 (informational)", ns["size"] < ns["prometheus size"], "ns"),
        Figure(f"breaker CLOSED overhead (sampled 1/{SAMPLE})", overhead, None, None,
               "see bench_breaker.py", None, "ns"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    print_figures(figures(quick=parser.parse_args().quick))


if __name__ == "__main__":
    main()
