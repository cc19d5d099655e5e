"""clusterai.worker.execute: running one attempt inside a worker, JSON in and JSON out."""

from __future__ import annotations

import json
import time

import pytest
import unit_tasks  # noqa: F401 - registers the unit.* tasks

from clusterai.core.tasks import import_task_modules
from clusterai.worker.execute import MAX_ERROR_CHARS, current_job, run_batch, run_one


def item(task: str, payload: dict | None = None, *, id: int = 11, attempt: int = 1,
         timeout: float | None = None) -> dict:
    return {"id": id, "attempt": attempt, "task": task, "payload": json.dumps(payload or {}),
            "timeout": timeout}


def test_success_returns_json_text():
    reply = run_one(item("unit.add", {"a": 40}, id=5, attempt=2), "w1")
    assert reply["outcome"] == "succeeded"
    assert isinstance(reply["result"], str)
    assert json.loads(reply["result"]) == 42
    assert (reply["id"], reply["attempt"]) == (5, 2)
    assert "error" not in reply
    assert reply["duration"] >= 0


def test_structured_result_round_trips():
    reply = run_one(item("unit.resize", {"width": 3, "height": 4}), "w1")
    assert json.loads(reply["result"]) == {"area": 12, "mode": "fit"}


def test_task_exception_is_a_retryable_failure():
    reply = run_one(item("unit.boom", {"message": "disk on fire"}), "w1")
    assert reply["outcome"] == "failed"
    assert reply["retryable"] is True
    assert reply["error"].startswith("ValueError: disk on fire\n")
    assert "Traceback" in reply["error"]
    assert "result" not in reply


def test_non_retryable_error_is_not_retried():
    reply = run_one(item("unit.refuse"), "w1")
    assert (reply["outcome"], reply["retryable"]) == ("failed", False)
    assert reply["error"].startswith("NonRetryableError: this input can never work")


def test_bad_input_raised_by_a_task_is_not_retried():
    reply = run_one(item("unit.bad_input"), "w1")
    assert (reply["outcome"], reply["retryable"]) == ("failed", False)
    assert "PayloadError" in reply["error"]


@pytest.mark.parametrize(("kind", "retryable", "name"), [("key", False, "KeyError"),
                                                          ("other", True, "RuntimeError")])
def test_declared_non_retryable_types(kind, retryable, name):
    reply = run_one(item("unit.declared", {"kind": kind}), "w1")
    assert reply["outcome"] == "failed"
    assert reply["retryable"] is retryable
    assert reply["error"].startswith(f"{name}: ")


def test_payload_that_no_longer_validates_is_not_retried():
    reply = run_one(item("unit.add", {"a": "x"}), "w1")
    assert (reply["outcome"], reply["retryable"]) == ("failed", False)
    assert "invalid payload: a: " in reply["error"]


def test_unknown_task_is_not_retried():
    reply = run_one(item("unit.not_registered_anywhere"), "w1")
    assert (reply["outcome"], reply["retryable"]) == ("failed", False)
    assert reply["error"].startswith("UnknownTaskError: unknown task 'unit.not_registered_anywhere'")


@pytest.mark.parametrize("kind", ["set", "nan", "object"])
def test_non_json_result_fails_without_retry(kind):
    reply = run_one(item("unit.not_json", {"kind": kind}), "w1")
    assert reply["outcome"] == "failed"
    assert reply["retryable"] is False
    assert "task returned a value that is not JSON" in reply["error"]
    assert "result" not in reply


def test_long_errors_are_truncated():
    reply = run_one(item("unit.long_error", {"size": 3 * MAX_ERROR_CHARS}), "w1")
    assert len(reply["error"]) <= MAX_ERROR_CHARS
    assert reply["error"].endswith("...[truncated]")
    assert reply["error"].startswith("RuntimeError: xxx")


@pytest.mark.timeout(20)
def test_busy_loop_past_its_timeout_is_interrupted():
    started = time.monotonic()
    reply = run_one(item("unit.spin", {"seconds": 10.0}, timeout=0.2), "w1")
    elapsed = time.monotonic() - started
    assert reply["outcome"] == "timeout", reply
    assert reply["retryable"] is True
    assert "past its timeout of 0.2 s" in reply["error"]
    assert 0.15 <= elapsed < 1.0
    assert "result" not in reply


@pytest.mark.timeout(20)
def test_fast_task_with_timeout_is_not_interrupted_later():
    reply = run_one(item("unit.spin", {"seconds": 0.01}, timeout=0.1), "w1")
    assert reply["outcome"] == "succeeded"
    # the disarmed watchdog must not fire into this thread afterwards
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    assert run_one(item("unit.add", {"a": 1}), "w1")["outcome"] == "succeeded"


def test_current_job_inside_a_task():
    reply = run_one(item("unit.whoami", id=99, attempt=4), "tcp://10.0.0.2:4000")
    assert json.loads(reply["result"]) == {"id": 99, "attempt": 4, "worker": "tcp://10.0.0.2:4000"}
    assert current_job() is None  # cleared afterwards


def test_current_job_is_cleared_after_a_failure():
    run_one(item("unit.boom"), "w1")
    assert current_job() is None


def test_demo_flaky_task_uses_the_attempt_number():
    import_task_modules([])
    first = run_one(item("demo.flaky", {"fail_attempts": 1}, attempt=1), "w1")
    second = run_one(item("demo.flaky", {"fail_attempts": 1}, attempt=2), "w1")
    assert (first["outcome"], first["retryable"]) == ("failed", True)
    assert "fails attempt 1 of 1 on purpose" in first["error"]
    assert json.loads(second["result"]) == {"succeeded_on_attempt": 2}


def test_run_batch_runs_every_item_in_order():
    replies = run_batch([item("unit.add", {"a": 1}, id=1), item("unit.boom", id=2),
                         item("unit.add", {"a": 2}, id=3)], "w1")
    assert [(r["id"], r["outcome"]) for r in replies] == [(1, "succeeded"), (2, "failed"), (3, "succeeded")]
    assert json.loads(replies[2]["result"]) == 4
