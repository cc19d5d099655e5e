"""Sweeps, their trials and the model registry, as the store returns them: frozen values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SWEEP_STATES = ("running", "succeeded", "failed", "cancelled")
TRIAL_STATES = ("running", "succeeded", "pruned", "failed", "cancelled")
TRIAL_DONE = frozenset({"succeeded", "pruned", "failed"})  # counted towards the sweep's trials


@dataclass(frozen=True)
class SweepRecord:
    id: int
    name: str
    spec: dict[str, Any]
    state: str
    owner: str | None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    best: int | None = None  # the best trial's number
    note: str | None = None  # why it failed, what was registered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrialRecord:
    sweep_id: int
    number: int
    params: dict[str, Any]
    job_id: int
    state: str
    created_at: float
    value: float | None = None
    note: str | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    artifact: dict[str, Any]  # {"artifact": URL, "size", "sha256"}
    created_at: float
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    sweep_id: int | None = None
    trial: int | None = None
    job_id: int | None = None
    created_by: str | None = None
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        return out
