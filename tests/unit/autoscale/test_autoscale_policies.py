from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from autoscale_support import MONDAY, demand

from clusterai.autoscale import (
    Predictive,
    Profile,
    Proposal,
    Reactive,
    Scheduled,
    Snapshot,
    TargetTracking,
    Window,
    combine,
)

pytestmark = pytest.mark.timeout(10)

HOUR, WEEK = 3600.0, 7 * 86400.0
CPU = Profile("cpu", concurrency=4, max=100)
GPU = Profile("gpu", resources={"GPU": 1}, max=10)


def snap(*demands, now: float = MONDAY, **signals) -> Snapshot:
    return Snapshot(now=now, demand=list(demands), **signals)


# -- target tracking ----------------------------------------------------------------------------

def test_target_tracking_drains_the_backlog_within_the_target() -> None:
    policy = TargetTracking(target_duration_s=30)
    # 100 queued x 3 s = 300 s of work: 10 slots, 3 workers of 4 slots
    proposal = policy.desired(snap(demand(queued=100, duration=3.0)), CPU, 0)
    assert proposal is not None and proposal.workers == 3
    assert "300s of work" in proposal.reason and "10 slots" in proposal.reason
    # running jobs count, and each kind uses its own measured duration: (10 x 6 + 20 x 1.5) / 30 = 3 slots
    mixed = snap(demand(queued=5, running=5, duration=6.0), demand(queued=20, duration=1.5, queue="b"))
    proposal = policy.desired(mixed, Profile("one"), 0)
    assert proposal is not None and proposal.workers == 3


def test_target_tracking_never_asks_more_slots_than_jobs() -> None:
    # two 1000 s jobs would need 67 slots by time, but two jobs use two slots at most (Dask does the same)
    proposal = TargetTracking(30).desired(snap(demand(queued=2, duration=1000.0)), Profile("one", max=100), 0)
    assert proposal is not None and proposal.workers == 2


def test_target_tracking_unknown_duration_and_nothing_to_do() -> None:
    policy = TargetTracking(target_duration_s=10, unknown_duration_s=0.5)
    proposal = policy.desired(snap(demand(queued=100, duration=None)), Profile("one", max=100), 5)
    assert proposal is not None and proposal.workers == 5  # 100 x 0.5 s / 10 s
    assert policy.desired(snap(), CPU, 7) == Proposal(0, "no runnable backlog")


def test_target_tracking_only_counts_demand_the_profile_can_run() -> None:
    policy = TargetTracking(30)
    gpu_work = demand(queued=60, duration=30.0, requires={"GPU": 1})
    proposal = policy.desired(snap(gpu_work), CPU, 2)
    assert proposal is not None and proposal.workers == 0
    proposal = policy.desired(snap(gpu_work), GPU, 2)
    assert proposal is not None and proposal.workers == 60  # the profile's max is the engine's to apply
    assert proposal.reason == "1800s of work over a 30s target needs 60 slots, 60 workers of 1"


# -- reactive -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("signals", "crossed"), [
    ({"cpu": 0.9}, "cpu 0.9 >= 0.8"),
    ({"memory": 0.86}, "memory 0.86 >= 0.85"),
    ({"latency_p95_s": 0.7}, "latency_p95_s 0.7 >= 0.5"),
])
def test_reactive_steps_up_when_any_signal_crosses_its_high_mark(signals: dict, crossed: str) -> None:
    proposal = Reactive().desired(snap(demand(queued=1, running=3), **signals), CPU, 4)
    assert proposal == Proposal(5, crossed)


def test_reactive_counts_the_runnable_queue() -> None:
    proposal = Reactive(queue_high=100, step=2).desired(snap(demand(queued=150)), CPU, 4)
    assert proposal == Proposal(6, "queue 150 >= 100")
    # the same queue, needing a GPU, is no reason to grow the CPU profile
    assert Reactive().desired(snap(demand(queued=150, requires={"GPU": 1})), CPU, 4) is None


