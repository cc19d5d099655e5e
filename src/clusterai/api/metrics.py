"""Prometheus figures the API reads from the store when scraped, so they agree with it (the
coordinator's own metrics are head/metrics.py; the API serves both at /metrics)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clusterai.core.model import Priority
from clusterai.service.autoscale import STATE_KEY as AUTOSCALE_STATE


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
        yield from self._sweeps()
        yield from self._autoscale()

    def _sweeps(self) -> Iterator[Metric]:
        counts = self.store.sweep_counts()
        sweeps = GaugeMetricFamily("clusterai_sweeps", "Sweeps in the store, by state", labels=["state"])
        for state in ("running", "succeeded", "failed", "cancelled"):
            sweeps.add_metric([state], counts["sweeps"].get(state, 0))
        yield sweeps
        trials = GaugeMetricFamily("clusterai_sweep_trials", "Trials of running sweeps, by state", labels=["state"])
        for state in ("running", "succeeded", "pruned", "failed", "cancelled"):
            trials.add_metric([state], counts["trials"].get(state, 0))
        yield trials
        yield GaugeMetricFamily("clusterai_model_versions", "Model versions in the registry",
                                value=counts["model_versions"])

    def _autoscale(self) -> Iterator[Metric]:
        """The autoscaler's last report: an HPA or KEDA scales a worker Deployment on
        clusterai_desired_workers (see docs/autoscaling.md)."""
        found = self.store.get_autoscale(AUTOSCALE_STATE)
        if found is None:
            return
        state, _ = found
        desired = GaugeMetricFamily("clusterai_desired_workers", "Workers the autoscaler wants, per profile",
                                    labels=["profile"])
        current = GaugeMetricFamily("clusterai_autoscale_workers",
                                    "Workers of each profile, by state (ready, starting, draining)",
                                    labels=["profile", "state"])
        bounds = GaugeMetricFamily("clusterai_autoscale_bounds", "Each profile's bounds", labels=["profile", "bound"])
        for p in state.get("profiles", []):
            desired.add_metric([p["name"]], p["desired"])
            for key in ("ready", "starting", "draining"):
                current.add_metric([p["name"], key], p.get(key, 0))
            bounds.add_metric([p["name"], "min"], p["min"])
            bounds.add_metric([p["name"], "max"], p["max"])
        yield desired
        yield current
        yield bounds
        unschedulable = GaugeMetricFamily("clusterai_autoscale_unschedulable_jobs",
                                          "Queued jobs that no profile can run (not scaled for)")
        unschedulable.add_metric([], sum(int(u.get("queued", 0)) for u in state.get("unschedulable", [])))
        yield unschedulable
        enabled = GaugeMetricFamily("clusterai_autoscale_enabled", "1 while the autoscaler acts")
        enabled.add_metric([], 1 if state.get("enabled") else 0)
        yield enabled
