"""clusterai.placement.slots.WorkerSlot and WorkerRegistry.apply: what a worker can do, and how
its snapshot becomes slot fields."""

from __future__ import annotations

import pytest
from placement_support import NOW, TASK, make_job, make_slot

from clusterai.config import BreakerSection
from clusterai.head.registry import WorkerRegistry
from clusterai.placement.breaker import CircuitBreaker
from clusterai.placement.slots import Constraints


def why_not(slot, job):
    return slot.why_not(job, Constraints.of(job))


def open_breaker() -> CircuitBreaker:
    b = CircuitBreaker(failures=1, cooldown=30.0)
    b.record(False, NOW - 1.0)
    return b


def half_open_breaker() -> CircuitBreaker:
    b = CircuitBreaker(failures=1, cooldown=30.0)
    b.record(False, NOW - 60.0)
    return b


# -- Constraints -----------------------------------------------------------------------------------


def test_constraints_of_a_job():
    job = make_job(resources={"GPU": 1}, labels={"region": "eu"}, prefers={"model": "m"})
    c = Constraints.of(job)
    assert (dict(c.requires), dict(c.labels), dict(c.prefers)) == ({"GPU": 1}, {"region": "eu"}, {"model": "m"})


def test_constraint_key_ignores_order_and_preferences():
    one = Constraints({"GPU": 1, "CPU": 2}, {"a": "1", "b": "2"}, {"model": "x"})
    other = Constraints({"CPU": 2, "GPU": 1}, {"b": "2", "a": "1"}, {"model": "y"})
    assert one.key == other.key
    assert one.key != Constraints({"GPU": 2, "CPU": 2}, {"a": "1", "b": "2"}).key
    assert one.key != Constraints({"GPU": 1, "CPU": 2}, {"a": "1", "b": "3"}).key


# -- why_not ---------------------------------------------------------------------------------------


def test_a_matching_worker_has_no_objection():
    slot = make_slot("w", labels={"region": "eu", "zone": "eu-a"}, resources={"GPU": 2})
    assert why_not(slot, make_job(labels={"region": "eu"}, resources={"GPU": 2})) is None
    assert why_not(slot, make_job()) is None


def test_why_not_a_label_names_the_key_and_both_values():
    slot = make_slot("w", labels={"region": "us"})
    assert why_not(slot, make_job(labels={"region": "eu"})) == "w has region=us, job needs region=eu"


def test_why_not_an_unset_label():
    assert why_not(make_slot("w"), make_job(labels={"zone": "b"})) == "w has zone=(unset), job needs zone=b"


def test_why_not_a_resource_names_both_amounts():
    slot = make_slot("w", resources={"GPU": 1})
    assert why_not(slot, make_job(resources={"GPU": 2})) == "w has GPU=1, job needs 2"
    assert why_not(slot, make_job(resources={"GPU": 0.5})) is None


def test_why_not_a_missing_resource_counts_as_zero():
    assert why_not(make_slot("w"), make_job(resources={"TPU": 1})) == "w has TPU=0, job needs 1"


def test_accepts_filters_by_queue_or_task():
    slot = make_slot("w", accepts=frozenset({"gpu", "unit.render"}))
    assert why_not(slot, make_job()) == f"w does not take queue 'default' or task {TASK!r}"
    assert why_not(slot, make_job(queue="gpu")) is None
    assert why_not(slot, make_job(task="unit.render")) is None
    assert slot.accepts_job(make_job(queue="gpu"))
    assert not slot.accepts_job(make_job(queue="cpu"))


def test_an_empty_accepts_takes_everything():
    assert make_slot("w").accepts_job(make_job(queue="anything", task="unit.any"))


def test_accepts_is_checked_before_labels():
    slot = make_slot("w", accepts=frozenset({"gpu"}))
    assert "does not take" in why_not(slot, make_job(labels={"region": "eu"}))


# -- fits_now --------------------------------------------------------------------------------------


