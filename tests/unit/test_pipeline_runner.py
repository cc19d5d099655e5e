"""The pipeline runner on a real SQLite store, with stage jobs finished by hand (no cluster):
what it creates, what status says at each step, options, cancel and retry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import unit_tasks  # noqa: F401 - registers the unit.* tasks

from clusterai.config import parse_config
from clusterai.core.model import Finish, Outcome, Priority, State
from clusterai.core.pipelines import Pipeline
from clusterai.errors import BadInput, InvalidTransition
from clusterai.service.runs import PipelineRunner, find_pipeline
from clusterai.store.sqlite import SQLiteStore

SPEC = {"stages": [
    {"name": "add", "task": "unit.add", "each": "input.numbers", "inputs": {"a": "item"}, "params": {"b": 10},
     "options": {"queue": "fast", "priority": "high", "retries": 7}},
    {"name": "again", "task": "unit.add", "inputs": {"a": "add"}},
    {"name": "all", "task": "unit.anything", "gather": True, "inputs": {"value": "again"}},
]}
PIPELINE = Pipeline.from_dict("adds", SPEC)


@pytest.fixture
def runner(tmp_path: Path):
    store = SQLiteStore(tmp_path / "jobs.db")
    config = parse_config({"pipelines": {"adds": SPEC}})
    woken: list[int] = []
    yield PipelineRunner(store, config, wake=lambda: woken.append(1))
    store.close()


def finish(runner: PipelineRunner, job_id: int, result: object = None, ok: bool = True) -> None:
    (job,) = runner.store.start_attempts([(job_id, "w")], time.time(), time.time() + 30)
    outcome, state = (Outcome.SUCCEEDED, State.SUCCEEDED) if ok else (Outcome.FAILED, State.DEAD)
    runner.store.finish_attempts([Finish(job_id, job.attempt, outcome, state,
                                         result_json=json.dumps(result) if ok else None,
                                         error=None if ok else "boom")], time.time())


def jobs_of(runner: PipelineRunner, run_id: int, stage: str) -> dict[int, int]:
    return {item: job_id for s, item, job_id, *_ in runner.store.run_jobs(run_id) if s == stage}


def test_start_creates_the_first_stage_with_its_options_then_each_step_follows(runner: PipelineRunner):
    run = runner.start(find_pipeline(runner.config, "adds"), {"numbers": [1, 2]}, owner="alice")
    first = jobs_of(runner, run.id, "add")
    job = runner.store.get(first[0])
    assert (job.payload, job.queue, job.priority, job.retry.retries, job.owner) == (
        {"a": 1, "b": 10}, "fast", Priority.HIGH, 7, "alice")
    assert job.idempotency_key and job.idempotency_key.startswith("pipeline:")
    status = runner.status(run.id)
    assert [(s["name"], s["counts"]) for s in status["stages"]] == [
        ("add", {"queued": 2}), ("again", {"waiting": 2}), ("all", {"waiting": 1})]

    finish(runner, first[0], 11)
    assert runner.status(run.id)["stages"][1]["counts"] == {"ready": 1, "waiting": 1}  # a viewer creates nothing
    unfinished = runner.advance(run.id)
    again = jobs_of(runner, run.id, "again")
    assert runner.store.get(again[0]).payload == {"a": 11, "b": 2} and again[0] in unfinished
    finish(runner, first[1], 12)
    runner.advance(run.id)
    for item, job_id in jobs_of(runner, run.id, "again").items():
        finish(runner, job_id, 100 + item)
    runner.advance(run.id)
    (gather,) = jobs_of(runner, run.id, "all").values()
    assert runner.store.get(gather).payload == {"value": [100, 101]}
    finish(runner, gather, "done")
    assert runner.advance(run.id) == set()
    assert runner.store.get_run(run.id).state == "succeeded"
    assert runner.outputs(run.id) == [{"item": 0, "job": gather, "state": "succeeded", "error": None,
                                       "result": "done"}]


def test_cancel_then_retry_plans_the_run_again(runner: PipelineRunner):
    run = runner.start(PIPELINE, {"numbers": [1, 2]})
    first = jobs_of(runner, run.id, "add")
    finish(runner, first[0], 11)
    cancelled = runner.cancel(run.id)
    assert cancelled.state == "cancelled" and runner.store.get(first[1]).state is State.CANCELLED
    with pytest.raises(InvalidTransition, match="only a running run"):
        runner.cancel(run.id)
    runner.retry(run.id)
    assert runner.store.get_run(run.id).state == "running"
    assert runner.store.get(first[1]).state is State.QUEUED  # found again by its key, queued again
    assert jobs_of(runner, run.id, "add") == first and len(jobs_of(runner, run.id, "again")) == 1
    with pytest.raises(InvalidTransition, match="still running"):
        runner.retry(run.id)


def test_bad_starts_store_nothing(runner: PipelineRunner):
    for bad, message in [({"numbers": 3}, "must be a list"), ({}, "input.numbers: not found")]:
        with pytest.raises(BadInput, match=message):
            runner.start(PIPELINE, bad)
    bad_option = Pipeline.from_dict("x", {"stages": [{"name": "a", "task": "unit.add",
                                                      "options": {"priority": "urgent"}}]})
    with pytest.raises(BadInput, match="invalid priority"):
        runner.start(bad_option, {})
    with pytest.raises(BadInput, match="no pipeline named 'nope'; known: adds"):
        runner.start("nope", {})
    assert runner.store.list_runs() == [] and runner.store.job_counts().get("queued", 0) == 0


def test_a_refused_payload_is_a_problem_and_the_run_fails_when_nothing_else_can_run(runner: PipelineRunner):
    run = runner.start(PIPELINE, {"numbers": [1, "x"]})
    status = runner.status(run.id)
    assert "add/1" in status["problems"] and "unit.add" in status["problems"]["add/1"]
    (job_id,) = jobs_of(runner, run.id, "add").values()
    finish(runner, job_id, 11)
    runner.advance(run.id)
    finish(runner, jobs_of(runner, run.id, "again")[0], 13)
    runner.advance(run.id)
    (gather,) = jobs_of(runner, run.id, "all").values()
    assert runner.store.get(gather).payload == {"value": [13, None]}
    finish(runner, gather, "partial")
    runner.advance(run.id)
    assert runner.store.get_run(run.id).state == "failed"


def test_when_every_item_is_refused_the_fan_in_is_created_in_the_same_advance(runner: PipelineRunner):
    run = runner.start(PIPELINE, {"numbers": ["x", "y"]})
    (gather,) = jobs_of(runner, run.id, "all").values()
    assert runner.store.get(gather).payload == {"value": [None, None]}
    assert set(runner.status(run.id)["problems"]) == {"add/0", "add/1"}
