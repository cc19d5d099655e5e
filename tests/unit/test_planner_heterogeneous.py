"""Minimum completion time: on a pool of unequal workers a job may wait for a busy fast worker
rather than start on an idle slow one, but only while that really finishes it sooner."""

from __future__ import annotations

from placement_support import NOW, TASK, make_jobs, make_slot

from clusterai.placement import make_strategy
from clusterai.placement.planner import Planner


def pool():
    fast = make_slot("fast", latency={TASK: 0.1}, calls=1, jobs=1)  # busy, 10x faster
    slow = make_slot("slow", latency={TASK: 1.0})  # idle
    return fast, slow


def plan(strategy: str, jobs: int):
    fast, slow = pool()
    planner = Planner({}, make_strategy(strategy))
    planner.observe(TASK, 5.0)  # a long task: one job per batch
    return fast, slow, planner.plan(make_jobs(jobs), [fast, slow], NOW, version=1)


def test_the_last_jobs_wait_for_the_fast_worker():
    fast, _, result = plan("least_loaded", 3)
    assert result.batches == []  # 3 jobs: the fast worker finishes all of them before the slow one finishes one
    assert all(fast.name in why for why in result.waiting.values())


def test_the_slow_worker_takes_a_job_once_the_fast_backlog_is_longer():
    fast, slow, result = plan("least_loaded", 20)
    # 20 jobs for 2 workers: the queue is deep, so each worker may hold one job waiting; fast's
    # next job (1) waits on fast. Fast finishes the next ones in 0.2 s, +0.1 s for each held for
    # it; slow takes 1.0 s: jobs 2..8 wait for fast, job 9 would finish no sooner there (1.0 s);
    # job 20 waits on slow behind job 9 (done at 2.0 s, as soon as fast would after 10..19)
    assert [(b.slot, b.jobs[0].id) for b in result.batches] == [(fast, 1), (slow, 9), (slow, 20)]
    assert [i for i, why in result.waiting.items() if "faster worker (fast)" in why] == [*range(2, 9), *range(10, 20)]


def test_hybrid_with_load_waits_too_and_round_robin_never_does():
    assert plan("hybrid", 3)[2].batches == []
    _, slow, rr = plan("round_robin", 3)
    assert [b.slot for b in rr.batches] == [slow]


def test_equal_workers_never_wait():
    busy = make_slot("a", latency={TASK: 0.5}, calls=1, jobs=1)
    idle = make_slot("b", latency={TASK: 0.5})
    planner = Planner({}, make_strategy("least_loaded"))
    planner.observe(TASK, 5.0)
    result = planner.plan(make_jobs(1), [busy, idle], NOW, version=1)
    assert [b.slot for b in result.batches] == [idle]