def test_fits_now_counts_what_running_jobs_hold():
    slot = make_slot("w", resources={"GPU": 2})
    slot.in_use["GPU"] = 1.0
    assert slot.fits_now(Constraints({"GPU": 1}))
    assert not slot.fits_now(Constraints({"GPU": 2}))
    slot.in_use["GPU"] = 2.0
    assert not slot.fits_now(Constraints({"GPU": 1}))
    assert slot.fits_now(Constraints())  # a job needing nothing fits a fully held worker


def test_fits_now_requires_every_resource():
    slot = make_slot("w", resources={"GPU": 1, "RAM_GB": 8})
    slot.in_use["RAM_GB"] = 6.0
    assert slot.fits_now(Constraints({"GPU": 1, "RAM_GB": 2}))
    assert not slot.fits_now(Constraints({"GPU": 1, "RAM_GB": 3}))


# -- preference_score ------------------------------------------------------------------------------


def test_preference_score_counts_models_datasets_and_labels():
    slot = make_slot("w", models={"bert"}, datasets={"wiki"}, labels={"disk": "ssd"})
    assert slot.preference_score(Constraints()) == 0
    assert slot.preference_score(Constraints(prefers={"model": "bert"})) == 1
    assert slot.preference_score(Constraints(prefers={"model": "gpt"})) == 0
    assert slot.preference_score(Constraints(prefers={"dataset": "wiki"})) == 1
    assert slot.preference_score(Constraints(prefers={"dataset": "bert"})) == 0  # a model, not a data set
    assert slot.preference_score(Constraints(prefers={"disk": "ssd"})) == 1
    assert slot.preference_score(Constraints(prefers={"disk": "hdd"})) == 0
    both = Constraints(prefers={"model": "bert", "dataset": "wiki", "disk": "ssd"})
    assert slot.preference_score(both) == 3


# -- capacity, rooms, expected wait ----------------------------------------------------------------


def test_capacity_is_slots_when_set_else_threads():
    assert make_slot("w", nthreads=4).capacity == 4
    assert make_slot("w", nthreads=4, concurrency=2).capacity == 2
    assert make_slot("w", nthreads=4, calls=2).load == 0.5
    assert make_slot("w", nthreads=0).load == 0.0


@pytest.mark.parametrize(
    ("changes", "long_room", "short_room"),
    [
        ({}, True, True),
        ({"calls": 1}, False, True),  # one short batch may wait behind a short one
        ({"calls": 2}, False, False),
        ({"calls": 1, "long_calls": 1}, False, False),  # nothing waits behind a long one
        ({"nthreads": 2, "calls": 1, "long_calls": 1}, True, True),  # a free thread beside it
        ({"status": "draining"}, False, False),
        ({"status": "joining"}, False, False),
        ({"status": "unresponsive"}, False, False),
        ({"isolated": True}, False, False),
    ],
)
def test_has_room(changes, long_room: bool, short_room: bool):
    slot = make_slot("w", **{"nthreads": 1, **changes})
    assert slot.has_room(short=False) is long_room
    assert slot.has_room(short=True) is short_room


def test_expected_wait_without_history_is_jobs_in_flight_plus_one():
    assert make_slot("w", jobs=0).expected_wait(TASK) == 1.0
    assert make_slot("w", jobs=3, nthreads=4, latency={"unit.other": 0.1}).expected_wait(TASK) == 4.0


def test_expected_wait_from_latency():
    assert make_slot("w", jobs=3, nthreads=2, latency={TASK: 0.5}).expected_wait(TASK) == pytest.approx(1.0)
    slot = make_slot("w", jobs=3, nthreads=4, concurrency=1, latency={TASK: 0.5})
    assert slot.expected_wait(TASK) == pytest.approx(2.0)


# -- breakers --------------------------------------------------------------------------------------


def test_breaker_for_inherits_the_worker_settings_and_is_kept():
    slot = make_slot("w", breaker=CircuitBreaker(failures=2, cooldown=7.0))
    b = slot.breaker_for(TASK)
    assert (b.failures, b.cooldown) == (2, 7.0)
    assert slot.breaker_for(TASK) is b
    assert slot.breaker_for("unit.other") is not b


def test_breaker_state_is_the_worst_of_all_breakers():
    slot = make_slot("w")
    assert slot.breaker_state(NOW) == "closed"
    slot.task_breakers["unit.a"] = half_open_breaker()
    assert slot.breaker_state(NOW) == "half_open"
    slot.task_breakers["unit.b"] = open_breaker()
    assert slot.breaker_state(NOW) == "open"


