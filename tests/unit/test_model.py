"""clusterai.core.model: state machine, priorities, retry policy, and decide()."""

from __future__ import annotations

import random
import statistics
from itertools import product

import pytest

from clusterai.core.model import (
    TRANSITIONS,
    Job,
    JobSpec,
    Outcome,
    Priority,
    RetryPolicy,
    State,
    canonical_json,
    check_transition,
    decide,
)
from clusterai.errors import BadInput, InvalidTransition

NOW = 1_000.0


def make_job(**changes) -> Job:
    fields = dict(
        id=7, task="unit.t", queue="default", priority=Priority.NORMAL, state=State.RUNNING,
        payload={}, created_at=0.0, updated_at=0.0, run_at=0.0, attempt=3, failures=0,
        lost_count=0, retry=RetryPolicy(retries=2, backoff=1.0, max_backoff=10.0, jitter=0.0),
    )
    fields.update(changes)
    return Job(**fields)


# -- state machine ----------------------------------------------------------------------------


ALLOWED = sorted(((old, new) for old in State for new in TRANSITIONS[old]), key=str)
FORBIDDEN = sorted(
    ((old, new) for old, new in product(State, State) if new not in TRANSITIONS[old]), key=str
)


def test_every_state_has_a_transition_entry():
    assert set(TRANSITIONS) == set(State)


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_allowed_transition_passes(old: State, new: State):
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_forbidden_transition_raises_and_lists_allowed_targets(old: State, new: State):
    with pytest.raises(InvalidTransition) as info:
        check_transition(old, new)
    message = str(info.value)
    assert f"a {old.value} job cannot become {new.value}" in message
    allowed = message.split("it may become: ")[1]
    assert allowed.split(", ") == sorted(s.value for s in TRANSITIONS[old])


def test_the_table_itself():
    # the few facts the coordinator relies on, spelled out so a change to the table is noticed
    assert TRANSITIONS[State.PENDING] == {State.QUEUED, State.CANCELLED}
    assert TRANSITIONS[State.QUEUED] == {State.RUNNING, State.CANCELLED}
    assert State.RUNNING not in TRANSITIONS[State.PENDING]
    for state in State:
        assert state not in TRANSITIONS[state], f"{state} -> itself"
    for terminal in (State.SUCCEEDED, State.DEAD, State.CANCELLED):
        assert TRANSITIONS[terminal] == {State.QUEUED}


def test_terminal_states():
    assert {s for s in State if s.terminal} == {State.SUCCEEDED, State.DEAD, State.CANCELLED}


# -- priorities -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("low", Priority.LOW), ("NORMAL", Priority.NORMAL), ("High", Priority.HIGH),
        (" critical ", Priority.CRITICAL), ("cRiTiCaL", Priority.CRITICAL),
        (0, Priority.LOW), (1, Priority.NORMAL), (2, Priority.HIGH), (3, Priority.CRITICAL),
        (Priority.HIGH, Priority.HIGH),
    ],
)
def test_priority_parse_accepts_names_and_levels(value, expected):
    assert Priority.parse(value) is expected


@pytest.mark.parametrize("value", ["urgent", "", "2", 4, -1, True, False, 1.0, None, [1]])
def test_priority_parse_refuses_others_listing_allowed_names(value):
    with pytest.raises(BadInput) as info:
        Priority.parse(value)
    assert f"invalid priority {value!r}" in str(info.value)
    assert str(info.value).endswith("allowed: low, normal, high, critical")


def test_priorities_order():
    assert Priority.LOW < Priority.NORMAL < Priority.HIGH < Priority.CRITICAL


# -- retry policy -----------------------------------------------------------------------------

SCHEDULE = (0.5, 1.0, 2.0, 4.0, 4.0, 4.0)
POLICY = RetryPolicy(retries=6, backoff=0.5, max_backoff=4, jitter=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [dict(retries=-1), dict(backoff=-0.1), dict(max_backoff=-1), dict(jitter=1.0), dict(jitter=-0.1)],
)
def test_retry_policy_refuses_invalid_values(kwargs):
    with pytest.raises(BadInput):
        RetryPolicy(**kwargs)


