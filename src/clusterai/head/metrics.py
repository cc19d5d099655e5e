"""Prometheus metrics of the job plane and the worker registry.

Each coordinator owns one `CollectorRegistry` (no process-global state), updated from the
registry refresh and from committed outcomes. Figures that the store holds (jobs per state, queue
depth, dead letters) are read from it at scrape time by api/metrics.StoreCollector, so they agree
with it. The REST API serves both at /metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from clusterai.core.model import Finish, Job, State
from clusterai.placement import WorkerSlot
from clusterai.placement.breaker import BREAKER_VALUES


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_workers = Gauge("cluster_active_workers", "Workers ready to take work", registry=r)
        self.total_tasks = Counter("cluster_total_tasks", "Attempts that ended, by outcome", ["outcome"], registry=r)
        self.failed_tasks = Counter("cluster_failed_tasks", "Attempts that ended in failure", ["task"], registry=r)
        self.response_time = Histogram(
            "cluster_response_time", "Seconds from an attempt's start to its committed outcome", ["task"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800), registry=r,
        )
        self.worker_cpu = Gauge("worker_cpu_usage", "Worker CPU use, percent", ["worker"], registry=r)
        self.worker_memory = Gauge("worker_memory_usage", "Worker memory use, percent of its limit", ["worker"],
                                   registry=r)
        self.worker_gpu_memory = Gauge("worker_gpu_memory", "Worker GPU memory in use, bytes", ["worker"], registry=r)
        self.worker_active = Gauge("worker_active_tasks", "Attempts in flight on the worker", ["worker"], registry=r)
        self.breaker = Gauge("worker_breaker_state", "Worst circuit breaker of the worker: 0 closed, 1 half-open, "
                             "2 open", ["worker"], registry=r)
        self.retries = Counter("clusterai_job_retries", "Attempts that ended in a retry", ["task"], registry=r)
        self.dead_letters = Counter("clusterai_dead_letters", "Jobs that went to the dead-letter state",
                                    ["task"], registry=r)
        self.job_duration = Histogram(
            "clusterai_job_duration_seconds", "Seconds from submission to the job's end, by task and final state",
            ["task", "state"], buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800, 7200), registry=r,
        )
        self.task_breaker = Gauge("worker_task_breaker_state", "Circuit breaker per worker and task: 0 closed, "
                                  "1 half-open, 2 open", ["worker", "task"], registry=r)

    def observe_workers(self, slots: Iterable[WorkerSlot], now: float) -> None:
        live = [s for s in slots if s.status != "gone"]
        self.active_workers.set(sum(s.status == "ready" for s in live))
        for gauge in (self.worker_cpu, self.worker_memory, self.worker_gpu_memory, self.worker_active,
                      self.breaker, self.task_breaker):
            gauge.clear()  # workers that left must not linger with their last values
        for s in live:
            self.worker_cpu.labels(s.name).set(s.metrics.get("cpu", 0.0))
            self.worker_memory.labels(s.name).set(s.metrics.get("memory_percent", 0.0))
            self.worker_gpu_memory.labels(s.name).set(s.metrics.get("gpu_memory", 0.0))
            self.worker_active.labels(s.name).set(s.jobs)
            self.breaker.labels(s.name).set(BREAKER_VALUES[s.breaker_state(now)])
            for task, b in s.task_breakers.items():
                self.task_breaker.labels(s.name, task).set(BREAKER_VALUES[b.state(now).value])

    def observe_outcome(self, job: Job, finish: Finish, elapsed: float | None, now: float) -> None:
        """One attempt's outcome, committed by the store."""
        outcome = finish.outcome.value
        self.total_tasks.labels(outcome).inc()
        if outcome in ("failed", "timeout", "lost", "expired"):
            self.failed_tasks.labels(job.task).inc()
        if elapsed is not None:
            self.response_time.labels(job.task).observe(elapsed)
        if finish.state in (State.PENDING, State.QUEUED) and outcome != "abandoned":
            self.retries.labels(job.task).inc()
        if finish.state.terminal:
            self.job_duration.labels(job.task, finish.state.value).observe(max(0.0, now - job.created_at))
        if finish.state is State.DEAD:
            self.dead_letters.labels(job.task).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
