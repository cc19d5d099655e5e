"""Placement strategies: `choose(job, candidates) -> WorkerSlot | None` (None: keep it queued)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from clusterai.errors import ConfigError
from clusterai.jobs.model import Job


@dataclass
class WorkerSlot:
    """The coordinator's live view of one worker: identity, capacity and what it is doing."""

    address: str
    name: str
    nthreads: int
    memory_limit: int = 0
    status: str = "ready"  # ready | unresponsive | draining | gone
    calls: int = 0  # batches in flight
    jobs: int = 0  # attempts in flight
    completed: int = 0
    failed: int = 0
    last_ok: float = 0.0
    pid: int = 0
    isolated: bool = False  # running a suspect job (one that was on a worker that died)
    long_calls: int = 0  # batches in flight whose jobs are not known to be short
    metrics: dict[str, float] = field(default_factory=dict)

    def has_room(self, short: bool) -> bool:
        # One batch of known-short jobs may wait on the worker while another short batch runs,
        # so the worker is never idle between replies. Nothing waits behind a long job, and a
        # long job never waits behind anything: both would leave another worker idle.
        limit = self.nthreads + (1 if short and self.long_calls == 0 else 0)
        return self.status == "ready" and not self.isolated and self.calls < limit

    @property
    def load(self) -> float:
        return self.calls / max(1, self.nthreads)


class Strategy(Protocol):
    name: str

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None:
        if not candidates:
            return None
        ordered = sorted(candidates, key=lambda s: s.address)
        choice = ordered[self._turn % len(ordered)]
        self._turn += 1
        return choice


class LeastLoaded:
    name = "least_loaded"

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None:
        if not candidates:
            return None
        # ties go to the worker that has finished more work: it is the faster one so far
        return min(candidates, key=lambda s: (s.load, s.jobs, -s.completed, s.address))


_BUILT_IN: dict[str, type[LeastLoaded] | type[RoundRobin]] = {
    "least_loaded": LeastLoaded,
    "round_robin": RoundRobin,
}


def make_strategy(name: str) -> Strategy:
    try:
        return _BUILT_IN[name]()
    except KeyError:
        allowed = ", ".join(sorted(_BUILT_IN))
        raise ConfigError(f"unknown placement strategy {name!r}; allowed: {allowed}") from None
