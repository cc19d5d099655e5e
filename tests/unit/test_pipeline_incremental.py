"""The incremental planner (core/pipelines.Planner) against a fresh plan(): after any sequence of
finished, failed, requeued, reused and refused stage jobs, planning only what changed gives the
same new jobs, progress, state and problems as planning the whole run again."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from clusterai.core.model import State, canonical_json
from clusterai.core.pipelines import JobView, NewJob, Pipeline, Planner, RunState, plan

PIPELINES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "chain": ({"stages": [
        {"name": "a", "task": "t.a", "each": "input.items", "inputs": {"v": "item.v"}},
        {"name": "b", "task": "t.b", "inputs": {"v": "a.v"}},
        {"name": "c", "task": "t.c", "inputs": {"v": "b.v", "w": "a.v"}},
        {"name": "total", "task": "t.total", "gather": True, "inputs": {"vs": "c.v", "bs": "b.v"}},
    ]}, {"items": [{"v": i % 4} for i in range(12)]}),  # repeated elements: one job, several instances
    "dynamic": ({"stages": [
        {"name": "list", "task": "t.list", "inputs": {"n": "input.n"}},
        {"name": "model", "task": "t.model"},
        {"name": "each", "task": "t.each", "each": "list.files", "inputs": {"f": "item", "m": "model.v"}},
        {"name": "more", "task": "t.more", "inputs": {"v": "each.v"}, "after": ["model"]},
        {"name": "all", "task": "t.all", "gather": True, "inputs": {"xs": "more.v", "root": "list.v"}},
        {"name": "end", "task": "t.end", "inputs": {"x": "all.v"}},
    ]}, {"n": 9}),
    "gather_only": ({"stages": [  # the fan-in reads nothing of the list's stage: its width alone wakes it
        {"name": "list", "task": "t.list", "inputs": {"n": "input.n"}},
        {"name": "each", "task": "t.each", "each": "list.files", "inputs": {"f": "item"}},
        {"name": "all", "task": "t.all", "gather": True, "inputs": {"xs": "each.v"}},
    ]}, {"n": 3}),
    "two_fan_outs": ({"stages": [
        {"name": "x", "task": "t.x", "each": "input.xs", "inputs": {"v": "item"}},
        {"name": "y", "task": "t.y", "each": "input.ys", "inputs": {"v": "item"}},
        {"name": "both", "task": "t.both", "gather": True, "inputs": {"xs": "x.v", "ys": "y.v?"}},
    ]}, {"xs": list(range(7)), "ys": []}),
}


class FakeRun:
    """Stage jobs as the store would keep them: one job per (task, payload) (idempotency keys), a
    dead or cancelled job found again by its key queued again, a finished one reused as it is."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.jobs: dict[tuple[str, int], JobView] = {}
        self.by_key: dict[str, int] = {}
        self.states: dict[int, State] = {}
        self.results: dict[int, Any] = {}
        self.problems: dict[str, str] = {}
        self.requeued = 0
        self.failing = rng.choice([0, 1, 3])  # how often jobs fail, from never to often

    def fetch(self, ids: Sequence[int]) -> Mapping[int, Any]:
        assert all(self.states[i] is State.SUCCEEDED for i in ids), "only succeeded jobs' outputs are read"
        return self.results

    def create(self, planner: Planner, new: list[NewJob]) -> None:
        for n in new:
            if self.rng.random() < 0.02 * self.failing:
                self.problems[f"{n.stage}/{n.item}"] = "refused"
                planner.refused(n.stage, n.item, "refused")
                continue
            key = canonical_json({"stage": n.stage, "payload": n.payload})
            job_id = self.by_key.setdefault(key, len(self.by_key) + 1)
            state = self.states.get(job_id, State.QUEUED)
            if state in (State.DEAD, State.CANCELLED):
                state = State.QUEUED
                self.requeued += 1
            self.states[job_id] = state
            for k, v in self.jobs.items():  # the other instances of the same job
                if v.job_id == job_id:
                    self.jobs[k] = JobView(job_id, state)
            self.jobs[(n.stage, n.item)] = JobView(job_id, state)
            planner.created(n.stage, n.item, JobView(job_id, state))

    def finish_some(self, planner: Planner) -> None:
        unfinished = sorted({v.job_id for v in self.jobs.values() if not v.state.terminal})
        dead = sorted({v.job_id for v in self.jobs.values() if v.state is State.DEAD})
        changes: dict[int, State] = {}
        for job_id in self.rng.sample(unfinished, k=min(len(unfinished), self.rng.randint(1, 6))):
            changes[job_id] = self.rng.choices(
                [State.SUCCEEDED, State.DEAD, State.CANCELLED, State.RUNNING], [20, self.failing, 1, 4])[0]
        if dead and self.rng.random() < 0.2:  # a dead letter requeued through the API
            changes[self.rng.choice(dead)] = State.QUEUED
        for job_id, state in changes.items():
            self.states[job_id] = state
            if state is State.SUCCEEDED:
                self.results[job_id] = self.output(job_id)
            for k, v in self.jobs.items():
                if v.job_id == job_id:
                    self.jobs[k] = JobView(job_id, state)
            planner.changed(job_id, state)

    def output(self, job_id: int) -> Any:
        stage = next(k[0] for k, v in self.jobs.items() if v.job_id == job_id)
        if self.rng.random() < 0.01 * self.failing:
            return {"nothing": True}  # a parent output without the key a child reads: that child's problem
        if stage == "list":
            return {"files": [f"f{i}" for i in range(self.rng.choice([0, 1, 3, 5]))], "v": "root"}
        return {"v": job_id % 3}


