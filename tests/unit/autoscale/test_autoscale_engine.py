from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from autoscale_support import MONDAY, FakeClock, ToyCluster, demand, directions, flips, idle_workers

from clusterai.autoscale import (
    AutoscaleConfigError,
    Autoscaler,
    DecisionRecord,
    Predictive,
    Profile,
    Proposal,
    Reactive,
    Snapshot,
    TargetTracking,
    WorkerView,
    choose_to_retire,
)

pytestmark = pytest.mark.timeout(10)


@dataclass
class Fixed:
    """A policy that proposes whatever the test sets."""

    workers: int | None
    name: str = "fixed"

    def desired(self, snapshot: Snapshot, profile: Profile, current: int) -> Proposal | None:
        return None if self.workers is None else Proposal(self.workers, f"asked for {self.workers}")


def workers_of(profile: str, n: int, **kw) -> list[WorkerView]:
    return [WorkerView(f"{profile}-{i}", profile, **kw) for i in range(n)]


def decide(scaler: Autoscaler, profile: str, current: int, *demands, **kw):
    snapshot = Snapshot(now=MONDAY, demand=list(demands), workers=workers_of(profile, current), **kw)
    return scaler.decide(snapshot).of(profile)


def test_clamps_to_the_profile_bounds(clock: FakeClock) -> None:
    policy = Fixed(50)
    scaler = Autoscaler([Profile("p", min=2, max=6)], [policy], max_step=100, clock=clock)
    decision = decide(scaler, "p", 3)
    assert (decision.current, decision.desired) == (3, 6)
    assert "clamped to 6 (bounds 2..6)" in decision.reason and decision.reason.startswith("fixed: asked for 50")
    clock.advance(1000)
    policy.workers = 0
    assert decide(scaler, "p", 6).desired == 2


def test_limits_each_change_to_max_step(clock: FakeClock) -> None:
    scaler = Autoscaler([Profile("p", max=100)], [Fixed(20)], max_step=4, up_cooldown_s=0, clock=clock)
    decision = decide(scaler, "p", 0)
    assert decision.desired == 4 and "step limited to 4" in decision.reason
    assert decide(scaler, "p", 4).desired == 8
    down = Autoscaler([Profile("p", max=100)], [Fixed(0)], max_step=3, down_cooldown_s=0, clock=clock)
    assert decide(down, "p", 10).desired == 7


def test_cooldowns_are_per_direction_and_a_reversal_waits_the_down_cooldown(clock: FakeClock) -> None:
    policy = Fixed(5)
    scaler = Autoscaler([Profile("p", max=10)], [policy], up_cooldown_s=30, down_cooldown_s=120,
                        max_step=1, clock=clock)
    assert decide(scaler, "p", 0).desired == 1  # up
    clock.advance(29)
    held = decide(scaler, "p", 1)
    assert held.desired == 1 and held.reason.startswith("up cooldown, 1s left (wanted 2")
    clock.advance(1)
    assert decide(scaler, "p", 1).desired == 2  # 30 s after the last up
    policy.workers = 0
    clock.advance(119)
    reversal = decide(scaler, "p", 2)
    assert reversal.desired == 2 and reversal.reason.startswith("down cooldown, 1s left (wanted 1")
    assert reversal.inputs["cooldown_left_s"] == pytest.approx(1.0)
    clock.advance(1)
    assert decide(scaler, "p", 2).desired == 1  # 120 s after the last up
    clock.advance(119)
    assert decide(scaler, "p", 1).desired == 1  # downs are 120 s apart too
    clock.advance(1)
    assert decide(scaler, "p", 1).desired == 0
    policy.workers = 3
    clock.advance(30)
    assert decide(scaler, "p", 0).desired == 1  # growing again only waits the up cooldown


def test_restoring_bounds_ignores_cooldowns(clock: FakeClock) -> None:
    scaler = Autoscaler([Profile("p", min=3, max=5)], [Fixed(4)], max_step=10, clock=clock)
    assert decide(scaler, "p", 3).desired == 4
    died = decide(scaler, "p", 1)  # two workers died: back to min at once, the rest after the cooldown
    assert died.desired == 3 and died.reason.startswith("back within bounds 3..5; up cooldown")
    assert decide(scaler, "p", 8).desired == 5  # max was lowered: down to it at once
    assert decide(scaler, "p", 4).desired == 4  # within bounds, the cooldown holds