def test_retry_delay_without_jitter_is_exactly_the_schedule():
    exact = RetryPolicy(retries=6, backoff=0.5, max_backoff=4, jitter=0.0)
    assert [exact.delay(n) for n in range(1, 9)] == [*SCHEDULE, 4.0, 4.0]


@pytest.mark.parametrize(("failures", "expected"), list(enumerate(SCHEDULE, start=1)))
def test_retry_delays_stay_within_20_percent_of_schedule_and_under_cap(failures, expected):
    rng = random.Random(failures)
    samples = [POLICY.delay(failures, rng) for _ in range(3000)]
    assert min(samples) >= 0.8 * expected
    assert max(samples) <= 1.2 * expected
    assert max(samples) <= POLICY.max_backoff
    # jitter is really applied: the samples spread over most of +-10%, below the cap at least
    assert min(samples) < 0.92 * expected
    if expected < POLICY.max_backoff:
        assert max(samples) > 1.08 * expected
        assert statistics.mean(samples) == pytest.approx(expected, rel=0.02)
    else:
        assert max(samples) == POLICY.max_backoff


def test_retry_delay_uses_global_random_without_rng():
    random.seed(5)
    first = [POLICY.delay(2) for _ in range(5)]
    random.seed(5)
    assert [POLICY.delay(2) for _ in range(5)] == first
    assert all(0.9 <= d <= 1.1 for d in first)


# -- specs ------------------------------------------------------------------------------------


def test_fingerprint_ignores_key_order_but_not_values_or_task():
    a = JobSpec(task="t", payload={"x": 1, "y": [1, 2]})
    b = JobSpec(task="t", payload={"y": [1, 2], "x": 1})
    assert a.fingerprint == b.fingerprint
    assert a.payload_json == b.payload_json == '{"x":1,"y":[1,2]}'
    assert JobSpec(task="t", payload={"x": 2, "y": [1, 2]}).fingerprint != a.fingerprint
    assert JobSpec(task="u", payload={"x": 1, "y": [1, 2]}).fingerprint != a.fingerprint


def test_canonical_json_keeps_unicode():
    assert canonical_json({"b": "é", "a": None}) == '{"a":null,"b":"é"}'


def test_job_to_dict_names_priority_and_state():
    d = make_job(priority=Priority.CRITICAL, state=State.DEAD).to_dict()
    assert d["priority"] == "critical"
    assert d["state"] == "dead"
    assert d["attempts"] == []


# -- decide -----------------------------------------------------------------------------------


def test_decide_success():
    job = make_job(failures=1, lost_count=2)
    f = decide(job, Outcome.SUCCEEDED, now=NOW, result_json='{"ok":true}')
    assert (f.job_id, f.attempt, f.outcome) == (7, 3, Outcome.SUCCEEDED)
    assert f.state is State.SUCCEEDED
    assert f.result_json == '{"ok":true}'
    assert f.failures == 1
    assert f.lost_count == 0
    assert f.state.terminal


@pytest.mark.parametrize(("failures", "delay"), [(0, 1.0), (1, 2.0)])
def test_decide_retryable_failure_within_budget_goes_pending_after_backoff(failures, delay):
    job = make_job(failures=failures, lost_count=1)
    f = decide(job, Outcome.FAILED, now=NOW, error="ValueError: x")
    assert f.state is State.PENDING
    assert f.run_at == NOW + delay
    assert f.failures == failures + 1
    assert f.lost_count == 0  # a real failure ends a run of lost workers
    assert f.error == "ValueError: x"