def test_reactive_hysteresis_band() -> None:
    policy = Reactive()
    busy = demand(queued=20, running=4)
    assert policy.desired(snap(busy, cpu=0.5, memory=0.5), CPU, 4) == Proposal(4, "within the hysteresis band")
    # below cpu_high but above cpu_low: no change either way
    assert policy.desired(snap(busy, cpu=0.79), CPU, 4).workers == 4
    assert policy.desired(snap(busy, cpu=0.31), CPU, 4).workers == 4
    quiet = demand(queued=2, running=1)
    assert policy.desired(snap(quiet, cpu=0.1, memory=0.2, latency_p95_s=0.1), CPU, 4) == \
        Proposal(3, "every signal below its low mark")
    # one signal still in the band holds it
    assert policy.desired(snap(quiet, cpu=0.1, memory=0.7), CPU, 4).workers == 4
    assert policy.desired(snap(quiet, cpu=0.1), CPU, 0).workers == 0


def test_reactive_has_no_opinion_without_runnable_work() -> None:
    assert Reactive().desired(snap(cpu=0.95), CPU, 3) is None


# -- scheduled ----------------------------------------------------------------------------------

def test_scheduled_windows_set_a_minimum_while_active() -> None:
    policy = Scheduled([Window.of("0 8 * * 1-5", 10 * HOUR, 2), Window.hours("mon", "12-13", 5)])
    assert policy.desired(snap(now=MONDAY + 7 * HOUR), CPU, 0) is None
    morning = policy.desired(snap(now=MONDAY + 8 * HOUR), CPU, 0)
    assert morning == Proposal(2, "window '0 8 * * 1-5' for 36000s wants 2")
    assert policy.desired(snap(now=MONDAY + 12.5 * HOUR), CPU, 0).workers == 5  # the larger window wins
    assert policy.desired(snap(now=MONDAY + 13 * HOUR + 3599), CPU, 0).workers == 5
    assert policy.desired(snap(now=MONDAY + 14 * HOUR), CPU, 0).workers == 2
    assert policy.desired(snap(now=MONDAY + 18 * HOUR), CPU, 0) is None
    assert policy.desired(snap(now=MONDAY + 5 * 86400 + 9 * HOUR), CPU, 0) is None  # Saturday


def test_scheduled_evaluates_in_its_time_zone() -> None:
    utc_plus_2 = timezone(timedelta(hours=2))
    policy = Scheduled([Window.hours("*", "8", 1)], tz=utc_plus_2)
    assert policy.desired(snap(now=MONDAY + 6 * HOUR), CPU, 0) is not None  # 08:00 at UTC+2
    assert policy.desired(snap(now=MONDAY + 8 * HOUR), CPU, 0) is None


# -- predictive ---------------------------------------------------------------------------------

def monday_peaks(weeks: int, jobs: int = 20, duration: float = 900.0, hour: int = 9) -> list[tuple[float, float]]:
    """`jobs` jobs of `duration` s each Monday from `hour`:00, all ending within the hour."""
    step = (HOUR - duration) / jobs
    return [(MONDAY + w * WEEK + hour * HOUR + i * step, duration) for w in range(weeks) for i in range(jobs)]


def test_predictive_learns_a_recurring_peak_and_rises_one_lead_time_before_it() -> None:
    policy = Predictive(monday_peaks(weeks=4))  # 20 x 900 s in an hour: 5 busy slots
    profile = Profile("gpu", max=10, start_s=600)  # ten minutes to start and load the model
    fifth_monday = MONDAY + 4 * WEEK
    assert policy.expected_workers(fifth_monday + 9.5 * HOUR, concurrency=1) == 5
    assert policy.expected_workers(fifth_monday + 9.5 * HOUR, concurrency=2) == 3

    def wanted(seconds_after_midnight: float) -> int:
        proposal = policy.desired(snap(now=fifth_monday + seconds_after_midnight), profile, 0)
        assert proposal is not None
        return proposal.workers

    assert wanted(8 * HOUR + 49 * 60) == 0  # 11 minutes before the peak: more than the lead time
    assert wanted(8 * HOUR + 51 * 60) == 5  # 9 minutes before: the workers start now
    assert "within 600s (the lead time)" in policy.desired(snap(now=fifth_monday + 8.9 * HOUR), profile, 0).reason
    assert wanted(9 * HOUR + 59 * 60) == 5  # held through the peak
    assert wanted(10 * HOUR + 1) == 0
    assert wanted(-HOUR) == 0  # Sunday night: nothing recurs there
    # the lead time may be given instead of the profile's
    early = Predictive(monday_peaks(weeks=4), lead_s=2 * HOUR)
    assert early.desired(snap(now=fifth_monday + 6.9 * HOUR), profile, 0).workers == 0
    assert early.desired(snap(now=fifth_monday + 7.5 * HOUR), profile, 0).workers == 5
    # a lead longer than the peak does not step over it
    longer = Predictive(monday_peaks(weeks=4), lead_s=3 * HOUR)
    assert longer.desired(snap(now=fifth_monday + 7.5 * HOUR), profile, 0).workers == 5
    assert longer.desired(snap(now=fifth_monday + 5.9 * HOUR), profile, 0).workers == 0


