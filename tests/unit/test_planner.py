"""clusterai.placement.planner: batch sizes, hard constraints, breakers, rooms, suspects, reasons."""

from __future__ import annotations

import pytest
from placement_support import NOW, TASK, make_job, make_jobs, make_slot

from clusterai.core.model import Priority
from clusterai.placement.breaker import CircuitBreaker
from clusterai.placement.planner import SHORT_SECONDS, Planner
from clusterai.placement.strategies import LeastLoaded, RoundRobin, make_strategy


def planner(**kwargs) -> Planner:
    return Planner({}, LeastLoaded(), **kwargs)


def short_planner(seconds: float = 0.001, **kwargs) -> Planner:
    """A planner that has seen TASK take `seconds` per job."""
    p = planner(**kwargs)
    p.observe(TASK, seconds)
    return p


def sizes(plan) -> list[int]:
    return [len(b.jobs) for b in plan.batches]


def ids(batch) -> list[int]:
    return [j.id for j in batch.jobs]


def placed(plan) -> dict[int, str]:
    """job id -> name of the worker it was placed on."""
    return {j.id: b.slot.name for b in plan.batches for j in b.jobs}


def open_breaker(at: float = NOW - 1.0, cooldown: float = 30.0) -> CircuitBreaker:
    b = CircuitBreaker(failures=1, cooldown=cooldown)
    b.record(False, at)
    return b


# -- batch sizes -----------------------------------------------------------------------------------


def test_an_unknown_task_runs_in_batches_of_one():
    p = planner()
    assert p.size_for(TASK) == 1
    assert not p.is_short(TASK)
    plan = p.plan(make_jobs(3), [make_slot("a", nthreads=4)], NOW)
    assert sizes(plan) == [1, 1, 1]


def test_a_one_millisecond_task_runs_in_batches_of_twenty():
    p = short_planner(0.001, batch_target_seconds=0.02)
    assert p.size_for(TASK) == 20
    assert p.is_short(TASK)
    plan = p.plan(make_jobs(25), [make_slot("a", nthreads=4)], NOW)
    assert sizes(plan) == [20, 5]
    assert ids(plan.batches[0]) == list(range(1, 21))  # in the order given


def test_batch_size_follows_the_batch_target():
    assert short_planner(0.001, batch_target_seconds=0.1).size_for(TASK) == 100
    assert short_planner(0.01, batch_target_seconds=0.02).size_for(TASK) == 2


def test_batch_size_is_capped_at_max_batch():
    p = short_planner(1e-5, max_batch=5)
    assert p.size_for(TASK) == 5
    assert sizes(p.plan(make_jobs(12), [make_slot("a", nthreads=4)], NOW)) == [5, 5, 2]


def test_an_instant_task_is_still_capped():
    assert short_planner(0.0, max_batch=500).size_for(TASK) == 500


def test_a_task_slower_than_the_target_runs_alone():
    p = short_planner(0.5)
    assert p.size_for(TASK) == 1
    assert not p.is_short(TASK)


def test_durations_are_a_moving_average():
    p = short_planner(0.001)
    p.observe(TASK, 0.011)  # 0.2 * 0.011 + 0.8 * 0.001 = 0.003
    assert p.duration[TASK] == pytest.approx(0.003)
    assert p.size_for(TASK) == 6
    assert p.size_for("unit.other") == 1  # per task


def test_short_means_faster_than_the_threshold():
    assert short_planner(SHORT_SECONDS * 0.99).is_short(TASK)
    assert not short_planner(SHORT_SECONDS).is_short(TASK)


def test_jobs_with_different_queues_labels_or_preferences_are_not_batched_together():
    p = short_planner()
    jobs = [
        make_job(1, queue="a"),
        make_job(2, queue="b"),
        make_job(3, queue="a"),
        make_job(4, queue="a", labels={"region": "eu"}),
        make_job(5, queue="a", prefers={"model": "m"}),
        make_job(6, queue="a", task="unit.other"),
        make_job(7, queue="a", labels={"region": "eu"}),
    ]
    plan = p.plan(jobs, [make_slot("w", nthreads=8, labels={"region": "eu"})], NOW)
    assert sorted(ids(b) for b in plan.batches) == [[1, 3], [2], [4, 7], [5], [6]]


def test_jobs_that_require_resources_are_never_batched():
    p = short_planner()
    plan = p.plan(make_jobs(2, resources={"GPU": 1}), [make_slot("g", nthreads=4, resources={"GPU": 2})], NOW)
    assert sizes(plan) == [1, 1]


# -- hard constraints ------------------------------------------------------------------------------


