"""Runs kept in memory between advances (PipelineRunner.advance(keep=True), the driver's way): an
advance reads only what finished, yet the store stays the truth: a change behind the runner's back
is seen by the slow sweep (a full read), a run changed by another process is read again, and a
run advanced that way ends exactly as one read whole at each step."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import unit_tasks  # noqa: F401 - registers the unit.* tasks

from clusterai.config import parse_config
from clusterai.core.model import Finish, Outcome, State
from clusterai.core.pipelines import Pipeline
from clusterai.head.pipeline_driver import PipelineDriver
from clusterai.service.runs import PipelineRunner
from clusterai.store.sqlite import SQLiteStore

SPEC = {"stages": [
    {"name": "add", "task": "unit.add", "each": "input.numbers", "inputs": {"a": "item"}, "params": {"b": 10}},
    {"name": "again", "task": "unit.add", "inputs": {"a": "add"}},
    {"name": "all", "task": "unit.anything", "gather": True, "inputs": {"value": "again"}},
]}
PIPELINE = Pipeline.from_dict("adds", SPEC)


class CountingStore(SQLiteStore):
    """Counts the reads of a whole run."""

    whole_reads = 0

    def run_jobs(self, run_id: int) -> list[tuple[str, int, int, State, str | None, float]]:
        self.whole_reads += 1
        return super().run_jobs(run_id)


@pytest.fixture
def store(tmp_path: Path):
    s = CountingStore(tmp_path / "jobs.db")
    yield s
    s.close()


def runner_on(store: SQLiteStore) -> PipelineRunner:
    return PipelineRunner(store, parse_config({}))


def finish(store: SQLiteStore, job_id: int, ok: bool = True) -> None:
    """Run a queued stage job of unit.add by hand: its result is what the task would return."""
    (job,) = store.start_attempts([(job_id, "w")], time.time(), time.time() + 30)
    result: Any = job.payload["a"] + job.payload.get("b", 2) if job.task == "unit.add" else job.payload["value"]
    outcome, state = (Outcome.SUCCEEDED, State.SUCCEEDED) if ok else (Outcome.FAILED, State.DEAD)
    store.finish_attempts([Finish(job_id, job.attempt, outcome, state, result_json=json.dumps(result) if ok else None,
                                  error=None if ok else "boom")], time.time())


def jobs_of(store: SQLiteStore, run_id: int, stage: str) -> dict[int, int]:
    return {item: job_id for s, item, job_id, *_ in store.run_jobs(run_id) if s == stage}


def test_a_kept_run_reads_only_what_finished_and_ends_as_a_run_read_whole(store: CountingStore, tmp_path: Path):
    runner = runner_on(store)
    numbers = list(range(30))
    run = runner.start(PIPELINE, {"numbers": numbers})
    waiting = runner.advance(run.id, None, keep=True)  # the driver's first look: read whole
    assert waiting == set(jobs_of(store, run.id, "add").values())
    reads = store.whole_reads
    while waiting:
        done = sorted(waiting)[:7]
        for job_id in done:
            finish(store, job_id)
        waiting = (waiting - set(done)) | runner.advance(run.id, done, keep=True)
    assert store.whole_reads == reads, "no advance read the whole run again"
    assert store.get_run(run.id).state == "succeeded"
    assert runner.outputs(run.id)[0]["result"] == [n + 10 + 2 for n in numbers]

    # the same run advanced by a runner that reads it whole every time: the same jobs
    other = SQLiteStore(tmp_path / "other.db")
    plain = runner_on(other)
    again = plain.start(PIPELINE, {"numbers": numbers})
    while open_ := [j for *_, j, st, _, _ in other.run_jobs(again.id) if not st.terminal]:
        for job_id in open_:
            finish(other, job_id)
        plain.advance(again.id)
    assert plain.outputs(again.id) == runner.outputs(run.id)
    assert [(s["name"], s["counts"]) for s in plain.status(again.id)["stages"]] == [
        (s["name"], s["counts"]) for s in runner.status(run.id)["stages"]]
    other.close()


def test_a_job_cancelled_behind_the_runners_back_is_seen_by_a_full_read(store: CountingStore):
    runner = runner_on(store)
    run = runner.start(PIPELINE, {"numbers": [1, 2]})
    runner.advance(run.id, None, keep=True)
    add = jobs_of(store, run.id, "add")
    store.cancel(add[1], time.time())  # through the API: the coordinator is not told
    finish(store, add[0])
    runner.advance(run.id, [add[0]], keep=True)
    finish(store, jobs_of(store, run.id, "again")[0])
    runner.advance(run.id, [jobs_of(store, run.id, "again")[0]], keep=True)
    assert "all" not in {s for s, *_ in store.run_jobs(run.id)}, "the kept view still thinks add 1 runs"
    runner.advance(run.id, None, keep=True)  # the driver's slow sweep
    (gather,) = jobs_of(store, run.id, "all").values()
    assert store.get(gather).payload == {"value": [13, None]}
    finish(store, gather)
    assert runner.advance(run.id, [gather], keep=True) == set()
    assert store.get_run(run.id).state == "failed"


def test_a_run_changed_by_another_process_is_read_again(store: CountingStore):
    runner, elsewhere = runner_on(store), runner_on(store)
    run = runner.start(PIPELINE, {"numbers": [1, 2]})
    runner.advance(run.id, None, keep=True)
    add = jobs_of(store, run.id, "add")
    finish(store, add[0])
    elsewhere.cancel(run.id)
    assert runner.advance(run.id, [add[0]], keep=True) == set()  # cancelled: nothing more is made
    assert "again" not in {s for s, *_ in store.run_jobs(run.id)}
    elsewhere.retry(run.id)  # unlinks, plans afresh: add 1 queued again, again 0 made
    reads = store.whole_reads
    finish(store, add[1])
    runner.advance(run.id, [add[1]], keep=True)
    assert store.whole_reads == reads + 1, "the run's updated_at moved: read whole"
    assert set(jobs_of(store, run.id, "again")) == {0, 1}
    for job_id in jobs_of(store, run.id, "again").values():
        finish(store, job_id)
    runner.advance(run.id, list(jobs_of(store, run.id, "again").values()), keep=True)
    (gather,) = jobs_of(store, run.id, "all").values()
    finish(store, gather)
    runner.advance(run.id, [gather], keep=True)
    assert store.get_run(run.id).state == "succeeded"


def test_the_driver_advances_on_finish_events_and_its_slow_sweep_sees_a_cancel_behind_its_back(
        store: CountingStore):
    runner = runner_on(store)

    async def scenario() -> None:
        driver = PipelineDriver(runner, sweep_every=0.05, full_sweep_every=0.5)
        await driver.start()
        try:
            run = runner.start(PIPELINE, {"numbers": [1, 2, 3]})
            driver.poke(run.id)
            await asyncio.sleep(0.2)
            add = jobs_of(store, run.id, "add")
            for item in (0, 1):
                finish(store, add[item])
                driver.job_finished(add[item], State.SUCCEEDED)
            await asyncio.sleep(0.1)
            again = jobs_of(store, run.id, "again")
            assert set(again) == {0, 1}
            for job_id in again.values():
                finish(store, job_id)
                driver.job_finished(job_id, State.SUCCEEDED)
            store.cancel(add[2], time.time())  # no event: only the full sweep can see it
            deadline = time.monotonic() + 5
            while "all" not in {s for s, *_ in store.run_jobs(run.id)}:
                assert time.monotonic() < deadline, "the slow sweep never noticed the cancelled job"
                await asyncio.sleep(0.05)
            (gather,) = jobs_of(store, run.id, "all").values()
            assert store.get(gather).payload == {"value": [13, 14, None]}
            finish(store, gather)
            driver.job_finished(gather, State.SUCCEEDED)
            await asyncio.sleep(0.1)
            assert store.get_run(run.id).state == "failed"
            await asyncio.sleep(0.1)
            assert not runner._live and not driver._waiting_on, "a finished run is not kept"
        finally:
            await driver.stop()

    asyncio.run(scenario())


def test_a_run_nobody_has_advanced_yet_is_left_to_its_starter_for_a_while(store: CountingStore):
    """The quick sweep does not plan a run whose starter is still creating its first jobs (the same
    jobs twice, with the coordinator waiting); one whose starter died is picked up after the grace."""
    runner = runner_on(store)

    async def scenario() -> None:
        driver = PipelineDriver(runner, sweep_every=0.05, full_sweep_every=60, start_grace=0.6)
        await driver.start()
        try:
            started = runner.start(PIPELINE, {"numbers": [1]})  # advanced by its starter: taken at once
            orphan = store.create_run("adds", PIPELINE.to_dict(), {"numbers": [2]}, time.time())  # starter died
            await asyncio.sleep(0.3)
            assert started.id in driver._known and jobs_of(store, started.id, "add")
            assert orphan not in driver._known and not jobs_of(store, orphan, "add")
            deadline = time.monotonic() + 5
            while not jobs_of(store, orphan, "add"):
                assert time.monotonic() < deadline, "the orphaned run was never picked up"
                await asyncio.sleep(0.05)
            assert orphan in driver._known
        finally:
            await driver.stop()

    asyncio.run(scenario())
