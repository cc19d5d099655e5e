"""clusterai.service.submission.build_spec: validation and option precedence call > @task > queue config > defaults."""

from __future__ import annotations

import time

import pytest
import unit_tasks  # noqa: F401 - registers the unit.* tasks

from clusterai.config import ClusterConfig, parse_config
from clusterai.core.model import Priority, RetryPolicy
from clusterai.errors import BadInput, PayloadError, UnknownTaskError
from clusterai.service.submission import build_spec

CONFIG = parse_config({
    "defaults": {"retries": 1, "backoff": 0.1, "max_backoff": 11.0, "jitter": 0.2, "timeout": 60.0},
    "queues": {
        "gpu": {"retries": 9, "backoff": 7.0, "max_backoff": 70.0},
        "batch": {"retries": 4},  # the rest falls through to the defaults
    },
})


def retry_of(spec) -> tuple:
    return spec.retry.retries, spec.retry.backoff, spec.retry.max_backoff, spec.retry.jitter


def test_defaults_apply_when_nothing_else_is_set():
    spec = build_spec(CONFIG, "unit.plain", None)
    assert spec.task == "unit.plain"
    assert spec.payload == {}
    assert spec.queue == "default"
    assert spec.priority is Priority.NORMAL
    assert retry_of(spec) == (1, 0.1, 11.0, 0.2)
    assert spec.timeout == 60.0
    assert (spec.run_at, spec.idempotency_key, spec.resources, spec.labels) == (None, None, {}, {})


def test_builtin_defaults_without_any_config():
    spec = build_spec(ClusterConfig(), "unit.plain", {})
    assert spec.retry == RetryPolicy()
    assert spec.timeout is None


def test_queue_config_beats_defaults():
    assert retry_of(build_spec(CONFIG, "unit.plain", {}, queue="gpu")) == (9, 7.0, 70.0, 0.2)


def test_partial_queue_config_falls_through_to_defaults():
    spec = build_spec(CONFIG, "unit.plain", {}, queue="batch")
    assert spec.queue == "batch"
    assert retry_of(spec) == (4, 0.1, 11.0, 0.2)


def test_unconfigured_queue_uses_defaults():
    assert retry_of(build_spec(CONFIG, "unit.plain", {}, queue="elsewhere")) == (1, 0.1, 11.0, 0.2)


def test_task_options_beat_queue_config():
    # unit.opts: queue=gpu, retries=5, backoff=2.0, priority=high, timeout=30, resources gpu+mem
    spec = build_spec(CONFIG, "unit.opts", {})
    assert spec.queue == "gpu"
    assert retry_of(spec) == (5, 2.0, 70.0, 0.2)  # max_backoff not set on the task: the queue's
    assert spec.priority is Priority.HIGH
    assert spec.timeout == 30.0
    assert spec.resources == {"gpu": 1.0, "mem": 2.0}


def test_task_options_apply_in_another_queue_too():
    spec = build_spec(CONFIG, "unit.opts", {}, queue="batch")
    assert spec.queue == "batch"
    assert retry_of(spec) == (5, 2.0, 11.0, 0.2)


def test_call_options_beat_everything():
    spec = build_spec(
        CONFIG, "unit.opts", {}, queue="batch", retries=7, backoff=0.3, max_backoff=3.0,
        priority="critical", timeout=5.0, resources={"gpu": 2.0}, labels={"who": "me"},
        idempotency_key="k1", run_at=1234.0,
    )
    assert spec.queue == "batch"
    assert retry_of(spec) == (7, 0.3, 3.0, 0.2)
    assert spec.priority is Priority.CRITICAL
    assert spec.timeout == 5.0
    assert spec.resources == {"gpu": 2.0, "mem": 2.0}  # merged over the task's
    assert spec.labels == {"who": "me"}
    assert (spec.idempotency_key, spec.run_at) == ("k1", 1234.0)


def test_zero_call_options_are_not_mistaken_for_unset():
    spec = build_spec(CONFIG, "unit.opts", {}, retries=0, backoff=0.0, max_backoff=0.0, priority=0)
    assert retry_of(spec) == (0, 0.0, 0.0, 0.2)
    assert spec.priority is Priority.LOW


def test_task_priority_low_is_kept():
    assert build_spec(CONFIG, "unit.low", {}).priority is Priority.LOW


def test_delay_sets_run_at_from_now():
    before = time.time()
    spec = build_spec(CONFIG, "unit.plain", {}, delay=30)
    assert before + 30 <= spec.run_at <= time.time() + 30


def test_payload_is_validated_and_normalised():
    assert build_spec(CONFIG, "unit.add", {"a": 1}).payload == {"a": 1, "b": 2}
    with pytest.raises(PayloadError, match="a: Field required"):
        build_spec(CONFIG, "unit.add", None)
    with pytest.raises(PayloadError, match="c: Extra inputs"):
        build_spec(CONFIG, "unit.add", {"a": 1, "c": 0})


def test_unknown_task_is_refused():
    with pytest.raises(UnknownTaskError, match="unknown task 'unit.missing'"):
        build_spec(CONFIG, "unit.missing", {})


@pytest.mark.parametrize("priority", ["urgent", 7, -1, "1"])
def test_invalid_priority_is_refused(priority):
    with pytest.raises(BadInput, match="invalid priority"):
        build_spec(CONFIG, "unit.plain", {}, priority=priority)


@pytest.mark.parametrize("timeout", [-1, -0.5])
def test_negative_timeout_is_refused(timeout):
    with pytest.raises(BadInput, match="timeout must be > 0 seconds"):
        build_spec(CONFIG, "unit.plain", {}, timeout=timeout)


def test_zero_timeout_is_refused():
    with pytest.raises(BadInput, match="timeout must be > 0 seconds"):
        build_spec(CONFIG, "unit.plain", {}, timeout=0)


def test_invalid_retry_options_are_refused():
    with pytest.raises(BadInput, match="retries must be >= 0"):
        build_spec(CONFIG, "unit.plain", {}, retries=-1)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("requires", {"GPU": -1}, "requires: GPU must be a number >= 0"),
    ("requires", {"GPU": "two"}, "requires: GPU must be a number >= 0, got 'two'"),
    ("requires", ["GPU"], "requires must be a mapping"),
    ("labels", "region=eu", "labels must be a mapping"),
])
def test_bad_placement_constraints_are_refused(option, value, message):
    with pytest.raises(BadInput, match=message):
        build_spec(ClusterConfig(), "unit.plain", {}, **{option: value})
