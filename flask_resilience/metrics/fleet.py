"""Fleet-wide metrics: each worker publishes its figures to prometheus_client's
multiprocess files, so a scrape served by any worker sums every worker.

Active when ``PROMETHEUS_MULTIPROC_DIR`` is set (an empty directory per
gunicorn start). Counters are published as increments: a statistics reset in
one worker never makes the fleet's sum go down. Gauges use the family's
``fleet`` mode (``livesum``: summed over live workers). gunicorn must call
``prometheus_client.multiprocess.mark_process_dead(worker.pid)`` in its
``child_exit`` hook, so gauges of exited workers stop counting; their
counters keep counting, as they should.

A reset through the health endpoints publishes first, so nothing counted
before it is lost; a reset from code (``reset_cache_stats()``) loses what
that worker counted since its last publication (at most a second's worth).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask, Response, after_this_request, request

from ..histograms import HistogramSnapshot
from ..lifecycle import ProcessLocalWorker
from ..state import ResilienceState
from .families import Family, Labels, read

logger = logging.getLogger("flask_resilience.health")

FLEET_EXTENSION = "resilience_fleet_metrics"
PUBLISH_INTERVAL = 1.0  # seconds between a worker's publications (and each scrape publishes)
_RESET_ENDPOINTS = frozenset(
    f"resilience_health.{view}"
    for view in (
        "reset_audit_stats",
        "reset_circuit_breakers",
        "reset_cache_stats",
        "reset_replay_protection",
    )
)


class FleetMetrics(ProcessLocalWorker):
    """Publishes one app's figures for this process, every second and on demand."""

    def __init__(self, app: Flask, state: ResilienceState) -> None:
        super().__init__("flask-resilience-fleet-metrics")
        self._app = app
        self._state = state
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {}
        # Counter values already published. A forked worker keeps its parent's:
        # it also inherited the statistics they were read from.
        self._published: dict[tuple[str, Labels], float] = {}
        # Per histogram: each bucket's count (not cumulative) and the sum, as published.
        self._published_histograms: dict[tuple[str, Labels], tuple[float, ...]] = {}

    def before_request(self) -> None:
        """Start this process's publisher; around a statistics reset, publish
        before it and take the zeroed figures as the new baseline after it."""
        self.ensure_running()
        if request.endpoint in _RESET_ENDPOINTS:
            self._publish_logged()

            @after_this_request
            def rebaseline(response: Response) -> Response:
                self.publish(rebaseline=True)
                return response

    def run(self) -> None:
        while not self.wait(PUBLISH_INTERVAL):
            self._publish_logged()

    def flush(self) -> None:
        self._publish_logged()

    def _publish_logged(self) -> None:
        try:
            self.publish()
        except Exception:
            logger.exception("publishing fleet metrics failed")

    def publish(self, *, rebaseline: bool = False) -> None:
        """Write this process's current figures to its multiprocess files;
        with ``rebaseline`` take the counters as already published instead."""
        # Read under the lock: a snapshot older than the last one published
        # would otherwise look like a reset.
        with self._lock, self._app.app_context():
            for family in read(self._state):
                for labels, snapshot in family.histograms.items():
                    self._publish_histogram(family, labels, snapshot)  # never reset: no baseline
                for labels, value in family.values.items():
                    if rebaseline and family.kind == "counter":
                        self._published[(family.name, labels)] = value
                    else:
                        self._publish_sample(family, labels, value)

    def _publish_sample(self, family: Family, labels: Labels, value: float) -> None:
        metric = self._metric(family)
        child = metric.labels(*labels) if labels else metric
        if family.kind == "gauge":
            child.set(value)
            return
        key = (family.name, labels)
        before = self._published.get(key, 0.0)
        # Lower than last time: the statistics were reset; all of it is new.
        increment = value - before if value >= before else value
        if increment:
            child.inc(increment)
        self._published[key] = value

    def _publish_histogram(self, family: Family, labels: Labels, snapshot: HistogramSnapshot) -> None:
        cumulative = [count for _, count in snapshot.buckets]
        counts = [count - below for count, below in zip(cumulative, [0, *cumulative], strict=False)]
        now = (*counts, snapshot.sum)
        key = (family.name, labels)
        before = self._published_histograms.get(key, (0.0,) * len(now))
        child = self._metric(family, snapshot)
        child = child.labels(*labels) if labels else child
        # prometheus_client offers no way to add n observations to a bucket
        # but the values a Histogram keeps in its multiprocess files.
        for value, new, old in zip((*child._buckets, child._sum), now, before, strict=True):
            if new > old:
                value.inc(new - old)
        self._published_histograms[key] = now

    def _metric(self, family: Family, histogram: HistogramSnapshot | None = None) -> Any:
        metric = self._metrics.get(family.name)
        if metric is None:
            from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

            if histogram is not None:
                bounds = [bound for bound, _ in histogram.buckets]
                metric = Histogram(family.name, family.help, family.labels, registry=None, buckets=bounds)
            elif family.kind == "counter":
                metric = Counter(family.name, family.help, family.labels, registry=None)
            else:
                metric = Gauge(
                    family.name, family.help, family.labels, registry=None, multiprocess_mode=family.fleet
                )
            self._metrics[family.name] = metric
        return metric


def install(app: Flask, state: ResilienceState) -> None:
    """With ``PROMETHEUS_MULTIPROC_DIR`` set, publish ``app``'s figures from every process serving it."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        import prometheus_client  # noqa: F401, PLC0415
    except ImportError:
        logger.warning("PROMETHEUS_MULTIPROC_DIR is set but prometheus_client is not installed")
        return
    fleet = FleetMetrics(app, state)
    app.extensions[FLEET_EXTENSION] = fleet
    state.add_background(fleet)
    # The worker process that serves requests starts its own publisher (a
    # --preload master never does: it serves nothing).
    app.before_request(fleet.before_request)
