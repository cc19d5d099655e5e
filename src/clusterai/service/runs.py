"""Runs pipelines on the job plane: starts runs, turns finished stage jobs into the next stage's
jobs, and reports per-stage progress.

Everything a run needs is in the store (its spec, frozen at start, its input, its stage jobs), so
any process may advance any run, and advancing twice is harmless: a stage job's idempotency key
is the hash of its task and payload, so asking again finds the same job. The same key makes a
re-run on the same input reuse the stage jobs already done (unless the run is `fresh`).

The driver keeps the runs it advances in memory between advances (`keep=True`): an advance then
reads from the store only the run's state and the states of the jobs that finished since, and
plans again only what depends on them. A run some other process changed meanwhile (its
`updated_at` is not the one this runner last wrote), or one the driver asks to read whole again
(its slow sweep), is read from the store as if new: the store stays the truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clusterai.config import ClusterConfig
from clusterai.core.model import Job, JobSpec, RunRecord, State
from clusterai.core.pipelines import (
    JobView,
    NewJob,
    Pipeline,
    Planner,
    RunState,
    declared_pipelines,
    dig,
    input_key,
    plan,
)
from clusterai.core.tasks import get_task, task_modules
from clusterai.errors import BadInput, InvalidTransition
from clusterai.service.submission import spec_factory
from clusterai.store.protocol import JobStore


def known_pipelines(config: ClusterConfig) -> dict[str, Pipeline]:
    """Built-in pipelines, then cluster.yaml's (which may replace a built-in of the same name)."""
    found = declared_pipelines(task_modules())
    for name, data in config.pipelines.items():
        found[name] = Pipeline.from_dict(name, data)
    return found


def find_pipeline(config: ClusterConfig, name: str) -> Pipeline:
    found = known_pipelines(config)
    if name not in found:
        raise BadInput(f"no pipeline named {name!r}; known: {', '.join(sorted(found)) or 'none'}")
    return found[name]


def describe(pipeline: Pipeline) -> dict[str, Any]:
    return {**pipeline.to_dict(), "fan_out": {s.name: pipeline.domain(s.name) for s in pipeline.stages}}


@dataclass
class _Live:
    """A running run as one runner last saw it."""

    run: RunRecord
    pipeline: Pipeline
    planner: Planner
    stamp: float  # the run's updated_at, as this runner last read or wrote it
    saved: tuple[str, int]  # the state and the planner's problem revision last stored
    lost: bool = False  # another process cancelled or finished it meanwhile


