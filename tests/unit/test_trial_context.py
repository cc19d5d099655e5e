"""clusterai.worker.trial: report, checkpoint and restore from inside a running job."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clusterai.errors import BadInput, NonRetryableError
from clusterai.worker import execute, trial
from clusterai.worker.execute import JobContext, StopRequested

JOB = 4242


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", root.as_uri())
    monkeypatch.delenv("CLUSTERAI_ARTIFACTS_OPTIONS", raising=False)
    return root


@pytest.fixture
def events() -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    execute.set_event_sink(lambda topic, message: seen.append((topic, message)))
    try:
        yield seen
    finally:
        execute.set_event_sink(None)


@pytest.fixture
def as_job() -> Iterator[Callable[..., Any]]:
    """Run a block as attempt `attempt` of job `job_id`, on this thread, as a worker would."""
    used: set[int] = set()

    @contextmanager
    def running(attempt: int = 1, job_id: int = JOB) -> Iterator[JobContext]:
        used.add(job_id)
        context = JobContext(job_id, attempt, "w1")
        execute._context.job = context
        try:
            yield context
        finally:
            execute._context.job = None

    yield running
    for job_id in used:  # stop requests are process-wide; leave none behind
        for attempt in range(10):
            execute._forget_stop(job_id, attempt)


def folder(root: Path, job_id: int = JOB) -> Path:
    return root / "jobs" / str(job_id)


def state_files(root: Path) -> list[Path]:
    return sorted(folder(root).glob("state-*.bin"))


# -- checkpoint and restore ---------------------------------------------------------------------


def test_checkpoint_writes_the_state_then_a_manifest_with_its_sha256(artifacts, as_job):
    state = {"epoch": 3, "coef": np.arange(6, dtype=np.float64).reshape(2, 3)}
    with as_job(attempt=1):
        manifest = trial.checkpoint(state, step=3)
        assert manifest is not None
        (path,) = state_files(artifacts)
        data = path.read_bytes()
        assert manifest["artifact"] == path.as_uri()
        assert manifest["size"] == len(data)
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        assert (manifest["step"], manifest["attempt"]) == (3, 1)
        assert json.loads((folder(artifacts) / "manifest.json").read_text()) == manifest
        assert trial.last_checkpoint() == manifest
        restored = trial.restore()
    assert restored["epoch"] == 3
    np.testing.assert_array_equal(restored["coef"], state["coef"])


def test_restore_without_a_checkpoint_is_none(artifacts, as_job):
    with as_job():
        assert trial.restore() is None
        assert trial.last_checkpoint() is None


def test_a_new_checkpoint_replaces_the_old_and_removes_its_state(artifacts, as_job):
    with as_job(attempt=1):
        first = trial.checkpoint({"epoch": 1}, step=1)
        second = trial.checkpoint({"epoch": 2}, step=2)
        assert first is not None and second is not None
        assert first["artifact"] != second["artifact"]
        assert [p.as_uri() for p in state_files(artifacts)] == [second["artifact"]]
        assert trial.restore() == {"epoch": 2}


def test_a_later_attempt_resumes_from_the_checkpoint_of_an_earlier_one(artifacts, as_job):
    with as_job(attempt=1):
        trial.checkpoint(b"raw state", step=5)
    with as_job(attempt=2):
        assert trial.restore() == b"raw state"
        assert trial.last_checkpoint()["attempt"] == 1
        assert trial.checkpoint(b"newer", step=6)["attempt"] == 2
    assert len(state_files(artifacts)) == 1


def test_a_superseded_attempt_cannot_roll_the_checkpoint_back(artifacts, as_job):
    with as_job(attempt=2):
        kept = trial.checkpoint({"epoch": 8}, step=8)
    with as_job(attempt=1), pytest.raises(NonRetryableError, match="attempt 1 of job 4242 was superseded by "
                                                                    "attempt 2"):
        trial.checkpoint({"epoch": 4}, step=4)
    with as_job(attempt=2):
        assert trial.last_checkpoint() == kept
        assert trial.restore() == {"epoch": 8}
    assert len(state_files(artifacts)) == 1


def test_jobs_keep_their_checkpoints_apart(artifacts, as_job):
    with as_job(job_id=1):
        trial.checkpoint({"job": 1})
    with as_job(job_id=2):
        trial.checkpoint({"job": 2})
        assert trial.restore() == {"job": 2}
    with as_job(job_id=1):
        assert trial.restore() == {"job": 1}


def test_a_corrupted_state_is_not_restored(artifacts, as_job, caplog):
    with as_job():
        trial.checkpoint({"epoch": 1, "w": np.ones(50)})
        (path,) = state_files(artifacts)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, other bytes
        path.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING, logger="clusterai.trial"):
            assert trial.restore() is None
    assert any("is not usable" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)


def test_a_missing_state_is_not_restored(artifacts, as_job, caplog):
    with as_job():
        trial.checkpoint({"epoch": 1})
        state_files(artifacts)[0].unlink()
        with caplog.at_level(logging.WARNING, logger="clusterai.trial"):
            assert trial.restore() is None
    assert any("is not usable" in r.getMessage() for r in caplog.records)


def test_an_unreadable_manifest_counts_as_no_checkpoint(artifacts, as_job, caplog):
    with as_job():
        trial.checkpoint({"epoch": 1})
        (folder(artifacts) / "manifest.json").write_text("{half a manif")
        with caplog.at_level(logging.WARNING, logger="clusterai.trial"):
            assert trial.restore() is None
        assert any("not readable" in r.getMessage() for r in caplog.records)
        assert trial.checkpoint({"epoch": 2})["attempt"] == 1  # and the next checkpoint starts afresh
        assert trial.restore() == {"epoch": 2}


def test_a_state_that_cannot_be_stored_writes_nothing(artifacts, as_job):
    with as_job():
        with pytest.raises(BadInput, match=r"state\.model is a object"):
            trial.checkpoint({"model": object()})
        assert trial.last_checkpoint() is None
    assert not folder(artifacts).exists()


def test_checkpoints_work_on_a_non_local_filesystem(monkeypatch, as_job):
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", f"memory://trial-{uuid.uuid4().hex}")
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS_OPTIONS", "{}")
    with as_job():
        first = trial.checkpoint({"epoch": 1, "w": np.arange(3)})
        second = trial.checkpoint({"epoch": 2, "w": np.arange(4)})
        assert first["artifact"].startswith("memory://") and first["artifact"] != second["artifact"]
        restored = trial.restore()
        assert restored["epoch"] == 2
        np.testing.assert_array_equal(restored["w"], np.arange(4))
        from clusterai.core.artifacts import ArtifactStore

        store = ArtifactStore()
        assert not store.exists(first) and store.exists(second)
        store.delete(second)
        store.delete(store.url(trial.namespace(execute.current_job()), trial.MANIFEST))


# -- outside a worker ---------------------------------------------------------------------------


def test_outside_a_worker_everything_is_a_no_op(artifacts, events):
    assert execute.current_job() is None
    trial.report(1, accuracy=0.5)
    assert trial.checkpoint({"epoch": 1}) is None
    assert trial.restore() is None
    assert trial.last_checkpoint() is None
    assert trial.should_stop() is False
    assert events == []
    assert not artifacts.exists()


# -- report -------------------------------------------------------------------------------------


def test_report_sends_the_metrics_to_the_event_sink(as_job, events):
    with as_job(attempt=2):
        trial.report(0, accuracy=0.5, loss=2)
        trial.report(7)
    assert [topic for topic, _ in events] == [trial.TOPIC, trial.TOPIC]
    first = events[0][1]
    assert {k: first[k] for k in ("job_id", "attempt", "step", "metrics")} == {
        "job_id": JOB, "attempt": 2, "step": 0, "metrics": {"accuracy": 0.5, "loss": 2.0}}
    assert type(first["metrics"]["loss"]) is float
    assert isinstance(first["at"], float)
    assert events[1][1]["metrics"] == {}


def test_report_without_an_event_sink_is_quiet(as_job):
    with as_job():
        trial.report(1, accuracy=0.9)


@pytest.mark.parametrize("step", [-1, 1.0, "3", True, None])
def test_report_refuses_a_bad_step(step, as_job, events):
    with as_job(), pytest.raises(BadInput, match=r"trial\.report: step must be an integer >= 0"):
        trial.report(step, accuracy=0.5)
    assert events == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0.9", None, True, [0.9]])
def test_report_refuses_a_metric_that_is_not_a_finite_number(value, as_job, events):
    with as_job(), pytest.raises(BadInput, match=r"trial\.report: metric 'accuracy' must be a finite number"):
        trial.report(1, loss=0.1, accuracy=value)
    assert events == []


def test_report_refuses_an_integer_too_large_for_a_float(as_job):
    with as_job(), pytest.raises(BadInput, match="metric 'count'"):
        trial.report(1, count=10**400)


def test_report_checks_its_input_outside_a_worker_too():
    with pytest.raises(BadInput):
        trial.report(-1)


def test_report_raises_stop_requested_once_the_head_stops_the_attempt(as_job, events):
    with as_job(attempt=3):
        trial.report(1, accuracy=0.2)
        execute.request_stop(JOB, 2, "an older attempt")  # not this one
        trial.report(2, accuracy=0.3)
        assert trial.should_stop() is False
        execute.request_stop(JOB, 3, "median stopping at step 2")
        assert trial.should_stop() is True
        with pytest.raises(StopRequested) as stopped:
            trial.report(3, accuracy=0.25)
    assert stopped.value.reason == "median stopping at step 2"
    assert stopped.value.result() == {"stopped": "median stopping at step 2", "step": 3,
                                      "metrics": {"accuracy": 0.25}}
    assert [m["step"] for _, m in events] == [1, 2, 3]  # the last value still reaches the head