def test_a_label_is_a_hard_constraint():
    us = make_slot("us", nthreads=4, labels={"region": "us"})
    eu = make_slot("eu", nthreads=4, labels={"region": "eu"}, jobs=9)  # busier: load alone picks us
    plan = planner().plan([*make_jobs(3, labels={"region": "eu"}), make_job(4)], [us, eu], NOW)
    assert placed(plan) == {1: "eu", 2: "eu", 3: "eu", 4: "us"}


def test_a_gpu_job_goes_only_to_a_gpu_worker_and_holds_its_gpu():
    cpu = make_slot("cpu", nthreads=4)
    gpu = make_slot("gpu", nthreads=4, resources={"GPU": 1}, jobs=9)
    p = planner()
    first, second = make_job(1, resources={"GPU": 1}), make_job(2, resources={"GPU": 1})

    plan = p.plan([first, second], [cpu, gpu], NOW)
    assert placed(plan) == {1: "gpu"}
    assert gpu.in_use == {"GPU": 1.0}
    assert plan.waiting[2].startswith("waiting for free resources")
    assert "GPU" in plan.waiting[2]

    assert p.plan([second], [cpu, gpu], NOW).batches == []  # still held

    plan.batches[0].release()
    assert gpu.in_use == {"GPU": 0.0}
    assert placed(p.plan([second], [cpu, gpu], NOW)) == {2: "gpu"}


def test_a_job_needing_two_gpus_fits_beside_nothing_on_a_two_gpu_box():
    box = make_slot("box", nthreads=4, resources={"GPU": 2})
    plan = planner().plan([make_job(1, resources={"GPU": 1}), make_job(2, resources={"GPU": 2}),
                           make_job(3, resources={"GPU": 1})], [box], NOW)
    assert placed(plan) == {1: "box", 3: "box"}
    assert box.in_use == {"GPU": 2.0}


def test_a_worker_that_does_not_accept_the_queue_gets_nothing():
    only_gpu = make_slot("g", nthreads=4, accepts=frozenset({"gpu"}))
    plan = planner().plan([make_job(1), make_job(2, queue="gpu"), make_job(3, task="gpu")], [only_gpu], NOW)
    assert placed(plan) == {2: "g", 3: "g"}
    assert "does not take queue 'default'" in plan.waiting[1]


# -- why jobs wait ---------------------------------------------------------------------------------


def test_no_worker_can_run_it_names_the_mismatch():
    slots = [make_slot("w-eu", nthreads=4, labels={"region": "eu"}),
             make_slot("w-us", nthreads=4, labels={"region": "us"})]
    plan = planner().plan([make_job(1, labels={"region": "ap"})], slots, NOW)
    assert plan.batches == []
    reason = plan.waiting[1]
    assert reason.startswith("no current worker can run it")
    assert "w-eu has region=eu, job needs region=ap" in reason
    assert "w-us has region=us, job needs region=ap" in reason


def test_no_worker_has_enough_of_a_resource():
    plan = planner().plan([make_job(1, resources={"GPU": 2})], [make_slot("g", resources={"GPU": 1})], NOW)
    assert plan.waiting[1] == "no current worker can run it: g has GPU=1, job needs 2"


def test_no_workers_at_all():
    plan = planner().plan(make_jobs(2), [], NOW)
    assert plan.batches == []
    assert plan.waiting[1] == "no workers have joined the cluster yet"


def test_gone_workers_do_not_count():
    plan = planner().plan([make_job(1)], [make_slot("a", status="gone")], NOW)
    assert plan.waiting[1] == "no workers have joined the cluster yet"


def test_all_breakers_open_means_no_batches():
    slots = [make_slot("a", nthreads=4, breaker=open_breaker()),
             make_slot("b", nthreads=4, breaker=open_breaker())]
    plan = planner().plan(make_jobs(3), slots, NOW)
    assert plan.batches == []
    assert set(plan.waiting) == {1, 2, 3}
    assert plan.waiting[1] == "circuit breakers are open on every worker that can run it (a, b)"


def test_an_open_breaker_for_one_task_blocks_only_that_task():
    slot = make_slot("a", nthreads=4)
    for _ in range(5):  # the default threshold, inherited from the worker's breaker
        slot.breaker_for(TASK).record(False, NOW - 1.0)
    plan = planner().plan([make_job(1), make_job(2, task="unit.other")], [slot], NOW)
    assert placed(plan) == {2: "a"}
    assert plan.waiting[1].startswith("circuit breakers are open")