def same(planner: Planner, new: list[NewJob], run: FakeRun, pipeline: Pipeline, run_input: dict[str, Any],
         problems: dict[str, str]) -> None:
    fresh = plan(pipeline, run_input, run.jobs, run.fetch, problems)
    assert [(n.stage, n.item, n.payload) for n in new] == [(n.stage, n.item, n.payload) for n in fresh.new]
    assert planner.progress() == fresh.stages
    assert planner.state() is fresh.state
    assert planner.problems == fresh.problems


@pytest.mark.parametrize("name", sorted(PIPELINES))
@pytest.mark.parametrize("seed", range(30))
def test_incremental_planning_agrees_with_planning_everything_again(name: str, seed: int) -> None:
    spec, run_input = PIPELINES[name]
    pipeline = Pipeline.from_dict(name, spec)
    run = FakeRun(random.Random(seed))
    planner = Planner(pipeline, run_input, {})
    for _ in range(1000):
        before = dict(planner.problems)
        new = planner.step(run.fetch)
        same(planner, new, run, pipeline, run_input, before)
        if planner.state() is not RunState.RUNNING:
            break
        run.create(planner, new)
        if not new:
            run.finish_some(planner)
    else:
        pytest.fail("the run never finished")
    assert run.problems.keys() <= planner.problems.keys()
    # a planner built from the store's view of the finished run agrees too
    again = Planner(pipeline, run_input, run.jobs, planner.problems)
    assert again.step(run.fetch) == [] and again.progress() == planner.progress()
    assert again.state() is planner.state()


def test_a_step_plans_only_what_depends_on_the_change() -> None:
    spec, _ = PIPELINES["chain"]
    pipeline = Pipeline.from_dict("chain", spec)
    run_input = {"items": [{"v": i} for i in range(2000)]}
    run = FakeRun(random.Random(0))
    planner = Planner(pipeline, run_input, {})
    run.create(planner, planner.step(run.fetch))
    planner.step(run.fetch)
    evaluated: list[tuple[str, int]] = []
    original = planner._evaluate

    def counting(stage: str, i: int) -> str:
        evaluated.append((stage, i))
        return original(stage, i)

    planner._evaluate = counting  # type: ignore[method-assign]
    job_id = run.jobs[("a", 7)].job_id
    run.states[job_id] = State.SUCCEEDED
    run.results[job_id] = {"v": 1}
    planner.changed(job_id, State.SUCCEEDED)
    new = planner.step(run.fetch)
    assert [(n.stage, n.item) for n in new] == [("b", 7)]
    assert sorted(evaluated) == [("a", 7), ("b", 7), ("c", 7)]  # not the other 1,999 elements


def test_a_dead_job_found_again_by_a_later_instance_is_queued_for_all_its_instances() -> None:
    pipeline = Pipeline.from_dict("p", PIPELINES["chain"][0])
    planner = Planner(pipeline, {"items": [{"v": 1}, {"v": 2}]}, {})
    results: dict[int, Any] = {}
    assert [(n.stage, n.item) for n in planner.step(results.get)] == [("a", 0), ("a", 1)]
    planner.created("a", 0, JobView(1, State.QUEUED))
    planner.created("a", 1, JobView(2, State.QUEUED))
    results.update({1: {"v": 7}, 2: {"v": 7}})  # different inputs, the same output
    planner.changed(1, State.SUCCEEDED)
    (b0,) = planner.step(lambda ids: results)
    planner.created("b", 0, JobView(3, State.QUEUED))
    planner.changed(3, State.DEAD)
    planner.changed(2, State.SUCCEEDED)
    assert planner.step(lambda ids: results)[0].payload == b0.payload == {"v": 7}  # b 1 is b 0's job
    planner.created("b", 1, JobView(3, State.QUEUED))  # found by its key, dead, so queued again
    planner.step(lambda ids: results)
    assert planner.progress()[1].counts == {"queued": 2}


def test_a_fan_in_over_a_list_that_never_comes_is_blocked_and_the_run_fails() -> None:
    pipeline = Pipeline.from_dict("p", PIPELINES["gather_only"][0])
    planner = Planner(pipeline, {"n": 1}, {})
    planner.step({}.get)
    planner.created("list", 0, JobView(1, State.QUEUED))
    planner.changed(1, State.DEAD)
    assert planner.step({}.get) == []
    assert [p.counts for p in planner.progress()] == [{"dead": 1}, {}, {"blocked": 1}]
    assert planner.state() is RunState.FAILED and "each/*" in planner.problems
    planner.changed(1, State.QUEUED)  # the dead letter requeued: the fan-in waits for its list again
    planner.step({}.get)
    assert planner.progress()[2].counts == {"waiting": 1} and planner.state() is RunState.RUNNING
