"""The coordinator's live view of each worker, and the hard and soft constraints a job puts on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterai.core.model import Job
from clusterai.placement.breaker import BreakerState, CircuitBreaker

# Lifecycle: joining (in Dask, plugin not reporting yet) -> ready -> draining -> gone.
# `unresponsive` is ready-but-not-answering: no new work until it answers again.
LIVE_STATES = ("joining", "ready", "draining", "unresponsive")


@dataclass(frozen=True)
class Constraints:
    """What a job asks of a worker: `requires` resources and `labels` must hold, `prefers` should."""

    requires: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    prefers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, job: Job) -> Constraints:
        return cls(job.resources, job.labels, job.prefers)

    @property
    def key(self) -> tuple[Any, ...]:
        return (tuple(sorted(self.requires.items())), tuple(sorted(self.labels.items())))


@dataclass
class WorkerSlot:
    """Identity, capabilities, capacity and live state of one worker."""

    address: str
    name: str
    nthreads: int
    memory_limit: int = 0
    status: str = "ready"
    calls: int = 0  # batches in flight
    jobs: int = 0  # attempts in flight
    long_calls: int = 0  # batches in flight whose jobs are not known to be short
    isolated: bool = False  # running a suspect job (one that was on a worker that died)
    completed: int = 0
    failed: int = 0
    last_ok: float = 0.0
    pid: int = 0
    concurrency: int = 0  # batches it may run at once; 0 = its thread count
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    models: frozenset[str] = frozenset()
    model_server: tuple[str, str] | None = None  # (url, token) of the models it serves; never stored
    datasets: frozenset[str] = frozenset()
    accepts: frozenset[str] = frozenset()  # queues or task names it takes; empty = all
    tasks: frozenset[str] | None = None  # the tasks it has (a light worker lacks some); None = not said
    in_use: dict[str, float] = field(default_factory=dict)  # resources held by running jobs
    latency: dict[str, float] = field(default_factory=dict)  # EWMA seconds per job, per task
    metrics: dict[str, float] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    task_breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return self.concurrency or self.nthreads

    def has_room(self, short: bool, prefetch: bool = False) -> bool:
        # One batch of known-short jobs may wait on the worker while another short batch runs,
        # so the worker is never idle between replies. Otherwise nothing waits behind a long job,
        # and a long job waits behind nothing: either could leave another worker idle. Unless the
        # queue is deep (`prefetch`, for long jobs): then every worker will be busy anyway, and one
        # long job waiting on each saves the round trip to the head between two long jobs.
        limit = self.capacity + (1 if prefetch or (short and self.long_calls == 0) else 0)
        return self.status == "ready" and not self.isolated and self.calls < limit

    @property
    def load(self) -> float:
        return self.calls / max(1, self.capacity)

    def breaker_for(self, task: str) -> CircuitBreaker:
        found = self.task_breakers.get(task)
        if found is None:
            found = self.task_breakers[task] = CircuitBreaker(self.breaker.failures, self.breaker.cooldown)
        return found

    def breaker_state(self, now: float) -> str:
        """The worst of its breakers, for display: open > half_open > closed."""
        states = [self.breaker.state(now), *(b.state(now) for b in self.task_breakers.values())]
        for worst in (BreakerState.OPEN, BreakerState.HALF_OPEN):
            if worst in states:
                return worst.value
        return BreakerState.CLOSED.value

    def accepts_job(self, job: Job) -> bool:
        if self.tasks is not None and job.task not in self.tasks:
            return False
        return not self.accepts or job.queue in self.accepts or job.task in self.accepts

    def why_not(self, job: Job, c: Constraints) -> str | None:
        """Why this worker can never run the job (None: it can, given room)."""
        if self.tasks is not None and job.task not in self.tasks:
            return f"{self.name} does not have task {job.task!r} (a module or an extra missing there)"
        if not self.accepts_job(job):
            return f"{self.name} does not take queue {job.queue!r} or task {job.task!r}"
        for key, value in c.labels.items():
            if self.labels.get(key) != value:
                return f"{self.name} has {key}={self.labels.get(key, '(unset)')}, job needs {key}={value}"
        for key, amount in c.requires.items():
            if self.resources.get(key, 0.0) < amount:
                return f"{self.name} has {key}={self.resources.get(key, 0):g}, job needs {amount:g}"
        return None

    def fits_now(self, c: Constraints) -> bool:
        return all(self.resources.get(k, 0.0) - self.in_use.get(k, 0.0) >= v for k, v in c.requires.items())

    def preference_score(self, c: Constraints) -> int:
        score = 0
        for key, value in c.prefers.items():
            if key == "model":
                score += value in self.models
            elif key == "dataset":
                score += value in self.datasets
            else:
                score += self.labels.get(key) == value
        return score

    def expected_wait(self, task: str) -> float:
        """Seconds until a new job of `task` would finish here, from this worker's own history."""
        per_job = self.latency.get(task)
        if per_job is None:
            return float(self.jobs + 1)
        return (self.jobs + 1) * per_job / max(1, self.capacity)
