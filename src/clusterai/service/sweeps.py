"""Sweeps, the operations every surface shares (the Python client, the REST API, the CLI): start
(everything checked before anything is stored), read, cancel, resume. The head's sweep driver
(head/sweep_driver.py) makes the trials and records their outcomes; nothing here needs Dask.

A trial's job is created by the driver with the options checked here; `owner` is the token name
that started the sweep, and its trials' jobs are that owner's too.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from clusterai.config import ClusterConfig
from clusterai.core.tasks import get_task, known_tasks
from clusterai.core.trials import TRIAL_DONE, SweepRecord
from clusterai.errors import BadInput, InvalidTransition, PayloadError, ResultTimeout, SweepInvalid, UnknownTaskError
from clusterai.service.submission import check_placeable, known_workers, spec_factory
from clusterai.store.protocol import JobStore
from clusterai.sweeps import SweepSpec, make_sampler, parse_spec

_WAIT_POLL_S = 0.2


def default_sampler() -> str:
    """TPE where Optuna is installed (the `train` extra), else random."""
    return "tpe" if importlib.util.find_spec("optuna") is not None else "random"


def resolve_objective(objective: str) -> str:
    """The registered task an objective names: a task name, or "pkg.module:function" for a function
    decorated with @task in a module this cluster imported (its task modules). Nothing is imported
    here: a name sent over the API cannot make the head load code."""
    if ":" not in objective:
        try:
            return get_task(objective).name
        except UnknownTaskError:
            raise SweepInvalid(f"objective: no task {objective!r}; tasks here: {', '.join(known_tasks())}") from None
    module_name, _, function = objective.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        raise SweepInvalid(f"objective: module {module_name!r} is not one of this cluster's task modules; "
                           "list it under tasks: in cluster.yaml (or connect(tasks=[...]))")
    fn = getattr(module, function, None)
    name = getattr(fn, "task_name", None)
    if fn is None or not isinstance(name, str):
        raise SweepInvalid(f"objective: {objective} is not a task; decorate it with @clusterai.task")
    return name


class SweepService:
    def __init__(self, store: JobStore, config: ClusterConfig, *, poke: Callable[[int], None] = lambda sweep_id: None,
                 wake: Callable[[], None] = lambda: None):
        self.store = store
        self.config = config
        self.poke = poke  # tells an embedded head's driver to look at a sweep now
        self.wake = wake

    def check(self, raw: Mapping[str, Any]) -> SweepSpec:
        """The normalised definition, or SweepInvalid / BadInput saying what is wrong; stores nothing."""
        spec = parse_spec(raw, default_sampler=default_sampler())
        task = resolve_objective(spec.objective)
        spec = SweepSpec(**{**spec.__dict__, "objective": task})
        make_sampler(spec.sampler["kind"], spec.space, seed=spec.sampler["seed"], maximize=spec.maximize,
                     options=spec.sampler)
        try:
            make = spec_factory(self.config, task, **spec.job)
        except BadInput as exc:
            raise SweepInvalid(f"job: {exc}") from None
        job = None
        for probe in spec.space.probes():
            try:
                job = make(probe)
            except PayloadError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in probe.items())
                raise SweepInvalid(f"space does not fit the objective {task} (tried {shown}): {exc}") from None
        assert job is not None
        check_placeable(job, known_workers(self.store, self.config))
        return spec

    def start(self, raw: Mapping[str, Any], *, owner: str | None = None) -> dict[str, Any]:
        spec = self.check(raw)
        sweep_id = self.store.create_sweep(spec.name, spec.to_json(), time.time(), owner=owner)
        self.poke(sweep_id)
        return self.status(sweep_id)

    # -- reading ------------------------------------------------------------------------------

    def get(self, sweep_id: int) -> SweepRecord:
        return self.store.get_sweep(sweep_id)

    def list(self, *, state: str | None = None, owner: str | None = None, limit: int = 50
             ) -> builtins.list[dict[str, Any]]:
        out = []
        for sweep in self.store.list_sweeps(state=state, owner=owner, limit=limit):
            trials = self.store.trials(sweep.id)
            out.append({**_summary(sweep), "counts": _counts(trials), "best": _best_of(sweep, trials)})
        return out

    def status(self, sweep_id: int, *, curves: bool = True) -> dict[str, Any]:
        """The sweep, its trials (with each one's learning curve of the sweep's metric) and the best so far."""
        sweep = self.store.get_sweep(sweep_id)
        trials = self.store.trials(sweep_id)
        metric = sweep.spec["metric"]
        series = self.store.trial_metrics(sweep_id) if curves else {}
        shown = []
        for t in trials:
            row = t.to_dict()
            points = series.get(t.number, [])
            row["steps"] = len(points)
            if curves:
                row["curve"] = [[step, m[metric]] for step, m, _ in points if metric in m]
            shown.append(row)
        return {**_summary(sweep), "spec": sweep.spec, "counts": _counts(trials), "best": _best_of(sweep, trials),
                "trials": shown}

    def best(self, sweep_id: int) -> dict[str, Any] | None:
        sweep = self.store.get_sweep(sweep_id)
        return _best_of(sweep, self.store.trials(sweep_id))

    def trial_metrics(self, sweep_id: int, number: int) -> builtins.list[dict[str, Any]]:
        self.store.get_sweep(sweep_id)
        return [{"step": step, "metrics": metrics, "at": at}
                for step, metrics, at in self.store.trial_metrics(sweep_id, number).get(number, [])]

    def wait(self, sweep_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Block until the sweep has finished (succeeded, failed or cancelled); its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.store.get_sweep(sweep_id).state == "running":
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"sweep {sweep_id} still running after {timeout} s")
            time.sleep(_WAIT_POLL_S)
        return self.status(sweep_id)

    # -- steering -----------------------------------------------------------------------------

    def cancel(self, sweep_id: int) -> dict[str, Any]:
        """Stop making trials and cancel the unfinished ones (their checkpoints stay: `resume`)."""
        sweep = self.store.get_sweep(sweep_id)
        now = time.time()
        if sweep.state != "running" or not self.store.update_sweep(sweep_id, "cancelled", now, expected="running"):
            raise InvalidTransition(f"sweep {sweep_id} is {self.store.get_sweep(sweep_id).state}; only a running "
                                    "sweep can be cancelled")
        rows = []
        for t in self.store.trials(sweep_id):
            if t.state == "running":
                try:
                    self.store.cancel(t.job_id, now)
                except InvalidTransition:  # finished meanwhile: the driver records its outcome
                    continue
                rows.append((sweep_id, t.number, "cancelled", None, "the sweep was cancelled"))
        self.store.finish_trials(rows, now)
        return self.status(sweep_id)

    def resume(self, sweep_id: int) -> dict[str, Any]:
        """Run a cancelled or failed sweep again: its cancelled and failed trials are queued again (each
        resumes from its last checkpoint) and new trials are made up to its count."""
        sweep = self.store.get_sweep(sweep_id)
        now = time.time()
        if sweep.state not in ("cancelled", "failed") or not self.store.update_sweep(
                sweep_id, "running", now, expected=sweep.state):
            raise InvalidTransition(f"sweep {sweep_id} is {sweep.state}; only a cancelled or failed sweep can be "
                                    "resumed")
        for t in self.store.trials(sweep_id):
            if t.state in ("cancelled", "failed"):
                try:
                    self.store.requeue(t.job_id, now)
                except InvalidTransition:  # its job still runs (a cancel raced it): the driver sees it end
                    pass
                self.store.finish_trials([(sweep_id, t.number, "running", None, None)], now, expected=t.state)
        self.wake()
        self.poke(sweep_id)
        return self.status(sweep_id)


def _summary(sweep: SweepRecord) -> dict[str, Any]:
    spec = sweep.spec
    return {"id": sweep.id, "name": sweep.name, "state": sweep.state, "owner": sweep.owner,
            "objective": spec["objective"], "metric": spec["metric"], "mode": spec["mode"],
            "trials_wanted": spec["trials"],
            "sampler": spec["sampler"]["kind"], "created_at": sweep.created_at, "updated_at": sweep.updated_at,
            "finished_at": sweep.finished_at, "note": sweep.note}


def _counts(trials: builtins.list[Any]) -> dict[str, int]:
    counts = {"running": 0, "succeeded": 0, "pruned": 0, "failed": 0, "cancelled": 0}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    counts["done"] = sum(counts[s] for s in TRIAL_DONE)
    return counts


def _best_of(sweep: SweepRecord, trials: builtins.list[Any]) -> dict[str, Any] | None:
    scored = [t for t in trials if t.state == "succeeded" and t.value is not None]
    if not scored:
        return None
    pick = max if sweep.spec["mode"] == "max" else min
    best = pick(scored, key=lambda t: t.value)
    return {"number": best.number, "value": best.value, "params": best.params, "job_id": best.job_id}
