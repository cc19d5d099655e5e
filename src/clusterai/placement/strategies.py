"""Placement strategies: `choose(job, candidates) -> WorkerSlot | None` (None: keep it queued).

`candidates` are the workers that may take the job right now: live, with a free room, their
breakers closed, and able to meet the job's hard constraints (the coordinator filters those, so
no strategy can place a GPU job on a CPU box). A strategy only ranks them, or holds work back.
Scorers return a number where lower is better; `hybrid` chains filters, then scorers in order.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from clusterai.core.model import Job, Priority
from clusterai.errors import ConfigError
from clusterai.placement.slots import Constraints, WorkerSlot

_PLAIN_RESOURCES = ("CPU", "MEMORY")


class Strategy(Protocol):
    name: str

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None: ...


Scorer = Callable[[Job, WorkerSlot], float]
Filter = Callable[[Job, Sequence[WorkerSlot]], Sequence[WorkerSlot]]


# -- scorers (lower is better) -------------------------------------------------------------------

def load_score(job: Job, w: WorkerSlot) -> float:
    """Seconds until a new job of this task would finish on `w`, from its own measured speed."""
    return w.expected_wait(job.task)


def fit_score(job: Job, w: WorkerSlot) -> float:
    """Best fit: the worker whose special resources (GPUs...) the job leaves least unused."""
    unused = 0.0
    for key, total in w.resources.items():
        if key in _PLAIN_RESOURCES or total <= 0:
            continue
        unused += (total - job.resources.get(key, 0.0)) / total
    return unused


def geo_score(job: Job, w: WorkerSlot) -> float:
    """Same region and zone first, then same region, then anywhere; measured latency breaks ties."""
    wanted = {**job.prefers, **job.labels}
    region, zone = wanted.get("region"), wanted.get("zone")
    distance = 0.0
    if region is not None and w.labels.get("region") != region:
        distance = 2.0
    elif zone is not None and w.labels.get("zone") != zone:
        distance = 1.0
    latency = w.latency.get(job.task, 0.0)
    return distance + min(latency, 1e3) / 1e4


def affinity_score(job: Job, w: WorkerSlot) -> float:
    """Workers that already hold the job's model or data set (or preferred labels) first."""
    return -float(w.preference_score(Constraints.of(job)))


def spread_score(job: Job, w: WorkerSlot) -> float:
    return w.load


SCORERS: dict[str, Scorer] = {
    "least_loaded": load_score,
    "load": load_score,
    "capability": fit_score,
    "geographic": geo_score,
    "affinity": affinity_score,
    "spread": spread_score,
}


# -- filters -----------------------------------------------------------------------------------

class PriorityReserve:
    """Holds `reserve` free rooms back for high and critical work: lower priorities wait."""

    def __init__(self, reserve: int = 1):
        self.reserve = reserve
        # free rooms in the whole pool, set by the planner each round: a job that only a few
        # workers can run must not starve because *its* candidates alone are within the reserve
        self.pool_free: int | None = None

    def __call__(self, job: Job, candidates: Sequence[WorkerSlot]) -> Sequence[WorkerSlot]:
        if job.priority >= Priority.HIGH:
            return candidates
        free = self.pool_free if self.pool_free is not None else sum(
            max(0, w.capacity - w.calls) for w in candidates)
        return candidates if free > self.reserve else ()


# -- strategies --------------------------------------------------------------------------------

class RoundRobin:
    """Each worker in turn, in address order: the next address after the last one chosen."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last = ""

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None:
        if not candidates:
            return None
        after = [s for s in candidates if s.address > self._last]
        choice = min(after or candidates, key=lambda s: s.address)
        self._last = choice.address
        return choice


class Ranked:
    """Filters, then the candidate with the lowest tuple of scores (a chain: later scorers break
    the ties of earlier ones); the address makes the choice deterministic."""

    samples = True  # ranking a random sample of a large pool is as good as ranking all of it
    waits_for_faster = False  # may a job wait for a busy worker that would still finish it sooner?

    def __init__(self, name: str, scorers: Sequence[Scorer], filters: Sequence[Filter] = ()):
        self.name = name
        self.scorers = tuple(scorers)
        self.filters = tuple(filters)

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None:
        for keep in self.filters:
            candidates = keep(job, candidates)
        if not candidates:
            return None
        scorers = self.scorers
        return min(candidates, key=lambda w: (*(s(job, w) for s in scorers), w.jobs, w.address))


class LeastLoaded(Ranked):
    waits_for_faster = True

    def __init__(self) -> None:
        super().__init__("least_loaded", [load_score])


class DaskChoice(Ranked):
    """Leave the worker to Dask's scheduler (and its work stealing); the coordinator submits the
    batch as a Dask task. Kept to compare Dask's own placement with ours."""

    def __init__(self) -> None:
        super().__init__("dask", [spread_score])


def hybrid(chain: Sequence[str], reserve: int = 1) -> Ranked:
    """E.g. ["priority", "capability", "least_loaded", "geographic"], as in the seed documents."""
    filters: list[Filter] = []
    scorers: list[Scorer] = []
    for step in chain:
        if step == "priority":
            filters.append(PriorityReserve(reserve))
        elif step in SCORERS:
            scorers.append(SCORERS[step])
        else:
            allowed = ", ".join(["priority", *SCORERS])
            raise ConfigError(f"placement.hybrid: unknown step {step!r}; allowed: {allowed}")
    ranked = Ranked("hybrid", scorers or [load_score], filters)
    ranked.waits_for_faster = load_score in ranked.scorers
    return ranked


DEFAULT_HYBRID = ("priority", "capability", "least_loaded", "geographic")

BUILT_IN = ("round_robin", "least_loaded", "capability", "affinity", "geographic", "priority",
            "hybrid", "dask")


def make_strategy(name: str, *, hybrid_chain: Sequence[str] = DEFAULT_HYBRID, reserve: int | None = None,
                  options: dict[str, Any] | None = None) -> Strategy:
    """A built-in strategy by name, or a custom one by dotted path (`pkg.module:Class`)."""
    if name == "round_robin":
        return RoundRobin()
    if name == "least_loaded":
        return LeastLoaded()
    if name == "capability":
        return Ranked("capability", [fit_score, load_score])
    if name == "affinity":
        return Ranked("affinity", [affinity_score, load_score])
    if name == "geographic":
        return Ranked("geographic", [geo_score, load_score])
    if name == "priority":
        return Ranked("priority", [load_score], [PriorityReserve(1 if reserve is None else reserve)])
    if name == "hybrid":
        return hybrid(hybrid_chain, 0 if reserve is None else reserve)
    if name == "dask":
        return DaskChoice()
    if "." in name or ":" in name:
        return _import_strategy(name, options or {})
    raise ConfigError(
        f"unknown placement strategy {name!r}; allowed: {', '.join(BUILT_IN)}, or a dotted path "
        "to your own class (package.module:Class)"
    )


def _import_strategy(path: str, options: dict[str, Any]) -> Strategy:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        strategy = factory(**options)
    except (ImportError, AttributeError, TypeError) as exc:
        raise ConfigError(f"placement strategy {path!r} cannot be loaded: {exc}") from None
    if not callable(getattr(strategy, "choose", None)):
        raise ConfigError(f"placement strategy {path!r} has no choose(job, candidates) method")
    if not hasattr(strategy, "name"):
        strategy.name = path
    return strategy