def test_a_flip_flopping_policy_is_damped_by_the_cooldowns(clock: FakeClock) -> None:
    policy = Fixed(10)
    scaler = Autoscaler([Profile("p", max=10)], [policy], up_cooldown_s=30, down_cooldown_s=120,
                        max_step=10, clock=clock)
    current, changes = 0, []
    for tick in range(120):  # ten minutes of a policy that changes its mind every 5 s
        policy.workers = 10 if tick % 2 == 0 else 0
        decision = decide(scaler, "p", current)
        if decision.delta:
            changes.append((clock.t, decision.delta))
        current = decision.desired
        clock.advance(5)
    times = [t for t, _ in changes]
    gaps = [(b - a, delta) for (a, _), (b, delta) in zip(changes, changes[1:])]
    assert len(changes) >= 4, changes  # it still follows, slowly
    assert all(gap >= (120 if delta < 0 else 30) for gap, delta in gaps), gaps
    assert len(times) <= 8  # an up and a down take 150 s at least: 8 changes in 600 s at most, not 120


def square_wave(policies, *, up: float, down: float, seed: int, period: float = 600.0,
                periods: int = 4) -> tuple[list[int], ToyCluster]:
    """Direction changes in each period of noisy on/off demand (the ups that begin a period count
    in it), on a toy cluster whose workers drain the backlog."""
    rnd = random.Random(seed)
    clock = FakeClock()
    profile = Profile("p", max=10)
    cluster = ToyCluster(Autoscaler([profile], policies, up_cooldown_s=up, down_cooldown_s=down, max_step=4,
                                    clock=clock), profile, clock)
    start = clock.t
    while clock.t < start + period * periods:
        on = (clock.t - start) % period < period / 2
        cluster.tick(rnd.uniform(1.0, 3.0) if on else 0.0)  # 2 jobs/s of 3 s: about 6 busy slots
    moves = [(int((t - start) // period), d) for t, d in cluster.history if d.delta]
    per_period = [0] * periods
    for (k, now), (_, before) in zip(moves[1:], moves):
        per_period[k] += flips(directions([before, now]))
    return per_period, cluster


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_square_wave_demand_changes_direction_at_most_twice_a_period(seed: int) -> None:
    per_period, cluster = square_wave([TargetTracking(30), Reactive()], up=30, down=120, seed=seed)
    assert max(per_period) <= 2, per_period
    sizes = [d.desired for _, d in cluster.history]
    quarter = len(sizes) // 8  # ticks in a half period
    for k in range(4):  # it does follow the wave: up in each on half, down in each off half
        on, off = sizes[2 * k * quarter:(2 * k + 1) * quarter], sizes[(2 * k + 1) * quarter:(2 * k + 2) * quarter]
        assert max(on) >= 6 and min(off) <= 2, (k, on, off)


def test_the_square_wave_does_flap_without_hysteresis_or_cooldowns() -> None:
    # the control: the scenario above is hard enough to break the bound when nothing damps it
    per_period, _ = square_wave([TargetTracking(30)], up=0, down=0, seed=1)
    assert max(per_period) > 2, per_period


def test_demand_no_profile_can_run_is_reported_not_scaled_for(clock: FakeClock) -> None:
    scaler = Autoscaler([Profile("cpu", max=10)], [TargetTracking(30)], clock=clock)
    tpu = demand(queued=40, duration=30.0, requires={"TPU": 1}, queue="tpu")
    plan = scaler.decide(Snapshot(now=MONDAY, demand=[tpu, demand(queued=0)]))
    assert plan.unschedulable == [tpu]
    assert plan.of("cpu").desired == 0 and len(plan) == 1 and list(plan)[0] is plan[0]


def test_each_demand_goes_to_the_first_profile_that_can_run_it(clock: FakeClock) -> None:
    profiles = [Profile("cpu", max=10), Profile("gpu", resources={"GPU": 1}, max=10)]
    scaler = Autoscaler(profiles, [TargetTracking(30)], max_step=10, clock=clock)
    plan = scaler.decide(Snapshot(now=MONDAY, demand=[
        demand(queued=90, duration=1.0),  # both can run it: the cpu profile takes it
        demand(queued=60, duration=1.0, requires={"GPU": 1}, queue="gpu")]))
    assert (plan.of("cpu").desired, plan.of("gpu").desired) == (3, 2)
    assert plan.of("cpu").inputs["queued"] == 90 and plan.of("gpu").inputs["queued"] == 60


def test_policies_may_apply_to_some_profiles_only(clock: FakeClock) -> None:
    profiles = [Profile("a", max=10), Profile("b", max=10)]
    scaler = Autoscaler(profiles, {"a": [Fixed(3)]}, clock=clock)
    plan = scaler.decide(Snapshot(now=MONDAY))
    assert (plan.of("a").desired, plan.of("b").desired) == (3, 0)
    with pytest.raises(AutoscaleConfigError, match="unknown profiles"):
        Autoscaler(profiles, {"c": [Fixed(1)]})


def test_an_idle_profile_without_demand_scales_towards_min(clock: FakeClock) -> None:
    scaler = Autoscaler([Profile("p", min=1, max=10)], [Reactive()], max_step=4, clock=clock)
    snapshot = Snapshot(now=MONDAY, workers=idle_workers("p", 8), cpu=0.5)  # other profiles keep cpu up
    decision = scaler.decide(snapshot).of("p")
    assert (decision.desired, decision.reason) == (4, "idle: no runnable demand; step limited to 4")
    # a busy worker (its job's queue not in the snapshot yet) holds it
    busy = Snapshot(now=MONDAY, workers=[*idle_workers("p", 7), WorkerView("x", "p", busy=1)])
    assert scaler.decide(busy).of("p").desired == 8


def test_draining_workers_are_not_counted(clock: FakeClock) -> None:
    scaler = Autoscaler([Profile("p", max=10)], [Fixed(3)], clock=clock)
    workers = [*workers_of("p", 3), WorkerView("old", "p", busy=1, draining=True), WorkerView("static", None)]
    decision = scaler.decide(Snapshot(now=MONDAY, workers=workers)).of("p")
    assert (decision.current, decision.desired, decision.inputs["draining"]) == (3, 3, 1)


def test_the_decision_log_keeps_the_last_changes(clock: FakeClock) -> None:
    policy = Fixed(0)
    scaler = Autoscaler([Profile("p", max=100)], [policy], up_cooldown_s=0, max_step=100, clock=clock,
                        log_size=3)
    for n in range(1, 6):
        policy.workers = n
        decide(scaler, "p", n - 1)
    decide(scaler, "p", 5)  # a hold is not logged
    assert [(r.from_, r.to) for r in scaler.log] == [(2, 3), (3, 4), (4, 5)]
    assert scaler.log[-1].at == MONDAY and scaler.log[-1].reason == "fixed: asked for 5"
    assert scaler.log[-1].inputs["proposals"] == {"fixed": {"workers": 5, "reason": "asked for 5"}}
    assert DecisionRecord.from_row(scaler.log[-1].to_row()) == scaler.log[-1]


def test_measured_start_time_becomes_the_lead_time(clock: FakeClock) -> None:
    profile = Profile("gpu", max=4, start_s=600)
    scaler = Autoscaler([profile], [Fixed(None)], clock=clock)
    assert scaler.start_s(profile) == 600
    scaler.decide(Snapshot(now=MONDAY, workers=[WorkerView("w1", "gpu", started=False)]))
    clock.advance(90)
    decision = scaler.decide(Snapshot(now=MONDAY, workers=[WorkerView("w1", "gpu", started=True)])).of("gpu")
    assert scaler.start_s(profile) == pytest.approx(90)
    scaler.decide(Snapshot(now=MONDAY, workers=[WorkerView("w2", "gpu", started=False)]))
    clock.advance(190)
    scaler.decide(Snapshot(now=MONDAY, workers=[WorkerView("w2", "gpu", started=True)]))
    assert scaler.start_s(profile) == pytest.approx(0.3 * 190 + 0.7 * 90)
    assert decision.inputs["start_s"] == pytest.approx(90)


def test_predictive_through_the_engine_starts_workers_a_lead_time_early(clock: FakeClock) -> None:
    hour, week = 3600.0, 7 * 86400.0
    rows = [(MONDAY + w * week + 9 * hour + i * 60, 600.0) for w in range(3) for i in range(24)]  # 4 slots
    scaler = Autoscaler([Profile("gpu", max=8, start_s=900)], [Predictive(rows)], max_step=8, clock=clock)
    monday = MONDAY + 3 * week
    early = scaler.decide(Snapshot(now=monday + 8 * hour + 40 * 60)).of("gpu")
    assert early.desired == 0
    ready = scaler.decide(Snapshot(now=monday + 8 * hour + 46 * 60)).of("gpu")
    assert ready.desired == 4 and ready.reason.startswith("predictive: history expects 4 workers within 900s")


def test_rejects_bad_engine_settings() -> None:
    with pytest.raises(AutoscaleConfigError, match="unique"):
        Autoscaler([Profile("p"), Profile("p")], [])
    with pytest.raises(AutoscaleConfigError, match="max_step"):
        Autoscaler([Profile("p")], [], max_step=0)


# -- choose_to_retire ---------------------------------------------------------------------------

def test_retires_unstarted_then_longest_idle_then_drains_busy() -> None:
    workers = [
        WorkerView("busy-2", "p", busy=2), WorkerView("idle-new", "p", idle_since=900.0),
        WorkerView("booting", "p", started=False), WorkerView("idle-old", "p", idle_since=100.0),
        WorkerView("busy-1", "p", busy=1), WorkerView("idle-unknown", "p"),
    ]
    assert choose_to_retire(workers, 1).stop_now == ["booting"]
    three = choose_to_retire(workers, 3)
    assert (three.stop_now, three.drain) == (["booting", "idle-old", "idle-new"], [])
    five = choose_to_retire(workers, 5)
    assert five.stop_now == ["booting", "idle-old", "idle-new", "idle-unknown"]
    assert five.drain == ["busy-1"]  # the one that will be done soonest
    everything = choose_to_retire(workers, 100)
    assert everything.drain == ["busy-1", "busy-2"] and len(everything.stop_now) == 4
    assert choose_to_retire(workers, 0) == choose_to_retire(workers, -1)


def test_never_stops_a_busy_worker() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        workers = [WorkerView(f"w{i}", "p", busy=rnd.choice([0, 0, 1, 3]), started=rnd.random() > 0.2,
                              draining=rnd.random() < 0.2, idle_since=rnd.choice([None, rnd.random() * 1e3]))
                   for i in range(rnd.randint(0, 12))]
        count = rnd.randint(0, 14)
        result = choose_to_retire(workers, count)
        by_name = {w.name: w for w in workers}
        assert all(by_name[n].busy == 0 for n in result.stop_now)
        assert all(by_name[n].busy > 0 and not by_name[n].draining for n in result.drain)
        chosen = [n for n in result.stop_now if not by_name[n].draining] + result.drain
        assert len(chosen) == min(count, sum(1 for w in workers if not w.draining))
        assert len(set(result.stop_now) | set(result.drain)) == len(result.stop_now) + len(result.drain)


def test_finished_drains_are_stopped_and_static_workers_never() -> None:
    workers = [WorkerView("drained", "p", draining=True), WorkerView("draining", "p", busy=1, draining=True),
               WorkerView("static", None), WorkerView("idle", "p", idle_since=5.0)]
    result = choose_to_retire(workers, 0)
    assert (result.stop_now, result.drain) == (["drained"], [])
    assert choose_to_retire(workers, 5).stop_now == ["drained", "idle"]


def test_start_time_is_measured_from_the_launch_even_within_one_round(clock: FakeClock) -> None:
    profile = Profile("gpu", max=4, start_s=600)
    scaler = Autoscaler([profile], [Fixed(None)], clock=clock)
    # registered before any round saw it unstarted: the provider's launch time still measures it
    scaler.decide(Snapshot(now=MONDAY + 1.5, workers=[WorkerView("w1", "gpu", started=True, launched_at=MONDAY)]))
    assert scaler.start_s(profile) == pytest.approx(1.5)
    scaler.decide(Snapshot(now=MONDAY + 9, workers=[WorkerView("w1", "gpu", started=True, launched_at=MONDAY)]))
    assert scaler.start_s(profile) == pytest.approx(1.5), "a worker is measured once"
