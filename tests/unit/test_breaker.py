"""clusterai.placement.breaker: closed -> open -> half-open (one trial) -> closed or open again."""

from __future__ import annotations

import pytest

from clusterai.placement.breaker import BreakerState, CircuitBreaker

T0 = 1_000.0
COOLDOWN = 10.0


def opened_breaker(failures: int = 3, at: float = T0) -> CircuitBreaker:
    b = CircuitBreaker(failures=failures, cooldown=COOLDOWN)
    for _ in range(failures):
        b.record(False, at)
    assert b.state(at) is BreakerState.OPEN
    return b


def half_open_breaker() -> tuple[CircuitBreaker, float]:
    b = opened_breaker()
    later = T0 + COOLDOWN
    assert b.state(later) is BreakerState.HALF_OPEN
    return b, later


# -- closed -> open --------------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_allows_work():
    b = CircuitBreaker(failures=3, cooldown=COOLDOWN)
    assert b.state(T0) is BreakerState.CLOSED
    assert b.allows(T0)


def test_defaults_are_five_failures_and_thirty_seconds():
    b = CircuitBreaker()
    for _ in range(4):
        b.record(False, T0)
    assert b.state(T0) is BreakerState.CLOSED
    b.record(False, T0)
    assert b.state(T0 + 29.9) is BreakerState.OPEN
    assert b.state(T0 + 30.0) is BreakerState.HALF_OPEN


@pytest.mark.parametrize("failures", [1, 2, 3, 7])
def test_opens_after_exactly_failures_consecutive_failures(failures: int):
    b = CircuitBreaker(failures=failures, cooldown=COOLDOWN)
    for n in range(failures - 1):
        b.record(False, T0 + n)
        assert b.state(T0 + n) is BreakerState.CLOSED, f"opened after {n + 1} of {failures} failures"
        assert b.allows(T0 + n)
    b.record(False, T0 + failures)
    assert b.state(T0 + failures) is BreakerState.OPEN
    assert not b.allows(T0 + failures)


def test_a_success_resets_the_count_of_consecutive_failures():
    b = CircuitBreaker(failures=3, cooldown=COOLDOWN)
    b.record(False, T0)
    b.record(False, T0)
    b.record(True, T0)
    b.record(False, T0)
    b.record(False, T0)
    assert b.state(T0) is BreakerState.CLOSED  # 2 in a row since the success, not 4 in all
    b.record(False, T0)
    assert b.state(T0) is BreakerState.OPEN


# -- open: cooldown --------------------------------------------------------------------------------


def test_open_refuses_work_until_the_cooldown_has_passed():
    b = opened_breaker(at=T0)
    for t in (T0, T0 + 1.0, T0 + COOLDOWN - 0.001):
        assert b.state(t) is BreakerState.OPEN
        assert not b.allows(t)
    assert b.state(T0 + COOLDOWN) is BreakerState.HALF_OPEN
    assert b.allows(T0 + COOLDOWN)


def test_cooldown_counts_from_the_failure_that_opened_it():
    b = CircuitBreaker(failures=2, cooldown=COOLDOWN)
    b.record(False, T0)
    b.record(False, T0 + 5.0)  # opens here
    assert b.state(T0 + COOLDOWN) is BreakerState.OPEN
    assert b.state(T0 + 5.0 + COOLDOWN) is BreakerState.HALF_OPEN


def test_begin_while_open_reserves_no_trial():
    b = opened_breaker(at=T0)
    b.begin(T0 + 1.0)
    assert b.allows(T0 + COOLDOWN)  # no trial was started by a begin() during the cooldown


def test_begin_while_closed_reserves_nothing():
    b = CircuitBreaker(failures=3, cooldown=COOLDOWN)
    b.begin(T0)
    assert b.allows(T0)
    assert b.allows(T0 + 1.0)


# -- half-open: one trial --------------------------------------------------------------------------


def test_half_open_allows_exactly_one_trial():
    b, t = half_open_breaker()
    assert b.allows(t)
    b.begin(t)
    assert b.state(t) is BreakerState.HALF_OPEN
    assert not b.allows(t)  # the trial is running: nothing else may go
    assert not b.allows(t + 100.0)  # however long it runs


def test_allows_does_not_reserve_the_trial():
    b, t = half_open_breaker()
    assert b.allows(t)
    assert b.allows(t)  # asking twice is not beginning


def test_trial_success_closes_the_breaker():
    b, t = half_open_breaker()
    b.begin(t)
    b.record(True, t + 1.0)
    assert b.state(t + 1.0) is BreakerState.CLOSED
    assert b.allows(t + 1.0)


def test_after_a_trial_success_it_takes_failures_fresh_failures_to_open_again():
    b, t = half_open_breaker()  # failures=3
    b.begin(t)
    b.record(True, t)
    b.record(False, t + 1.0)
    b.record(False, t + 1.0)
    assert b.state(t + 1.0) is BreakerState.CLOSED
    b.record(False, t + 1.0)
    assert b.state(t + 1.0) is BreakerState.OPEN


def test_trial_failure_reopens_with_a_fresh_cooldown():
    b, t = half_open_breaker()
    b.begin(t)
    failed_at = t + 2.0
    b.record(False, failed_at)
    assert b.state(failed_at) is BreakerState.OPEN
    assert not b.allows(failed_at + COOLDOWN - 0.001)
    assert b.state(failed_at + COOLDOWN) is BreakerState.HALF_OPEN
    assert b.allows(failed_at + COOLDOWN)  # the old trial no longer blocks the next one


def test_abandon_trial_lets_another_trial_through():
    b, t = half_open_breaker()
    b.begin(t)
    assert not b.allows(t)
    b.abandon_trial()
    assert b.state(t) is BreakerState.HALF_OPEN  # nothing learnt: still half-open
    assert b.allows(t)
    b.begin(t)
    assert not b.allows(t)


def test_state_values_are_the_display_strings():
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]
