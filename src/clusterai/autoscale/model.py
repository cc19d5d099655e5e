"""What the autoscaler reads (a `Snapshot` of demand and supply) and what it answers (`Decision`s).

Times: `Snapshot.now` and `DecisionRecord.at` are epoch seconds (schedules and history are about
wall-clock hours); cooldowns use the autoscaler's own monotonic clock, so a wall-clock jump neither
freezes nor unleashes scaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterai.errors import AutoscaleConfigError


@dataclass(frozen=True, slots=True)
class QueueDemand:
    """Backlog of one queue, grouped by what its jobs need (one entry per distinct need)."""

    queue: str
    requires: Mapping[str, float] = field(default_factory=dict)  # resource -> amount per job, e.g. {"GPU": 1}
    labels: frozenset[str] = frozenset()
    queued: int = 0
    running: int = 0
    mean_duration_s: float | None = None  # measured; None when no job of this kind has finished yet

    @property
    def active(self) -> int:
        return self.queued + self.running


@dataclass(frozen=True, slots=True)
class WorkerView:
    name: str
    profile: str | None  # None: a worker the autoscaler did not launch (it is never retired by it)
    busy: int = 0  # attempts holding a lease on it
    concurrency: int = 1
    started: bool = True  # False: launched, not registered yet
    draining: bool = False
    idle_since: float | None = None  # epoch seconds; None while busy or unknown
    launched_at: float | None = None  # epoch seconds, when its provider launched it (None: not known)

    @property
    def idle(self) -> bool:
        return self.busy == 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float  # epoch seconds
    demand: list[QueueDemand] = field(default_factory=list)
    workers: list[WorkerView] = field(default_factory=list)
    cpu: float | None = None  # 0..1, mean over workers
    memory: float | None = None  # 0..1
    latency_p95_s: float | None = None

    def workers_of(self, profile: str) -> list[WorkerView]:
        return [w for w in self.workers if w.profile == profile]


class ProfileError(AutoscaleConfigError):
    def __init__(self, profile: str, problem: str):
        self.profile = profile
        self.problem = problem  # without the profile's name, for config.py to put its path in front
        super().__init__(f"profile {profile!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Profile:
    """One kind of worker the autoscaler may launch; `start_s` is the lead time (start + model load)."""

    name: str
    labels: frozenset[str] = frozenset()
    resources: Mapping[str, float] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    concurrency: int = 1
    min: int = 0
    max: int = 1
    start_s: float = 60.0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ProfileError(self.name, problems[0])

    def problems(self) -> list[str]:
        """What is wrong with these numbers, each naming its field (config.py prefixes the path)."""
        found = [f"{key} ({value}) must not be negative"
                 for key, value in (("min", self.min), ("max", self.max), ("start_s", self.start_s))
                 if value < 0]
        found += [f"resources.{key} ({amount}) must not be negative"
                  for key, amount in self.resources.items() if amount < 0]
        if self.concurrency < 1:
            found.append(f"concurrency ({self.concurrency}) must be at least 1")
        if self.min > self.max:
            found.append(f"min ({self.min}) is greater than max ({self.max})")
        return found

    def label_map(self) -> dict[str, str]:
        """The labels as a worker carries them: "region=eu" -> {"region": "eu"}, a bare "gpu" -> {"gpu": "true"}."""
        pairs = (label.split("=", 1) if "=" in label else (label, "true") for label in sorted(self.labels))
        return {key: value for key, value in pairs}

    def worker_profile(self) -> dict[str, Any]:
        """What a worker launched for this profile offers (the worker plugin's profile document)."""
        return {"labels": self.label_map(), "resources": dict(self.resources), "models": list(self.models),
                "slots": self.concurrency}

    def can_run(self, demand: QueueDemand) -> bool:
        """Every resource the demand needs is here in enough amount, and every label it needs."""
        enough = all(self.resources.get(key, 0.0) >= amount
                     for key, amount in demand.requires.items() if amount > 0)
        return enough and demand.labels <= self.labels


@dataclass(frozen=True, slots=True)
class Decision:
    profile: str
    current: int
    desired: int
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)  # plain JSON values: what the decision saw

    @property
    def delta(self) -> int:
        return self.desired - self.current


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One line of the decision log: a change of a profile's size, and why."""

    at: float  # epoch seconds
    profile: str
    from_: int
    to: int
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, at: float, decision: Decision) -> DecisionRecord:
        return cls(at, decision.profile, decision.current, decision.desired, decision.reason, dict(decision.inputs))

    def to_row(self) -> dict[str, Any]:
        # "from" is what a store column would be called; `from_` only dodges the keyword
        return {"at": self.at, "profile": self.profile, "from": self.from_, "to": self.to,
                "reason": self.reason, "inputs": dict(self.inputs)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DecisionRecord:
        return cls(at=float(row["at"]), profile=str(row["profile"]), from_=int(row["from"]), to=int(row["to"]),
                   reason=str(row["reason"]), inputs=dict(row.get("inputs") or {}))