class PipelineRunner:
    def __init__(self, store: JobStore, config: ClusterConfig, *, wake: Callable[[], None] = lambda: None):
        self.store = store
        self.config = config
        self.wake = wake
        self._live: dict[int, _Live] = {}  # runs advanced with keep=True

    # -- starting -----------------------------------------------------------------------------

    def start(self, pipeline: Pipeline | str, run_input: Any, *, owner: str | None = None,
              fresh: bool = False) -> RunRecord:
        """Check the pipeline and input, store the run and create its first stage jobs."""
        if isinstance(pipeline, str):
            pipeline = find_pipeline(self.config, pipeline)
        if not isinstance(run_input, Mapping):
            raise BadInput(f"a pipeline's input must be a JSON object, got {type(run_input).__name__}")
        self.check(pipeline, run_input)
        run_id = self.store.create_run(pipeline.name, pipeline.to_dict(), dict(run_input), time.time(),
                                       owner=owner, fresh=fresh)
        self.advance(run_id)
        return self.store.get_run(run_id)

    def check(self, pipeline: Pipeline, run_input: Mapping[str, Any]) -> None:
        """Everything that can be known before a stage runs: tasks exist, options are valid, the
        input has what the stages read from it, and the lists they fan out over are lists."""
        for s in pipeline.stages:
            get_task(s.task)
            _factory(self.config, s.task, s.options)
            refs = [r for r in s.refs().values() if r.root == "input"]
            each = s.each_ref()
            if each is not None and each.root == "input":
                value = dig(run_input, each.path, "input")
                if not isinstance(value, list):
                    raise BadInput(f"stage {s.name!r} fans out over {each}, which must be a list, "
                                   f"got {type(value).__name__}")
            for ref in refs:
                ref.get(run_input)

    # -- advancing ----------------------------------------------------------------------------

    def advance(self, run_id: int, finished: Collection[int] | None = None, *, keep: bool = False) -> set[int]:
        """Create every stage job that can be created now and record the run's state. Returns the
        ids of its unfinished stage jobs to wait for (the driver waits for those).

        Without `keep` the run is read whole from the store and every unfinished job is returned.
        With `keep` its view stays in memory, and the next call with `finished` (the run's jobs that
        reached a final state since) reads from the store only the run's state and theirs, and
        returns only the jobs it did not return before; `finished=None` reads the run whole again."""
        live = self._live.pop(run_id, None)
        if not keep or finished is None:
            live = None
        elif live is not None:
            state, _, updated_at = self.store.run_head(run_id)
            if state != RunState.RUNNING.value:
                return set()
            if updated_at != live.stamp:  # changed by someone else: read it again
                live = None
        if live is None:
            live = self._load(run_id)
            if live is None:
                return set()
            waiting = live.planner.unfinished()
        else:
            waiting = set()
            for job_id, state in self.store.states_of(list(finished or ())).items():
                live.planner.changed(job_id, state)
                if not state.terminal:
                    waiting.add(job_id)
        waiting |= self._step(live)
        if keep and live.saved[0] == RunState.RUNNING.value and not live.lost:
            self._live[run_id] = live
        return waiting

    def forget(self, run_id: int) -> None:
        """Drop a run kept in memory (it finished, or is no longer this runner's to advance)."""
        self._live.pop(run_id, None)

    def _load(self, run_id: int) -> _Live | None:
        run = self.store.get_run(run_id)  # before its jobs: a change after this read shows as a newer stamp
        if run.state != RunState.RUNNING.value:
            return None
        pipeline = Pipeline.from_dict(run.name, run.spec)
        planner = Planner(pipeline, run.input, self._jobs(run_id), run.problems)
        return _Live(run, pipeline, planner, run.updated_at, (run.state, planner.revision))

    def _step(self, live: _Live) -> set[int]:
        """Plan, create, plan again: a reused (already finished) stage job or a refused payload can
        make the next stage ready at once. Each round creates or refuses something, so few suffice.
        Records the run's state when it changed; returns the unfinished jobs it created."""
        planner, run = live.planner, live.run
        cache: dict[int, Any] = {}
        waiting: set[int] = set()
        for _ in range(4 * len(live.pipeline.stages) + 4):
            new = planner.step(self._results(cache))
            if not new:
                break
            created, refused, now = self._create(run, live.pipeline, new)
            for (stage, item), why in refused.items():
                planner.refused(stage, item, why)
            for stage, item, job in created:
                # a dead or cancelled job found by its key was queued again in the same transaction
                state = State.QUEUED if job.state in (State.DEAD, State.CANCELLED) else job.state
                planner.created(stage, item, JobView(job.id, state))
                if not state.terminal:
                    waiting.add(job.id)
            if now is not None:
                live.stamp = now
        # not settled (not reached in practice): the run stays running; the next advance goes on
        saved = (planner.state().value, planner.revision)
        if saved != live.saved:
            now = time.time()
            if self.store.update_run(run.id, saved[0], dict(planner.problems), now, expected=RunState.RUNNING.value):
                live.stamp, live.saved = now, saved
            else:  # cancelled or finished meanwhile: not ours to go on with
                live.lost = True
        return waiting

    def _jobs(self, run_id: int) -> dict[tuple[str, int], JobView]:
        return {(stage, item): JobView(job_id, state, error)
                for stage, item, job_id, state, error, _ in self.store.run_jobs(run_id)}

    def _results(self, cache: dict[int, Any]) -> Callable[[Sequence[int]], Mapping[int, Any]]:
        def fetch(job_ids: Sequence[int]) -> Mapping[int, Any]:
            missing = [j for j in job_ids if j not in cache]
            if missing:
                cache.update(self.store.job_results(missing))
            return cache

        return fetch

    def _create(self, run: RunRecord, pipeline: Pipeline, new: Sequence[NewJob]
                ) -> tuple[list[tuple[str, int, Job]], dict[tuple[str, int], str], float | None]:
        """Stage jobs for the plan's new entries (with the time they were stored at, None if none
        were); those whose payload the task refuses come back as problems (they count as failed;
        their siblings go on)."""
        entries: list[tuple[str, int, JobSpec]] = []
        refused: dict[tuple[str, int], str] = {}
        salt = str(run.id) if run.fresh else ""
        factories: dict[str, Callable[..., JobSpec]] = {}
        for entry in new:
            stage = pipeline.stage(entry.stage)
            try:
                if stage.name not in factories:
                    factories[stage.name] = _factory(self.config, stage.task, stage.options, owner=run.owner)
                clean = get_task(stage.task).validate(entry.payload)
                entries.append((entry.stage, entry.item, factories[stage.name](
                    clean, idempotency_key=input_key(stage.task, clean, salt))))
            except BadInput as exc:
                refused[(entry.stage, entry.item)] = str(exc)
        if not entries:
            return [], refused, None
        now = time.time()
        jobs = self.store.add_run_jobs(run.id, entries, now)
        self.wake()
        return [(stage, item, job) for (stage, item, _), job in zip(entries, jobs)], refused, now

    # -- reading and changing -----------------------------------------------------------------

    def status(self, run_id: int) -> dict[str, Any]:
        """The run, its stages' progress (counts by state), and every stage job."""
        run = self.store.get_run(run_id)
        pipeline = Pipeline.from_dict(run.name, run.spec)
        rows = self.store.run_jobs(run_id)
        jobs = {(stage, item): JobView(job_id, state, error) for stage, item, job_id, state, error, _ in rows}
        current = plan(pipeline, run.input, jobs, self._results({}), run.problems)
        reused = {stage: 0 for stage in (s.name for s in pipeline.stages)}
        for stage, _, _, _, _, created in rows:
            if created < run.created_at:
                reused[stage] += 1
        stages = []
        for p in current.stages:
            counts = dict(p.counts)
            ready = sum(1 for n in current.new if n.stage == p.name)
            if ready:  # planned but not created yet (a viewer creates nothing): say so, not "queued"
                counts[State.QUEUED.value] -= ready
                counts = {k: v for k, v in counts.items() if v}
                counts["ready"] = ready
            done = counts.get(State.SUCCEEDED.value, 0)
            stages.append({"name": p.name, "task": p.task, "total": p.total, "done": done,
                           "reused": reused[p.name], "counts": counts,
                           "fan_out": pipeline.domain(p.name)})
        instances = [{"stage": stage, "item": item, "job": job_id, "state": state.value, "error": error}
                     for stage, item, job_id, state, error, _ in sorted(rows, key=lambda r: (
                         [s.name for s in pipeline.stages].index(r[0]), r[1]))]
        return {**run.to_dict(), "stages": stages, "jobs": instances}

    def outputs(self, run_id: int, stage: str | None = None) -> list[dict[str, Any]]:
        """The results of a stage's jobs (default: the last stage), in item order."""
        run = self.store.get_run(run_id)
        pipeline = Pipeline.from_dict(run.name, run.spec)
        name = stage or pipeline.stages[-1].name
        pipeline.stage(name)
        rows = sorted((r for r in self.store.run_jobs(run_id) if r[0] == name), key=lambda r: r[1])
        results = self.store.job_results([r[2] for r in rows if r[3] is State.SUCCEEDED])
        return [{"item": item, "job": job_id, "state": state.value, "error": error, "result": results.get(job_id)}
                for _, item, job_id, state, error, _ in rows]

    def cancel(self, run_id: int) -> RunRecord:
        """Stop a run: its unfinished stage jobs are cancelled, no new ones are made."""
        run = self.store.get_run(run_id)
        if run.state != RunState.RUNNING.value:
            raise InvalidTransition(f"pipeline run {run_id} is {run.state}; only a running run can be cancelled")
        if not self.store.update_run(run_id, RunState.CANCELLED.value, run.problems, time.time(),
                                     expected=RunState.RUNNING.value):
            raise InvalidTransition(f"pipeline run {run_id} has just finished; only a running run can be cancelled")
        for _, _, job_id, state, _, _ in self.store.run_jobs(run_id):
            if not state.terminal:
                try:
                    self.store.cancel(job_id, time.time())
                except InvalidTransition:
                    pass  # it finished meanwhile
        return self.store.get_run(run_id)

    def retry(self, run_id: int) -> RunRecord:
        """Run a finished run's failed or cancelled stage jobs again, and whatever depends on them;
        what succeeded is reused. The run is planned afresh: a stage job whose input is unchanged
        is found again by its key (a dead or cancelled one is queued again), one whose input
        changed (a fan-in that now gets more) is a new job."""
        run = self.store.get_run(run_id)
        if run.state == RunState.RUNNING.value:
            raise InvalidTransition(f"pipeline run {run_id} is still running")
        # unlink first: a finished run is left alone by advancers, so none sees the old links as current
        self.store.unlink_run_jobs(run_id, time.time())
        if not self.store.update_run(run_id, RunState.RUNNING.value, {}, time.time(), expected=run.state):
            raise InvalidTransition(f"pipeline run {run_id} changed meanwhile; look at it again")
        self.advance(run_id)
        return self.store.get_run(run_id)


def _factory(config: ClusterConfig, task: str, options: Mapping[str, Any], owner: str | None = None
             ) -> Callable[..., JobSpec]:
    opts = dict(options)
    if "retries" in opts or "backoff" in opts or "max_backoff" in opts:
        for key in ("retries", "backoff", "max_backoff"):
            if key in opts and (isinstance(opts[key], bool) or not isinstance(opts[key], (int, float))):
                raise BadInput(f"task {task!r}: option {key} must be a number, got {opts[key]!r}")
    if "resources" in opts:
        opts["requires"] = opts.pop("resources")
    return spec_factory(config, task, owner=owner, **opts)