def test_open_breakers_on_some_workers_send_work_to_the_others():
    slots = [make_slot("a", nthreads=4, breaker=open_breaker()), make_slot("b", nthreads=4, jobs=9)]
    assert set(placed(planner().plan(make_jobs(3), slots, NOW)).values()) == {"b"}


def test_every_able_worker_draining():
    slots = [make_slot("a", nthreads=4, status="draining"), make_slot("b", nthreads=4, status="draining")]
    plan = planner().plan([make_job(1)], slots, NOW)
    assert plan.batches == []
    assert plan.waiting[1] == "every worker that can run it is draining"


def test_every_able_worker_busy():
    p = planner()
    slot = make_slot("a", nthreads=1)
    assert placed(p.plan([make_job(1)], [slot], NOW)) == {1: "a"}
    plan = p.plan([make_job(2)], [slot], NOW)
    assert plan.batches == []
    assert plan.waiting[2] == "every worker that can run it is busy"


def test_held_back_by_the_strategy():
    p = Planner({}, make_strategy("priority", reserve=1))
    plan = p.plan([make_job(1, priority=Priority.LOW), make_job(2, priority=Priority.HIGH)],
                  [make_slot("a", nthreads=1)], NOW)
    assert placed(plan) == {2: "a"}
    assert plan.waiting[1] == "held back by the priority strategy (capacity reserved for higher priority)"


def test_explain_limit_caps_the_reasons():
    plan = planner(explain_limit=2).plan(make_jobs(5, labels={"region": "ap"}), [make_slot("a")], NOW)
    assert len(plan.waiting) == 2


# -- breakers: half-open trials --------------------------------------------------------------------


def test_a_half_open_breaker_lets_exactly_one_trial_batch_through():
    slot = make_slot("a", nthreads=4, breaker=open_breaker(at=NOW - 60.0, cooldown=30.0))
    p = planner()
    plan = p.plan(make_jobs(3), [slot], NOW)
    assert sizes(plan) == [1]
    assert plan.batches[0].trial
    assert slot.breaker.trial_running
    assert plan.waiting[2].startswith("circuit breakers are open")
    assert p.plan(make_jobs(2, first_id=10), [slot], NOW).batches == []  # while the trial runs


def test_an_abandoned_trial_lets_the_next_plan_try_again():
    slot = make_slot("a", nthreads=4, breaker=open_breaker(at=NOW - 60.0, cooldown=30.0))
    p = planner()
    first = p.plan(make_jobs(2), [slot], NOW).batches[0]
    first.release()
    slot.breaker.abandon_trial()
    again = p.plan(make_jobs(2, first_id=10), [slot], NOW)
    assert sizes(again) == [1]
    assert again.batches[0].trial


def test_a_successful_trial_closes_the_breaker_and_work_flows_again():
    slot = make_slot("a", nthreads=4, breaker=open_breaker(at=NOW - 60.0, cooldown=30.0))
    p = planner()
    p.plan(make_jobs(1), [slot], NOW).batches[0].release()
    slot.breaker.record(True, NOW)
    plan = p.plan(make_jobs(3, first_id=10), [slot], NOW)
    assert sizes(plan) == [1, 1, 1]
    assert not any(b.trial for b in plan.batches)


def test_a_half_open_task_breaker_makes_a_trial_of_that_task_only():
    slot = make_slot("a", nthreads=4, breaker=CircuitBreaker(failures=1, cooldown=30.0))
    slot.breaker_for(TASK).record(False, NOW - 60.0)
    plan = planner().plan([make_job(1, task="unit.other"), make_job(2), make_job(3)], [slot], NOW)
    assert placed(plan) == {1: "a", 2: "a"}
    assert [b.trial for b in plan.batches] == [False, True]
    assert slot.task_breakers[TASK].trial_running
    assert not slot.breaker.trial_running


def test_closed_breakers_make_no_trials():
    plan = planner().plan(make_jobs(2), [make_slot("a", nthreads=4)], NOW)
    assert [b.trial for b in plan.batches] == [False, False]


# -- strategies per queue --------------------------------------------------------------------------


def test_each_queue_uses_its_own_strategy():
    p = Planner({"gpu": RoundRobin()}, LeastLoaded())
    a, b = make_slot("a", nthreads=8), make_slot("b", nthreads=8, jobs=5)
    jobs = [make_job(1, queue="gpu"), make_job(2), make_job(3, queue="gpu"), make_job(4, queue="gpu"),
            make_job(5)]
    plan = p.plan(jobs, [b, a], NOW)
    assert placed(plan) == {1: "a", 2: "a", 3: "b", 4: "a", 5: "a"}
    assert {j.id: batch.strategy for batch in plan.batches for j in batch.jobs} == {
        1: "round_robin", 2: "least_loaded", 3: "round_robin", 4: "round_robin", 5: "least_loaded"}
    assert p.strategy_for("gpu").name == "round_robin"
    assert p.strategy_for("anything") is p.default


