"""Placement cost: how long one placement decision takes on simulated registries of 100, 1,000
and 10,000 workers, for every built-in strategy (issue: placement; target p50 <= 50 us at
10,000 workers for least_loaded and capability).

A decision is what the planner does for one job that starts a batch: find the candidates (from
the cached eligible workers, sampled when there are many), fill missing latencies, and let the
strategy choose. Each decision is timed alone, then its batch is released so that the registry
keeps the same load. The per-round set-up (counting free rooms, once per dispatch round) is
timed separately.

    PYTHONPATH=. .venv/bin/python -m bench.placement_cost
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from clusterai.core.model import Job, Priority, RetryPolicy, State
from clusterai.placement import WorkerSlot, make_strategy
from clusterai.placement.planner import Batch, Planner
from clusterai.placement.slots import Constraints

SIZES = (100, 1_000, 10_000)
DECISIONS = 2_000
STRATEGIES = ("least_loaded", "capability", "round_robin", "affinity", "geographic", "priority", "hybrid")
REGIONS = ("eu", "us", "ap")
RESULTS = Path(__file__).parent / "results" / "placement_cost.json"


def registry(n: int, rng: random.Random) -> list[WorkerSlot]:
    """A mixed pool: three regions, one worker in ten with a GPU, uneven load and speed."""
    slots = []
    for i in range(n):
        region = REGIONS[i % len(REGIONS)]
        gpu = {"GPU": 1.0} if i % 10 == 0 else {}
        slot = WorkerSlot(address=f"tcp://10.0.{i // 250}.{i % 250}:9000", name=f"w{i}", nthreads=4,
                          labels={"region": region, "zone": f"{region}-{i % 4}"},
                          resources={"CPU": 4.0, "MEMORY": 8e9, **gpu},
                          models=frozenset({"llama3"}) if i % 7 == 0 else frozenset())
        slot.calls = rng.randrange(0, 3)
        slot.jobs = slot.calls * 2
        slot.latency = {"bench.job": rng.uniform(0.01, 0.2)}
        slots.append(slot)
    return slots


def job(i: int, rng: random.Random) -> Job:
    kind = i % 4
    resources = {"GPU": 1.0} if kind == 0 else {}
    labels = {"region": rng.choice(REGIONS)} if kind == 1 else {}
    prefers = {"zone": "eu-1", "model": "llama3"} if kind == 2 else {}
    return Job(id=i, task="bench.job", queue="default", priority=Priority.NORMAL, state=State.QUEUED,
               payload={}, created_at=0, updated_at=0, run_at=0, attempt=0, failures=0, lost_count=0,
               retry=RetryPolicy(), resources=resources, labels=labels, prefers=prefers)


def decide_once(planner: Planner, j: Job, slots: list[WorkerSlot], now: float) -> float:
    c = Constraints.of(j)
    strategy = planner.default
    started = time.perf_counter()
    candidates = planner.candidates_for(j, c, slots, False, now, strategy)
    planner._fill_latency(j.task, candidates)
    choice = strategy.choose(j, candidates) if candidates else None
    elapsed = time.perf_counter() - started
    if choice is not None:
        Batch(choice, [j], long=True, suspect=False, strategy=strategy.name).release()
    return elapsed


def measure(strategy: str, n: int) -> dict[str, float]:
    rng = random.Random(n)
    slots = registry(n, rng)
    planner = Planner({}, make_strategy(strategy), rng=random.Random(1))
    planner.plan([], slots, time.time(), version=1)  # a round starts: the eligible cache is empty
    jobs = [job(i, rng) for i in range(DECISIONS)]
    now = time.time()
    for j in jobs[:50]:  # warm the per-kind eligibility cache, as the first jobs of a round do
        decide_once(planner, j, slots, now)
    samples = sorted(decide_once(planner, j, slots, now) for j in jobs)
    started = time.perf_counter()
    planner.plan([], slots, now, version=1)
    round_setup = time.perf_counter() - started
    return {
        "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
        "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
        "round_setup_ms": round(round_setup * 1e3, 2),
    }


def main() -> None:
    results: dict[str, dict[str, dict[str, float]]] = {}
    print("| strategy | workers | p50 us | p99 us | mean us | per-round set-up ms |")
    print("|---|---|---|---|---|---|")
    for strategy in STRATEGIES:
        results[strategy] = {}
        for n in SIZES:
            r = measure(strategy, n)
            results[strategy][str(n)] = r
            print(f"| {strategy} | {n:,} | {r['p50_us']} | {r['p99_us']} | {r['mean_us']} | {r['round_setup_ms']} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    worst = max(results[s]["10000"]["p50_us"] for s in ("least_loaded", "capability"))
    print(f"target p50 <= 50 us at 10,000 workers (least_loaded, capability): {worst} us, "
          f"{'met' if worst <= 50 else 'missed'}")


if __name__ == "__main__":
    main()
