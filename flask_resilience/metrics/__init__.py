"""Prometheus metrics: :class:`ResilienceCollector` and fleet-wide counters.

``GET /api/health/metrics`` serves them. To add them to an app's own
registry (and so to ``prometheus_flask_exporter``'s)::

    from prometheus_client import REGISTRY
    from flask_resilience.metrics import ResilienceCollector

    REGISTRY.register(ResilienceCollector(app))

Under gunicorn set ``PROMETHEUS_MULTIPROC_DIR``: every worker then publishes
its figures to that directory (see :mod:`.fleet`) and every scrape, whichever
worker serves it, sums them. Needs ``prometheus_client`` (the ``prometheus``
extra).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from flask import Flask, current_app

from ..state import ResilienceState, get_state
from .families import Family, read
from .fleet import FLEET_EXTENSION

__all__ = ["MULTIPROC_DIR_ENV", "ResilienceCollector", "exposition"]

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _go_float(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.001024``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


def to_prometheus(families: Iterator[Family]) -> Iterator[Any]:
    """prometheus_client metric families; those without samples are left out."""
    from prometheus_client.core import (  # noqa: PLC0415
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    for family in families:
        if family.empty:
            continue
        if family.kind == "histogram":
            histogram = HistogramMetricFamily(family.name, family.help, labels=list(family.labels))
            for labels, snapshot in family.histograms.items():
                buckets = [(_go_float(bound), count) for bound, count in snapshot.buckets]
                histogram.add_metric(list(labels), buckets, snapshot.sum)
            yield histogram
            continue
        kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
        metric = kind(family.name, family.help, labels=list(family.labels))
        for labels, value in family.values.items():
            metric.add_metric(list(labels), value)
        yield metric


class ResilienceCollector:
    """A ``prometheus_client`` collector of one app's Flask-Resilience figures
    (this process's; see the module docs for gunicorn)."""

    def __init__(self, app: Flask) -> None:
        get_state(app)  # fails now, not at the first scrape, when the extension is missing
        self.app = app

    def describe(self) -> list[Any]:
        # The families depend on the breakers and reasons seen so far; nothing
        # to declare up front (and registering must not collect).
        return []

    def collect(self) -> Iterator[Any]:
        with self.app.app_context():
            families = list(read(get_state(self.app)))
        return to_prometheus(iter(families))


def exposition(state: ResilienceState) -> tuple[bytes, str]:
    """The text exposition and its content type, for the current app.

    Raises ImportError without ``prometheus_client``.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest  # noqa: PLC0415
    from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    fleet = current_app.extensions.get(FLEET_EXTENSION)
    if directory and fleet is not None:
        from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

        fleet.publish()  # this worker's newest figures; the others publish on their own
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(ResilienceCollector(current_app._get_current_object()))  # type: ignore[attr-defined]
    return generate_latest(registry), CONTENT_TYPE_LATEST
