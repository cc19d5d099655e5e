"""A sweep's definition, as the API, the CLI, cluster.yaml (`sweeps:`) and the Python client give it:

    objective: train.sgd_digits        # a registered task (or "pkg.module:function" decorated with @task)
    space: {alpha: {loguniform: [1e-6, 0.1]}, penalty: [l1, l2]}
    trials: 32
    sampler: tpe                       # grid | random | tpe, or {kind: tpe, seed: 0, startup_trials: 10}
    metric: accuracy                   # what the objective returns (or reports) to optimise
    mode: max                          # or min
    concurrency: 4                     # trials at once (default: the cluster's worker slots)
    pruner: {kind: median}             # none | median | halving, with their options
    register: {name: digits, alias: staging}   # the best trial's model goes to the registry
    job: {queue: train, retries: 3, timeout: 600, resources: {GPU: 1}, labels: {}}

`parse_spec` checks everything a sweep needs to be run and returns the normalised definition that
is stored; the objective's payload schema is checked against the space by the service layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clusterai.errors import SweepInvalid
from clusterai.sweeps.pruners import make_pruner
from clusterai.sweeps.space import Space, parse_space

MAX_TRIALS = 10_000
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_FIELDS = {"name", "objective", "space", "trials", "sampler", "metric", "mode", "concurrency", "pruner",
           "register", "job"}
_JOB_FIELDS = {"queue", "priority", "timeout", "retries", "backoff", "max_backoff", "resources", "labels"}
_SAMPLER_FIELDS = {"kind", "seed", "startup_trials"}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    objective: str
    space: Space
    trials: int
    sampler: dict[str, Any]
    metric: str
    mode: str
    concurrency: int | None
    pruner: dict[str, Any] | None
    register: dict[str, str] | None
    job: dict[str, Any]

    @property
    def maximize(self) -> bool:
        return self.mode == "max"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "objective": self.objective, "space": self.space.to_json(),
                "trials": self.trials, "sampler": self.sampler, "metric": self.metric, "mode": self.mode,
                "concurrency": self.concurrency, "pruner": self.pruner, "register": self.register, "job": self.job}


def parse_spec(raw: Any, *, default_sampler: str = "tpe") -> SweepSpec:
    if not isinstance(raw, Mapping):
        raise SweepInvalid("a sweep is an object with objective, space and trials")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise SweepInvalid(f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_FIELDS))}")
    objective = raw.get("objective")
    if not isinstance(objective, str) or not objective.strip():
        raise SweepInvalid("objective: the task to run for each trial, e.g. train.sgd_digits or pkg.module:function")
    objective = objective.strip()
    space = parse_space(raw.get("space"))
    sampler = _sampler(raw.get("sampler", default_sampler))
    size = space.grid_size() if sampler["kind"] == "grid" else None
    if size is not None and size > MAX_TRIALS:
        raise SweepInvalid(f"space: the grid has {size} points; at most {MAX_TRIALS}")
    trials = _integer("trials", raw.get("trials", size), 1, MAX_TRIALS)
    if size is not None and trials > size:
        raise SweepInvalid(f"trials: {trials}, but the grid has only {size} points")
    metric = raw.get("metric", "score")
    if not isinstance(metric, str) or not metric.isidentifier():
        raise SweepInvalid(f"metric: a name (letters, digits, _), got {metric!r}")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise SweepInvalid(f"mode: max or min, got {mode!r}")
    concurrency = raw.get("concurrency")
    if concurrency is not None:
        concurrency = _integer("concurrency", concurrency, 1, MAX_TRIALS)
    pruner = raw.get("pruner")
    if isinstance(pruner, str):
        pruner = {"kind": pruner}
    if pruner is not None and not isinstance(pruner, Mapping):
        raise SweepInvalid("pruner: none, median, halving, or an object {kind: ..., options}")
    make_pruner(pruner)  # checks it
    if pruner is not None and pruner.get("kind") == "none":
        pruner = None
    name = raw.get("name") or objective.replace(":", ".")
    if not isinstance(name, str) or not NAME.match(name):
        raise SweepInvalid(f"name: letters, digits and _.:- (at most 128), got {name!r}")
    return SweepSpec(name=name, objective=objective, space=space, trials=trials, sampler=sampler,
                     metric=metric, mode=mode, concurrency=concurrency,
                     pruner=dict(pruner) if pruner is not None else None,
                     register=_register(raw.get("register")), job=_job(raw.get("job")))


def _integer(what: str, value: Any, low: int, high: int) -> int:
    if value is None:
        raise SweepInvalid(f"{what}: required, an integer from {low} to {high}")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SweepInvalid(f"{what}: an integer from {low} to {high}, got {value!r}")
    return value


def _sampler(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, Mapping):
        raise SweepInvalid("sampler: grid, random, tpe, or an object {kind, seed, startup_trials}")
    unknown = set(raw) - _SAMPLER_FIELDS
    if unknown:
        raise SweepInvalid(f"sampler: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                           f"{', '.join(sorted(_SAMPLER_FIELDS))}")
    kind = raw.get("kind")
    if kind not in ("grid", "random", "tpe"):
        raise SweepInvalid(f"sampler.kind: {kind!r}; one of grid, random, tpe")
    out: dict[str, Any] = {"kind": kind, "seed": _integer("sampler.seed", raw.get("seed", 0), 0, 2**31 - 1)}
    if kind == "tpe":
        out["startup_trials"] = _integer("sampler.startup_trials", raw.get("startup_trials", 10), 1, MAX_TRIALS)
    elif "startup_trials" in raw:
        raise SweepInvalid("sampler.startup_trials: only for tpe")
    return out


def _register(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or set(raw) - {"name", "alias"} or "name" not in raw:
        raise SweepInvalid("register: a model name, or {name, alias}")
    out = {}
    for key in ("name", "alias"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, str) or not NAME.match(value):
                raise SweepInvalid(f"register.{key}: letters, digits and _.:- (at most 128), got {value!r}")
            out[key] = value
    return out


def _job(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SweepInvalid(f"job: an object with any of {', '.join(sorted(_JOB_FIELDS))}")
    unknown = set(raw) - _JOB_FIELDS
    if unknown:
        raise SweepInvalid(f"job: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                           f"{', '.join(sorted(_JOB_FIELDS))}")
    return dict(raw)
