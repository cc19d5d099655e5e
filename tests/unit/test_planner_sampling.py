"""Placement at scale: cached eligibility and sampling (power of d choices) keep a decision cheap
without giving up correctness when the sample has no room."""

from __future__ import annotations

import random

from placement_support import NOW, make_job, make_slot

from clusterai.placement import make_strategy
from clusterai.placement.planner import Planner
from clusterai.placement.slots import Constraints


def pool(n: int, **changes):
    return [make_slot(f"w{i:04d}", **changes) for i in range(n)]


def planner(strategy: str = "least_loaded", sample_size: int = 8) -> Planner:
    return Planner({}, make_strategy(strategy), sample_size=sample_size, rng=random.Random(7))


def test_a_large_pool_is_sampled():
    p, slots, job = planner(), pool(200), make_job()
    p.plan([], slots, NOW, version=1)
    found = p.candidates_for(job, Constraints.of(job), slots, False, NOW, p.default)
    assert 1 <= len(found) <= 8


def test_a_sample_without_room_falls_back_to_every_eligible_worker():
    slots = pool(200, calls=1)  # one thread each, all busy...
    slots[137].calls = 0  # ...but one
    p, job = planner(), make_job()
    p.plan([], slots, NOW, version=1)
    found = p.candidates_for(job, Constraints.of(job), slots, False, NOW, p.default)
    assert found == [slots[137]]


def test_round_robin_is_never_sampled():
    p, slots, job = planner("round_robin"), pool(50), make_job()
    p.plan([], slots, NOW, version=1)
    assert len(p.candidates_for(job, Constraints.of(job), slots, False, NOW, p.default)) == 50


def test_eligibility_is_cached_until_the_registry_version_changes():
    slots = pool(20, labels={"region": "us"})
    p, job = planner(), make_job(labels={"region": "eu"})
    assert p.plan([job], slots, NOW, version=1).batches == []
    slots[3].labels = {"region": "eu"}
    assert p.plan([job], slots, NOW, version=1).batches == [], "same version: the cache holds"
    plan = p.plan([job], slots, NOW, version=2)
    assert [b.slot for b in plan.batches] == [slots[3]]


def test_sampled_least_loaded_still_avoids_loaded_workers():
    slots = pool(1000, nthreads=4)
    for i, s in enumerate(slots):
        s.calls = 3 if i % 2 else 0  # half the pool is nearly full
        s.jobs = s.calls
    p = planner()
    p.plan([], slots, NOW, version=1)
    chosen = [p.default.choose(j, p.candidates_for(j, Constraints.of(j), slots, False, NOW, p.default))
              for j in (make_job(i) for i in range(200))]
    assert sum(s.calls == 0 for s in chosen) >= 195  # 8 random picks all loaded: (1/2)^8 per decision


def test_priority_reserve_counts_the_whole_pool_not_the_job_candidates():
    # a normal job only "pinned" can run on must not starve while the rest of the pool is free
    pinned = make_slot("p", labels={"gpu": "yes"})
    others = pool(3)
    p = Planner({}, make_strategy("priority", reserve=1))
    plan = p.plan([make_job(1, labels={"gpu": "yes"})], [pinned, *others], NOW, version=1)
    assert [b.slot for b in plan.batches] == [pinned]