# -- suspect jobs ----------------------------------------------------------------------------------


def test_a_suspect_job_goes_alone_to_an_idle_worker_and_isolates_it():
    busy = make_slot("busy", nthreads=8, calls=1)
    idle = make_slot("idle", nthreads=8, jobs=3)  # least loaded would not pick it for plain work
    p = short_planner()  # short: plain jobs would be batched
    jobs = [make_job(1, lost_count=1), *make_jobs(3, first_id=2)]
    plan = p.plan(jobs, [busy, idle], NOW)
    suspect = next(b for b in plan.batches if b.suspect)
    assert ids(suspect) == [1]
    assert suspect.slot is idle
    assert idle.isolated
    assert placed(plan) == {1: "idle", 2: "busy", 3: "busy", 4: "busy"}


def test_two_suspects_are_not_batched_and_need_two_idle_workers():
    p = short_planner()
    plan = p.plan(make_jobs(2, lost_count=1), [make_slot("a", nthreads=8)], NOW)
    assert sizes(plan) == [1]
    assert plan.waiting[2] == "every worker that can run it is busy"


def test_a_suspect_waits_for_a_worker_with_nothing_in_flight():
    plan = planner().plan([make_job(1, lost_count=2)], [make_slot("a", nthreads=8, calls=1)], NOW)
    assert plan.batches == []


def test_nothing_joins_an_isolated_worker_until_its_suspect_batch_is_released():
    slot = make_slot("a", nthreads=8)
    p = planner()
    suspect = p.plan([make_job(1, lost_count=1)], [slot], NOW).batches[0]
    assert p.plan(make_jobs(2, first_id=10), [slot], NOW).batches == []
    suspect.release()
    assert not slot.isolated
    assert sizes(p.plan(make_jobs(2, first_id=20), [slot], NOW)) == [1, 1]


# -- rooms -----------------------------------------------------------------------------------------


def test_a_long_job_never_waits_behind_a_batch_on_a_full_worker():
    p = planner()  # unknown duration: long
    slot = make_slot("a", nthreads=1)
    plan = p.plan(make_jobs(2), [slot], NOW)
    assert sizes(plan) == [1]
    assert slot.calls == 1 and slot.long_calls == 1


def test_a_long_job_is_not_placed_behind_a_short_batch_either():
    p = short_planner(max_batch=1)
    slot = make_slot("a", nthreads=1)
    assert sizes(p.plan([make_job(1)], [slot], NOW)) == [1]  # short batch running
    assert p.plan([make_job(2, task="unit.slow")], [slot], NOW).batches == []


def test_short_batches_may_prefetch_one_batch_per_worker():
    p = short_planner(max_batch=1)  # short, one job per batch
    slot = make_slot("a", nthreads=1)
    plan = p.plan(make_jobs(3), [slot], NOW)
    assert sizes(plan) == [1, 1]  # one running, one waiting on the worker
    assert plan.waiting[3] == "every worker that can run it is busy"


def test_no_prefetch_behind_a_long_batch():
    p = short_planner(max_batch=1)
    slot = make_slot("a", nthreads=1)
    assert sizes(p.plan([make_job(1, task="unit.slow")], [slot], NOW)) == [1]
    assert p.plan([make_job(2)], [slot], NOW).batches == []


def test_release_gives_the_room_back():
    p = planner()
    slot = make_slot("a", nthreads=1)
    batch = p.plan([make_job(1)], [slot], NOW).batches[0]
    batch.release()
    assert (slot.calls, slot.long_calls) == (0, 0)
    assert sizes(p.plan([make_job(2)], [slot], NOW)) == [1]


def test_the_first_jobs_in_the_list_get_the_free_rooms():
    slots = [make_slot("a", nthreads=1), make_slot("b", nthreads=1)]
    jobs = [make_job(5), make_job(2), make_job(9), make_job(1)]
    plan = planner().plan(jobs, slots, NOW)
    assert sorted(placed(plan)) == [2, 5]
    assert 9 in plan.waiting


def test_the_given_order_wins_over_priority():
    # the planner trusts the order it is given (the store sorts by priority); it does not re-sort
    jobs = [make_job(1, priority=Priority.LOW), make_job(2, priority=Priority.CRITICAL)]
    plan = planner().plan(jobs, [make_slot("a", nthreads=1)], NOW)
    assert list(placed(plan)) == [1]


# -- fetch limit -----------------------------------------------------------------------------------


