"""Prometheus figures the API reads from the store when scraped, so they agree with it (the
coordinator's own metrics are head/metrics.py; the API serves both at /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clusterai.core.model import Priority


class StoreCollector(Collector):
    """Gauges read from the store when scraped: jobs per state, unfinished jobs per queue, priority
    and state, and live workers per status."""

    def __init__(self, store: Any):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("clusterai_jobs", "Jobs in the store, by state", labels=["state"])
        for state, n in self.store.job_counts().items():
            jobs.add_metric([state], n)
        yield jobs
        depth = GaugeMetricFamily("clusterai_queue_depth", "Unfinished jobs by queue, priority and state",
                                  labels=["queue", "priority", "state"])
        for queue, priority, state, n in self.store.queue_depths():
            depth.add_metric([queue, Priority(priority).name.lower(), state], n)
        yield depth
        workers = GaugeMetricFamily("clusterai_workers", "Workers known to the store, by status", labels=["status"])
        by_status: dict[str, int] = {}
        for w in self.store.list_workers():
            by_status[w.status] = by_status.get(w.status, 0) + 1
        for status, n in sorted(by_status.items()):
            workers.add_metric([status], n)
        yield workers