def test_decide_uses_the_jittered_delay_of_the_given_rng():
    job = make_job(retry=RetryPolicy(retries=3, backoff=2.0, jitter=0.5))
    f = decide(job, Outcome.FAILED, now=NOW, rng=random.Random(42))
    assert f.run_at == NOW + job.retry.delay(1, random.Random(42))
    assert f.run_at != NOW + 2.0


def test_decide_timeout_spends_the_retry_budget_like_a_failure():
    f = decide(make_job(), Outcome.TIMEOUT, now=NOW)
    assert (f.state, f.failures, f.outcome) == (State.PENDING, 1, Outcome.TIMEOUT)


def test_decide_budget_exhausted_goes_dead():
    job = make_job(failures=2)  # retries=2: attempts 1..3 used
    f = decide(job, Outcome.FAILED, now=NOW, error="boom")
    assert f.state is State.DEAD
    assert f.failures == 3
    assert f.error == "boom"
    assert f.run_at is None


def test_decide_without_retries_dies_on_first_failure():
    f = decide(make_job(retry=RetryPolicy(retries=0)), Outcome.FAILED, now=NOW)
    assert (f.state, f.failures) == (State.DEAD, 1)


def test_decide_non_retryable_dies_at_once_with_budget_left():
    job = make_job(retry=RetryPolicy(retries=100))
    f = decide(job, Outcome.FAILED, now=NOW, retryable=False)
    assert (f.state, f.failures) == (State.DEAD, 1)


def test_full_retry_sequence_uses_exactly_the_budget():
    job = make_job(retry=RetryPolicy(retries=3, backoff=1.0, jitter=0.0))
    states = []
    for _ in range(4):
        f = decide(job, Outcome.FAILED, now=NOW)
        states.append(f.state)
        job = make_job(retry=job.retry, failures=f.failures)
    assert states == [State.PENDING, State.PENDING, State.PENDING, State.DEAD]


@pytest.mark.parametrize("outcome", [Outcome.LOST, Outcome.EXPIRED])
def test_decide_worker_fault_requeues_without_spending_failures(outcome):
    job = make_job(failures=1, lost_count=0)
    f = decide(job, outcome, now=NOW)
    assert f.state is State.QUEUED
    assert f.run_at == NOW
    assert f.failures == 1
    assert f.lost_count == 1


@pytest.mark.parametrize("outcome", [Outcome.LOST, Outcome.EXPIRED])
def test_decide_worker_fault_at_poison_threshold_goes_dead(outcome):
    job = make_job(failures=0, lost_count=2)
    f = decide(job, outcome, now=NOW, poison_threshold=3)
    assert f.state is State.DEAD
    assert f.lost_count == 3
    assert f.failures == 0
    assert "poison job" in f.error and "3 attempts" in f.error


def test_poison_threshold_is_counted_in_a_row():
    job = make_job(retry=RetryPolicy(retries=5, jitter=0.0))
    seen = []
    for outcome in (Outcome.LOST, Outcome.EXPIRED, Outcome.FAILED, Outcome.LOST, Outcome.LOST):
        f = decide(job, outcome, now=NOW, poison_threshold=3)
        seen.append((f.state, f.lost_count))
        job = make_job(retry=job.retry, failures=f.failures, lost_count=f.lost_count)
    assert seen == [(State.QUEUED, 1), (State.QUEUED, 2), (State.PENDING, 0),
                    (State.QUEUED, 1), (State.QUEUED, 2)]


def test_poison_threshold_of_one_kills_on_first_lost_worker():
    f = decide(make_job(), Outcome.LOST, now=NOW, poison_threshold=1)
    assert f.state is State.DEAD


def test_decide_abandoned_never_counts_towards_poison():
    job = make_job(lost_count=2)
    for _ in range(10):
        f = decide(job, Outcome.ABANDONED, now=NOW, poison_threshold=3)
        assert f.state is State.QUEUED
        assert (f.lost_count, f.failures, f.run_at) == (2, 0, NOW)
        job = make_job(lost_count=f.lost_count, failures=f.failures)