def test_fetch_limit_counts_free_rooms_of_ready_workers():
    slots = [make_slot("a", nthreads=2), make_slot("b", nthreads=1, calls=1),
             make_slot("c", nthreads=4, status="draining"), make_slot("d", nthreads=4, status="joining")]
    # rooms: 3 on a, 1 on b (both with the one a worker may prefetch into); but enough to tell
    # whether the queue is deep: a's 2 idle rooms and 2 per ready worker
    assert planner().fetch_limit(slots) == max(3 + 1, 2 + 2 * 2) + 16


def test_fetch_limit_scales_with_the_largest_learnt_batch():
    p = short_planner(0.001)
    p.observe("unit.slow", 1.0)
    assert p.fetch_limit([make_slot("a", nthreads=1)]) == 2 * 20 + 16


@pytest.mark.parametrize(
    "slots",
    [
        [],
        [make_slot("a", nthreads=1, calls=2)],
        [make_slot("a", nthreads=2, status="draining"), make_slot("b", status="unresponsive")],
    ],
    ids=["no workers", "full", "not ready"],
)
def test_fetch_limit_is_zero_when_no_ready_worker_has_room(slots):
    assert planner().fetch_limit(slots) == 0


def test_fetch_limit_is_zero_when_the_only_worker_takes_nothing_more():
    slot = make_slot("a", nthreads=1, calls=1, isolated=True)  # running a suspect job alone
    assert not slot.has_room(True) and not slot.has_room(False) and not slot.has_room(False, prefetch=True)
    assert planner().fetch_limit([slot]) == 0


def test_a_job_waits_behind_a_long_one_only_when_the_queue_is_deep():
    def busy():
        return make_slot("a", nthreads=1, calls=1, jobs=1, long_calls=1)

    assert not busy().has_room(True) and busy().has_room(False, prefetch=True)
    p = planner()
    p.observe("unit.t", 5.0)  # long: one job per batch
    assert p.fetch_limit([busy()]) == 0 + 2 * 1 + 16  # enough rows to tell whether the queue is deep
    shallow = p.plan(make_jobs(1), [busy()], NOW)
    assert shallow.batches == []  # one job: it may yet go to a worker that frees up first
    slot = busy()
    deep = p.plan(make_jobs(2), [slot], NOW)
    assert [len(b.jobs) for b in deep.batches] == [1] and slot.calls == 2  # the next one waits on the worker
    full = p.plan(make_jobs(5), [slot], NOW)
    assert full.batches == []  # one waiting per worker, never more


# -- spreading within one plan ---------------------------------------------------------------------


def test_least_loaded_does_not_queue_a_batch_behind_another_while_a_worker_idles():
    p = short_planner(0.001)  # batches of 20, prefetch allowed
    a, b = make_slot("a", nthreads=1), make_slot("b", nthreads=1)
    plan = p.plan(make_jobs(40), [a, b], NOW)
    assert sizes(plan) == [20, 20]
    assert {batch.slot.name for batch in plan.batches} == {"a", "b"}


def test_least_loaded_spreads_one_round_over_idle_workers():
    slots = [make_slot("a", nthreads=4), make_slot("b", nthreads=4)]
    plan = planner().plan(make_jobs(2), slots, NOW)
    assert sorted(placed(plan).values()) == ["a", "b"]


def test_dask_choice_spreads_within_one_plan():
    # the contrast to the two tests above: spread_score reads `calls`, which Batch does update
    slots = [make_slot("a", nthreads=4), make_slot("b", nthreads=4)]
    plan = Planner({}, make_strategy("dask")).plan(make_jobs(2), slots, NOW)
    assert sorted(placed(plan).values()) == ["a", "b"]


def test_short_jobs_never_wait_behind_a_long_one_however_deep_the_queue():
    long_busy = make_slot("a", nthreads=1, calls=1, jobs=1, long_calls=1)
    p = planner()
    p.observe("unit.t", SHORT_SECONDS / 10)  # short: batched, and no prefetch behind a long job
    assert p.plan(make_jobs(500), [long_busy], NOW).batches == []


def test_no_prefetch_for_a_task_not_yet_timed_nor_when_turned_off():
    def busy():
        return make_slot("a", nthreads=1, calls=1, jobs=1, long_calls=1)

    assert planner().plan(make_jobs(10), [busy()], NOW).batches == []  # unit.t's duration is not known yet
    strict = planner(prefetch=False)
    strict.observe("unit.t", 5.0)
    assert strict.plan(make_jobs(10), [busy()], NOW).batches == [] and strict.fetch_limit([busy()]) == 0