def test_predictive_looks_one_decision_interval_further_than_the_lead() -> None:
    """A worker that starts in 2 s, decided every 60 s: the last round before 09:00 is up to a
    minute early, and must already see the peak."""
    profile = Profile("gpu", max=10, start_s=2)
    fifth_monday = MONDAY + 4 * WEEK
    blind = Predictive(monday_peaks(weeks=4))
    ticking = Predictive(monday_peaks(weeks=4), tick_s=60)
    at = fifth_monday + 9 * HOUR - 40  # the last round before the peak
    assert blind.desired(snap(now=at), profile, 0).workers == 0
    assert ticking.desired(snap(now=at), profile, 0).workers == 5


def test_predictive_smooths_each_hour_over_the_weeks() -> None:
    rows = monday_peaks(weeks=3, jobs=8) + monday_peaks(weeks=1, jobs=32)  # 2, 2, 2 then 8 slots...
    rows = [(t + (3 * WEEK if i >= 3 * 8 else 0), d) for i, (t, d) in enumerate(rows)]  # ...in week 4
    until = MONDAY + 3 * WEEK + 12 * HOUR  # the history runs to noon of the fourth Monday
    half = Predictive(alpha=0.5)
    half.learn(rows, until=until)
    assert half.buckets()[9] == pytest.approx(5.0)  # 0.5 x 8 + 0.5 x 2
    latest_only = Predictive(alpha=1.0)
    latest_only.learn(rows, until=until)
    assert latest_only.buckets()[9] == pytest.approx(8.0)
    # without `until`, the history ends with its last job, inside the fourth peak: that hour is not over
    assert Predictive(rows, alpha=0.5).buckets()[9] == pytest.approx(2.0)
    assert half.buckets()[10] == 0.0 and len(half.buckets()) == 168


def test_predictive_does_not_take_hours_not_lived_for_quiet_ones() -> None:
    policy = Predictive(alpha=0.5)
    assert policy.desired(snap(), GPU, 0) is None  # nothing learned: no opinion
    policy.learn(monday_peaks(weeks=2))
    assert policy.buckets()[9] == pytest.approx(5.0)
    # a third Monday morning at 09:00 is not over yet: it must not count as a quiet 09:00
    policy.learn([(MONDAY + 2 * WEEK + 8 * HOUR, 60.0)])
    assert policy.buckets()[9] == pytest.approx(5.0)
    # once the history says the hour has passed with nothing in it, it does count
    policy.learn([], until=MONDAY + 2 * WEEK + 11 * HOUR)
    assert policy.buckets()[9] == pytest.approx(2.5)


def test_predictive_splits_a_long_job_over_the_hours_it_ran() -> None:
    start = MONDAY + 9 * HOUR + 1800
    policy = Predictive()
    policy.learn([(start, 2 * HOUR)], until=start + 3 * HOUR)  # 09:30 to 11:30
    assert policy.buckets()[9:12] == pytest.approx([0.5, 1.0, 0.5])
    when = datetime.fromtimestamp(start, timezone.utc)
    assert when.weekday() == 0 and when.hour == 9


# -- combine ------------------------------------------------------------------------------------

def test_combine_takes_the_largest_and_names_the_policy() -> None:
    assert combine([("reactive", Proposal(3, "cpu")), ("target_tracking", Proposal(7, "backlog")),
                    ("scheduled", None)]) == Proposal(7, "target_tracking: backlog")
    assert combine([("a", Proposal(2, "x")), ("b", Proposal(2, "y"))]) == Proposal(2, "a: x")  # first wins a tie
    assert combine([("a", None)]) is None
    assert combine([]) is None