def test_breaker_state_open_worker_breaker_beats_half_open_task_breaker():
    slot = make_slot("w", breaker=open_breaker())
    slot.task_breakers["unit.a"] = half_open_breaker()
    assert slot.breaker_state(NOW) == "open"
    assert make_slot("w", breaker=half_open_breaker()).breaker_state(NOW) == "half_open"


# -- WorkerRegistry.apply --------------------------------------------------------------------------


def registry() -> WorkerRegistry:
    return WorkerRegistry(store=None, dask_client=None)


SNAPSHOT = {
    "pid": 4321,
    "labels": {"region": "eu", "rack": 7},
    "resources": {"GPU": 2, "RAM_GB": "16"},
    "models": ["bert", "gpt"],
    "datasets": ["wiki"],
    "accepts": ["gpu"],
    "slots": 3,
    "latency": {TASK: "0.25"},
    "cpu": 12.5,
    "memory": 1024,
    "gpu_percent": "n/a",  # not a number: left out
    "something_else": 1.0,  # not a metric: left out
}


def test_apply_turns_a_snapshot_into_slot_fields():
    slot = make_slot("w", status="joining", nthreads=8)
    registry().apply(slot, dict(SNAPSHOT))
    assert slot.pid == 4321
    assert slot.labels == {"region": "eu", "rack": "7"}
    assert slot.resources == {"GPU": 2.0, "RAM_GB": 16.0}
    assert slot.models == frozenset({"bert", "gpt"})
    assert slot.datasets == frozenset({"wiki"})
    assert slot.accepts == frozenset({"gpu"})
    assert slot.concurrency == 3 and slot.capacity == 3
    assert slot.latency == {TASK: 0.25}
    assert slot.metrics == {"cpu": 12.5, "memory": 1024.0}


def test_apply_returns_true_exactly_once_when_a_joining_worker_becomes_ready():
    slot = make_slot("w", status="joining")
    reg = registry()
    assert reg.apply(slot, dict(SNAPSHOT)) is True
    assert slot.status == "ready"
    assert reg.apply(slot, dict(SNAPSHOT)) is False
    assert reg.apply(slot, {}) is False
    assert slot.status == "ready"


@pytest.mark.parametrize("status", ["ready", "draining", "unresponsive"])
def test_apply_leaves_other_states_alone(status: str):
    slot = make_slot("w", status=status)
    assert registry().apply(slot, dict(SNAPSHOT)) is False
    assert slot.status == status


def test_apply_replaces_what_the_worker_no_longer_reports():
    slot = make_slot("w", status="joining")
    reg = registry()
    reg.apply(slot, dict(SNAPSHOT))
    reg.apply(slot, {"labels": {"region": "us"}})
    assert slot.labels == {"region": "us"}
    assert slot.resources == {} and slot.models == frozenset() and slot.accepts == frozenset()
    assert slot.concurrency == 0 and slot.latency == {} and slot.metrics == {}
    assert slot.pid == 4321  # a snapshot without a pid keeps the one it had


def test_apply_keeps_placement_state():
    slot = make_slot("w", calls=2, jobs=5)
    slot.in_use["GPU"] = 1.0
    registry().apply(slot, dict(SNAPSHOT))
    assert (slot.calls, slot.jobs, slot.in_use) == (2, 5, {"GPU": 1.0})


def test_registry_defaults_to_the_configured_breaker_settings():
    reg = registry()
    assert (reg.breaker.failures, reg.breaker.cooldown) == (BreakerSection().failures, BreakerSection().cooldown)


def test_record_reports_the_worst_breaker():
    slot = make_slot("w", jobs=2, labels={"region": "eu"}, models={"b", "a"})
    slot.task_breakers[TASK] = open_breaker()
    record = WorkerRegistry.record(slot, NOW)
    assert record.breaker == "open"
    assert record.inflight == 2
    assert record.models == ["a", "b"]
    assert record.labels == {"region": "eu"}
    assert record.last_seen == NOW  # never answered: stamped now
