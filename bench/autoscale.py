"""Autoscaling (issue 17): clusterai's autoscaler against plain Dask's `Adaptive` on a square wave of
short jobs, on real clusters, and the decision engine's policies on a compressed daily pattern with a
recurring peak, in a simulation.

    PYTHONPATH=. .venv/bin/python -m bench.autoscale [--quick] [--only clusterai dask simulation]
                                                     [--start-s S] [--out bench/results/autoscale.json]

Part 1, square wave (real clusters, ROUNDS rounds per system, the systems taking turns, each round
in a process of its own): PERIODS periods; each opens with a burst of BURST jobs that sleep JOB_S
seconds, submitted at once, then stays idle until the period ends. 1 to 4 worker processes of 1
thread. clusterai: an embedded cluster with `autoscale:` (target_tracking + reactive, interval 1 s,
target 5 s, up cooldown 0, down cooldown 3 s); plain Dask:
`LocalCluster(n_workers=0).adapt(minimum=1, maximum=4, interval="1s", wait_count=3,
target_duration="5s")` (its defaults, but for the bounds), the same function submitted with
`client.submit`. Measured for both the same way: live workers sampled from the Dask scheduler every
SAMPLE_S (worker-seconds), the queue wait (start of the task's body minus its submission), the first
launch decision after each burst, the direction changes of the size per period, and jobs lost (not
succeeded, or run more than once: every execution appends a line).

Part 2, daily pattern (a SIMULATION of the decision engine, not a cluster): the real `Autoscaler`
from `parse_autoscale` with the real policies, on a fake clock, decides every simulated minute for
a queue model (Poisson arrivals along a daily curve with a sharp peak 09:00-10:00, 1-slot workers
that become available `start_s` after their launch); the predictive policy first learns the weeks
before, as the head does from its store, then again every simulated hour. target_tracking +
reactive against the same plus predictive, on the same arrivals. `start_s` is the launch-to-ready
time measured in part 1 (or --start-s), and 180 s as a second, labelled, scenario.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, ROOT, log, percentile, write_json
from bench.jobs import _get

# -- parameters ---------------------------------------------------------------------------------

QUICK = os.environ.get("BENCH_QUICK") == "1"

ROUNDS = 1 if QUICK else 2  # each system runs ROUNDS times, the systems taking turns
PERIODS = 2 if QUICK else 3
BURST = 40 if QUICK else 100  # jobs per burst
JOB_S = 0.2  # seconds each job sleeps
PERIOD_S = 15.0 if QUICK else 30.0  # burst, then idle until the next one
SETTLE_S = 3.0  # after the cluster reached its minimum, before the first burst
SAMPLE_S = 0.1
MIN_WORKERS, MAX_WORKERS = 1, 4
SECTION_TIMEOUT = 300

CLUSTERAI_AUTOSCALE: dict[str, Any] = {
    "min": MIN_WORKERS, "max": MAX_WORKERS, "interval_s": 1, "up_cooldown_s": 0, "down_cooldown_s": 3,
    # the default policies; the target duration set to Dask's default (5 s) rather than clusterai's (30 s)
    "policies": [{"kind": "target_tracking", "target_duration_s": 5}, {"kind": "reactive"}],
}
DASK_ADAPT: dict[str, Any] = {"minimum": MIN_WORKERS, "maximum": MAX_WORKERS, "interval": "1s", "wait_count": 3,
                              "target_duration": "5s"}

# the simulation
SIM_TICK_S = 60.0
# where the ticks fall within the minute: the head's loop is not aligned with the clock, and a tick
# right at the hour a peak starts favours the predictive policy (it acts before any backlog is seen)
SIM_PHASES_S = (0.0, 20.0, 40.0)
SIM_TRAIN_DAYS = 7 if QUICK else 21
SIM_EVAL_DAYS = 1 if QUICK else 2
SIM_SEED = 20260817
SIM_EVAL_START = datetime(2026, 3, 4, tzinfo=timezone.utc).timestamp()  # a Wednesday, 00:00 UTC
SIM_PEAK = (9.0, 10.0)  # hours of the day, UTC: a step up at 09:00, down at 10:00
SIM_PEAK_SLOTS = 8.0  # busy slots the peak adds on top of the daily curve
SIM_DURATION = (10.0, 50.0)  # seconds per job, uniform (mean 30 s)
SIM_MAX_WORKERS = 16
SIM_LONG_START_S = 180.0  # a worker that loads a model: the config docstring's example
SIM_POLICIES: dict[str, list[dict[str, Any]]] = {
    "target_tracking + reactive": [{"kind": "target_tracking"}, {"kind": "reactive"}],
    "target_tracking + reactive + predictive": [{"kind": "target_tracking"}, {"kind": "reactive"},
                                                {"kind": "predictive"}],
}

PACKAGES = ("clusterai", "dask", "distributed", "psutil")


# -- part 1: sampling and figures shared by both systems ------------------------------------------

class Sampler:
    """Calls `probe` every `period` seconds on a thread: [(time, *counts)]."""

    def __init__(self, probe: Callable[[], tuple[int, ...]], period: float = SAMPLE_S):
        self.probe = probe
        self.period = period
        self.samples: list[tuple[float, ...]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-autoscale-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), *self.probe()))
            except Exception:  # noqa: BLE001 - a dict changing size mid-read: take the next sample
                self.errors += 1
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def integrate(samples: list[tuple[float, ...]], column: int, start: float, end: float) -> float:
    """Seconds x count of a step function through the samples (each holds until the next), in [start, end]."""
    total = 0.0
    for (t, *counts), (t_next, *_) in zip(samples, [*samples[1:], (end,)]):
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += (hi - lo) * counts[column]
    return total


def changes(samples: list[tuple[float, ...]], column: int) -> list[tuple[float, int, int]]:
    """(time, from, to) at each change of a sampled count."""
    out = []
    for (_, *before), (t, *after) in zip(samples, samples[1:]):
        if after[column] != before[column]:
            out.append((t, before[column], after[column]))
    return out


def direction_runs(moves: Sequence[int]) -> int:
    """Direction changes of a sequence of size moves (+1 up, -1 down): the number of runs of one
    direction, so up, up, down is 2 (one rise, one fall) and up, down, up, down is 4."""
    runs, last = 0, 0
    for move in moves:
        if move and move != last:
            runs += 1
            last = move
    return runs


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def read_executions(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            key = line.split()[0]
            counts[key] = counts.get(key, 0) + 1
    return counts


def first_reaching(samples: list[tuple[float, ...]], column: int, since: float, count: int) -> float | None:
    return next((t for t, *c in samples if t >= since and c[column] >= count), None)


def summarize(periods: list[dict[str, Any]], samples: list[tuple[float, ...]], scale: list[tuple[float, int, int]],
              window: tuple[float, float], executions: dict[str, int]) -> dict[str, Any]:
    """The figures of one system. `periods`: per burst its submit time and per job (key, submitted,
    started, ok); `samples`: (time, registered, launched[, ready]); `scale`: the system's own log of
    size decisions as (time, from, to)."""
    start, end = window
    per_period = []
    all_waits: list[float] = []
    lost = []
    bounds = [p["submitted_at"] for p in periods] + [end]
    spec = changes(samples, 1)
    for p, (lo, hi) in zip(periods, zip(bounds, bounds[1:])):
        waits = [j["started"] - j["submitted"] for j in p["jobs"] if j["started"] is not None]
        all_waits += waits
        lost += [j["key"] for j in p["jobs"] if not j["ok"] or executions.get(j["key"], 0) != 1]
        ups = [(t, a, b) for t, a, b in scale if lo <= t < hi and b > a]
        first_up = ups[0] if ups else None
        row: dict[str, Any] = {
            "submitted_at": round(lo - start, 3),
            "jobs": len(p["jobs"]),
            "drained_s": round(max(j["ended"] for j in p["jobs"]) - lo, 3) if p["jobs"] else None,
            "wait_p50_s": round(percentile(waits, 50), 3) if waits else None,
            "wait_p95_s": round(percentile(waits, 95), 3) if waits else None,
            "first_launch_decision_s": round(first_up[0] - lo, 3) if first_up else None,
            "first_spec_growth_s": next((round(t - lo, 3) for t, a, b in spec if lo <= t < hi and b > a), None),
            "direction_changes": direction_runs([sign(b - a) for t, a, b in scale if lo <= t < hi]),
            "direction_changes_sampled": direction_runs([sign(b - a) for t, a, b in spec if lo <= t < hi]),
            "sizes": [[round(t - start, 2), a, b] for t, a, b in scale if lo <= t < hi],
            "peak_workers": max((c[0] for t, *c in samples if lo <= t < hi), default=None),
        }
        if first_up is not None:  # launch decision -> as many workers as decided
            t_up, _, target = first_up
            registered = first_reaching(samples, 0, t_up, target)
            row["decision_to_registered_s"] = round(registered - t_up, 3) if registered else None
            if len(samples[0]) > 3:
                ready = first_reaching(samples, 2, t_up, target)
                row["decision_to_ready_s"] = round(ready - t_up, 3) if ready else None
        per_period.append(row)
    window_s = end - start

    def median_of(key: str) -> float | None:
        values = [r[key] for r in per_period if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    return {
        "window_s": round(window_s, 3),
        "worker_seconds": round(integrate(samples, 0, start, end), 2),
        "worker_seconds_launched": round(integrate(samples, 1, start, end), 2),
        "jobs": len(all_waits),
        "wait_p50_s": round(percentile(all_waits, 50), 3) if all_waits else None,
        "wait_p95_s": round(percentile(all_waits, 95), 3) if all_waits else None,
        "wait_max_s": round(max(all_waits), 3) if all_waits else None,
        "first_launch_decision_max_s": max((r["first_launch_decision_s"] for r in per_period
                                            if r["first_launch_decision_s"] is not None), default=None),
        "direction_changes_max": max((r["direction_changes"] for r in per_period), default=None),
        "decision_to_registered_median_s": median_of("decision_to_registered_s"),
        "decision_to_ready_median_s": median_of("decision_to_ready_s"),
        "jobs_lost": len(lost),
        "lost_keys": lost[:20],
        "executed_more_than_once": sum(1 for n in executions.values() if n > 1),
        "periods": per_period,
        "samples": len(samples),
        "waits": [round(w, 4) for w in all_waits],
    }


def pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one system together: waits pooled, worker-seconds averaged, worst periods."""
    ok = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {"rounds": rounds}
    if not ok:
        out["error"] = "; ".join(r["error"] for r in rounds)
        return out
    waits = [w for r in ok for w in r["waits"]]
    periods = [p for r in ok for p in r["periods"]]

    def median_of(key: str) -> float | None:
        values = [p[key] for p in periods if p.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    decisions = [p["first_launch_decision_s"] for p in periods if p["first_launch_decision_s"] is not None]
    out.update({
        "rounds_ok": len(ok),
        "worker_seconds": round(statistics.fmean(r["worker_seconds"] for r in ok), 2),
        "worker_seconds_launched": round(statistics.fmean(r["worker_seconds_launched"] for r in ok), 2),
        "jobs": len(waits),
        "wait_p50_s": round(percentile(waits, 50), 3) if waits else None,
        "wait_p95_s": round(percentile(waits, 95), 3) if waits else None,
        "first_launch_decision_max_s": max(decisions) if decisions else None,
        "first_launch_decision_median_s": round(statistics.median(decisions), 3) if decisions else None,
        "direction_changes_max": max(p["direction_changes"] for p in periods),
        "decision_to_registered_median_s": median_of("decision_to_registered_s"),
        "decision_to_ready_median_s": median_of("decision_to_ready_s"),
        "jobs_lost": sum(r["jobs_lost"] for r in ok),
        "executed_more_than_once": sum(r["executed_more_than_once"] for r in ok),
    })
    if len(ok) < len(rounds):
        out["error"] = f"{len(rounds) - len(ok)} of {len(rounds)} rounds failed"
    return out


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def _sleep_until(at: float) -> None:
    left = at - time.time()
    if left > 0:
        time.sleep(left)


# -- part 1: clusterai --------------------------------------------------------------------------

def run_clusterai() -> dict[str, Any]:
    import clusterai
    from clusterai import State
    from clusterai.config import parse_config

    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
        config = parse_config({
            "store": f"sqlite:///{tmp}/clusterai.db",
            "tasks": ["bench.autoscale_tasks"],
            "cluster": {"threads_per_worker": 1, "dashboard": False, "memory_limit": "1GiB", "death_timeout": 10},
            "autoscale": CLUSTERAI_AUTOSCALE,
        }, source="bench")
        executions = Path(tmp, "executions.log")
        client = clusterai.connect(config)
        try:
            local = client.runtime.runtime.local_cluster  # the embedded Dask cluster the autoscaler sizes

            def managed_ready() -> int:
                return sum(1 for w in client.workers() if w.status == "ready" and w.name.startswith("as-"))

            def probe() -> tuple[int, ...]:
                return len(local.scheduler.workers), len(local.worker_spec), managed_ready()

            _wait_for(lambda: managed_ready() >= MIN_WORKERS, 60, "clusterai: the minimum of workers")
            time.sleep(SETTLE_S)
            periods = []
            with Sampler(probe) as sampler:
                start = time.time()
                for k in range(PERIODS):
                    _sleep_until(start + k * PERIOD_S)
                    log(f"clusterai: burst {k + 1} of {PERIODS}")
                    submitted_at = time.time()
                    jobs = client.submit_many("bench.autoscale.sleep", [
                        {"key": f"p{k}-{i}", "seconds": JOB_S, "log_path": str(executions)} for i in range(BURST)])
                    client.wait(jobs, timeout=120)
                    rows = []
                    for job in (client.get(j) for j in jobs):
                        result = job.result if isinstance(job.result, dict) else {}
                        rows.append({"key": job.payload["key"], "submitted": job.created_at,
                                     "started": result.get("started"), "ended": result.get("ended") or time.time(),
                                     "ok": job.state is State.SUCCEEDED, "attempts": len(job.attempts),
                                     "store_wait": job.attempts[0].started_at - job.created_at if job.attempts
                                     else None})
                    periods.append({"submitted_at": submitted_at, "jobs": rows})
                end = start + PERIODS * PERIOD_S
                _sleep_until(end)
            decisions = list(reversed(client.store.list_scale_decisions(limit=1000)))
            found = client.store.get_autoscale("state")
            state = found[0] if found else {}
        finally:
            client.close()
        scale = [(float(r["at"]), int(r["from"]), int(r["to"])) for r in decisions]
        out = summarize(periods, sampler.samples, scale, (start, end), read_executions(executions))
        store_waits = [j["store_wait"] for p in periods for j in p["jobs"] if j["store_wait"] is not None]
        out["store_wait_p95_s"] = round(percentile(store_waits, 95), 3) if store_waits else None
        out["retried_jobs"] = sum(1 for p in periods for j in p["jobs"] if j["attempts"] > 1)
        out["decision_log"] = [{"at": round(r["at"] - start, 3), "from": r["from"], "to": r["to"],
                                "reason": r["reason"]} for r in decisions]
        profile = (state.get("profiles") or [{}])[0]
        out["engine_start_s"] = profile.get("start_s")  # what the engine measured (launch seen -> registered)
        out["sampler_errors"] = sampler.errors
        out["settings"] = CLUSTERAI_AUTOSCALE
        return out


# -- part 1: plain Dask -------------------------------------------------------------------------

def run_dask() -> dict[str, Any]:
    from distributed import Client, LocalCluster, wait

    from bench.autoscale_tasks import sleep

    with tempfile.TemporaryDirectory(prefix="bench-autoscale-dask-") as tmp:
        executions = Path(tmp, "executions.log")
        cluster = LocalCluster(n_workers=0, processes=True, threads_per_worker=1, memory_limit="1GiB",
                               dashboard_address=None, worker_dashboard_address=None)
        try:
            adaptive = cluster.adapt(**DASK_ADAPT)
            with Client(cluster) as client:
                def probe() -> tuple[int, ...]:
                    return len(cluster.scheduler.workers), len(cluster.worker_spec)

                _wait_for(lambda: len(cluster.scheduler.workers) >= MIN_WORKERS, 60, "dask: the minimum of workers")
                time.sleep(SETTLE_S)
                periods = []
                with Sampler(probe) as sampler:
                    start = time.time()
                    for k in range(PERIODS):
                        _sleep_until(start + k * PERIOD_S)
                        log(f"dask: burst {k + 1} of {PERIODS}")
                        submitted_at = time.time()
                        futures, sent = [], []
                        for i in range(BURST):
                            sent.append(time.time())
                            futures.append(client.submit(sleep, f"p{k}-{i}", JOB_S, str(executions), pure=False))
                        wait(futures, timeout=120)
                        rows = []
                        for i, (future, at) in enumerate(zip(futures, sent)):
                            ok = future.status == "finished"
                            result = future.result(timeout=10) if ok else {}
                            rows.append({"key": f"p{k}-{i}", "submitted": at, "started": result.get("started"),
                                         "ended": result.get("ended") or time.time(), "ok": ok})
                        del futures  # results released: nothing holds a worker that Adaptive would retire
                        periods.append({"submitted_at": submitted_at, "jobs": rows})
                    end = start + PERIODS * PERIOD_S
                    _sleep_until(end)
                adaptive_log = [(t, dict(r)) for t, r in adaptive.log]
        finally:
            cluster.close(timeout=30)
        samples = sampler.samples
        # Adaptive's own log holds its recommendations: "up" to n workers, "down" naming workers;
        # the size it moved from is the spec's size sampled just before
        scale = []
        for t, rec in adaptive_log:
            before = next((c[1] for s, *c in reversed(samples) if s <= t), None)
            if before is None:
                continue
            if rec["status"] == "up":
                scale.append((t, before, int(rec["n"])))
            elif rec["status"] == "down":
                scale.append((t, before, before - len(rec["workers"])))
        out = summarize(periods, samples, scale, (start, end), read_executions(executions))
        out["adaptive_log"] = [{"at": round(t - start, 3), **{k: v if k != "workers" else len(v)
                                                              for k, v in rec.items()}} for t, rec in adaptive_log]
        out["sampler_errors"] = sampler.errors
        out["settings"] = DASK_ADAPT
        return out


# -- part 2: the simulation ---------------------------------------------------------------------

def daily_load(hour: float, factor: float) -> float:
    """Offered load in busy slots at this hour of the day (UTC): 1 at night, up to 3 in the
    afternoon, and a step of SIM_PEAK_SLOTS more from 09:00 to 10:00."""
    base = 1.0 + 2.0 * max(0.0, math.sin(math.pi * (hour - 6.0) / 16.0)) if 6.0 < hour < 22.0 else 1.0
    peak = SIM_PEAK_SLOTS if SIM_PEAK[0] <= hour < SIM_PEAK[1] else 0.0
    return factor * base + peak


def arrivals(day_start: float, days: int, seed: int) -> list[tuple[float, float]]:
    """(submitted at, duration) of Poisson arrivals, the rate constant within each minute."""
    mean = sum(SIM_DURATION) / 2
    jobs = []
    for d in range(days):
        rng = random.Random(seed * 1000 + int((day_start + d * 86400) // 86400))
        factor = rng.gauss(1.0, 0.05)
        for minute in range(1440):
            rate = daily_load(minute / 60.0, factor) / mean  # jobs per second
            t0 = day_start + d * 86400 + minute * 60.0
            t = t0 + rng.expovariate(rate)
            while t < t0 + 60.0:
                jobs.append((t, rng.uniform(*SIM_DURATION)))
                t += rng.expovariate(rate)
    return jobs


@dataclass
class SimWorker:
    name: str
    launched: float
    ready_at: float
    busy: int = 0
    draining: bool = False
    stopped: float | None = None
    idle_since: float | None = None


@dataclass
class SimJob:
    submitted: float
    duration: float
    started: float | None = None
    ended: float | None = None


@dataclass
class Simulation:
    """A queue served FIFO by 1-slot workers, sized every SIM_TICK_S by the real Autoscaler. What
    the head does around `decide` is mirrored: the snapshot is taken before acting (a worker
    launched at one tick is seen, starting or ready, at the next), draining workers are revived
    before any launch, retirement follows `choose_to_retire` and a busy worker is only drained,
    the latency signal is the p95 queue wait of the jobs finished in the last 60 s, the mean
    duration is the planner's EWMA, and the predictive policy learns the finished jobs every hour."""

    policies: list[dict[str, Any]]
    start_s: float
    jobs: list[SimJob]
    now: float
    concurrency: int = 1
    workers: dict[str, SimWorker] = field(default_factory=dict)
    queue: deque[int] = field(default_factory=deque)
    finished: list[int] = field(default_factory=list)
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (ended, wait)
    decisions: list[tuple[float, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from clusterai.autoscale import parse_autoscale

        self.config = parse_autoscale({
            "profiles": {"default": {"min": MIN_WORKERS, "max": SIM_MAX_WORKERS, "concurrency": self.concurrency,
                                     "start_s": self.start_s}},
            "interval_s": SIM_TICK_S, "policies": self.policies,  # cooldowns and max_step: the defaults
        })
        self.clock = self.now
        self.autoscaler = self.config.autoscaler(clock=lambda: self.clock)
        self.predictive = self.config.predictive["default"]
        self._completions: list[tuple[float, int, str, int]] = []
        self._ready: list[tuple[float, str]] = []
        self._next_arrival = 0
        self._seq = 0
        self._duration: float | None = None
        self._learned_until: float | None = None
        self._learn_from = 0  # index into self.finished

    def learn(self, history: list[tuple[float, float]], until: float) -> None:
        for policy in self.predictive:
            policy.learn(history, until=until)
        self._learned_until = until

    # -- the queue ----------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        while self.queue:
            free = [w for w in self.workers.values() if w.stopped is None and not w.draining
                    and w.ready_at <= now and w.busy < self.concurrency]
            if not free:
                return
            worker = min(free, key=lambda w: (w.busy, w.name))  # least loaded
            index = self.queue.popleft()
            job = self.jobs[index]
            job.started = now
            worker.busy += 1
            self._seq += 1
            heapq.heappush(self._completions, (now + job.duration, self._seq, worker.name, index))

    def advance(self, until: float) -> None:
        """Run every arrival, completion and worker start up to `until`, in time order."""
        while True:
            arrival = self.jobs[self._next_arrival].submitted if self._next_arrival < len(self.jobs) else math.inf
            completion = self._completions[0][0] if self._completions else math.inf
            ready = self._ready[0][0] if self._ready else math.inf
            t = min(arrival, completion, ready)
            if t > until:
                return
            if t == completion:
                _, _, name, index = heapq.heappop(self._completions)
                job = self.jobs[index]
                job.ended = t
                worker = self.workers[name]
                worker.busy -= 1
                self.finished.append(index)
                self.recent.append((t, job.started - job.submitted))
                self._duration = job.duration if self._duration is None else (
                    0.2 * job.duration + 0.8 * self._duration)  # the planner's EWMA (DURATION_ALPHA 0.2)
            elif t == ready:
                heapq.heappop(self._ready)
            else:
                self.queue.append(self._next_arrival)
                self._next_arrival += 1
            self._dispatch(t)

    # -- one tick of the autoscaler -----------------------------------------------------------

    def tick(self) -> None:
        from clusterai.autoscale import QueueDemand, Snapshot, WorkerView, choose_to_retire

        now = self.now
        self.clock = now
        if self.predictive and self._learned_until is not None and now - self._learned_until > 3600:
            rows = [(self.jobs[i].submitted, self.jobs[i].duration) for i in self.finished[self._learn_from:]]
            self._learn_from = len(self.finished)
            self.learn(rows, now)
        while self.recent and self.recent[0][0] < now - 60.0:
            self.recent.popleft()
        waits = sorted(w for _, w in self.recent)
        running = sum(w.busy for w in self.workers.values() if w.stopped is None)
        demand = [QueueDemand(queue="default", queued=len(self.queue), running=running,
                              mean_duration_s=self._duration)] if self.queue or running else []
        views = []
        for w in self.workers.values():
            if w.stopped is not None:
                continue
            started = w.ready_at <= now
            if started and w.busy == 0:
                w.idle_since = w.idle_since if w.idle_since is not None else now
            else:
                w.idle_since = None
            views.append(WorkerView(w.name, "default", busy=w.busy, concurrency=self.concurrency, started=started,
                                    draining=w.draining, idle_since=w.idle_since))
        snapshot = Snapshot(now=now, demand=demand, workers=views,
                            latency_p95_s=waits[int(0.95 * (len(waits) - 1))] if waits else None)
        decision = self.autoscaler.decide(snapshot).of("default")
        if decision.delta:
            self.decisions.append((now, decision.current, decision.desired))
        mine = snapshot.workers_of("default")
        revived: list[str] = []
        if decision.delta > 0:
            revived = [v.name for v in mine if v.draining][:decision.delta]
            for name in revived:
                self.workers[name].draining = False
            for _ in range(decision.delta - len(revived)):
                self._seq += 1
                name = f"as-default-{self._seq:08x}"
                self.workers[name] = SimWorker(name, launched=now, ready_at=now + self.start_s)
                heapq.heappush(self._ready, (now + self.start_s, name))
            self._dispatch(now)
        retire = choose_to_retire([v for v in mine if v.name not in revived], max(0, -decision.delta))
        for name in retire.drain:
            self.workers[name].draining = True
        for name in retire.stop_now:
            worker = self.workers[name]
            worker.draining = True
            if worker.busy == 0:
                worker.stopped = now

    def run(self, until: float) -> None:
        while self.now < until:
            self.tick()
            self.advance(self.now + SIM_TICK_S)
            self.now += SIM_TICK_S

    def worker_seconds(self, start: float, end: float) -> float:
        return sum(max(0.0, min(w.stopped if w.stopped is not None else end, end) - max(w.launched, start))
                   for w in self.workers.values())


def _wait(job: SimJob, until: float) -> float:
    return (job.started if job.started is not None else until) - job.submitted


def run_simulation(start_s_measured: float) -> dict[str, Any]:
    """Both policy sets on the same arrivals, with the measured start_s and with SIM_LONG_START_S,
    each at every tick phase of SIM_PHASES_S; waits are pooled over the phases."""
    eval_start = SIM_EVAL_START
    eval_end = eval_start + SIM_EVAL_DAYS * 86400
    train_start = eval_start - SIM_TRAIN_DAYS * 86400
    began = time.perf_counter()
    history = arrivals(train_start, SIM_TRAIN_DAYS, SIM_SEED)
    trace = arrivals(eval_start, SIM_EVAL_DAYS + 1, SIM_SEED)  # a day more, so every job of the window starts
    log(f"simulation: {len(history):,} jobs of history over {SIM_TRAIN_DAYS} days, "
        f"{sum(1 for t, _ in trace if t < eval_end):,} jobs over {SIM_EVAL_DAYS} evaluated days")
    peaks = [(eval_start + d * 86400 + SIM_PEAK[0] * 3600, eval_start + d * 86400 + SIM_PEAK[1] * 3600)
             for d in range(SIM_EVAL_DAYS)]

    def at_peak(t: float) -> bool:
        return any(lo <= t < hi for lo, hi in peaks)

    scenarios = []
    for label, start_s in (("measured start_s", start_s_measured), ("start_s 180 s", SIM_LONG_START_S)):
        for name, policies in SIM_POLICIES.items():
            waits: list[float] = []
            peak_waits: list[float] = []
            runs = []
            for phase in SIM_PHASES_S:
                sim = Simulation(policies=policies, start_s=start_s, jobs=[SimJob(t, d) for t, d in trace],
                                 now=eval_start + phase)
                if sim.predictive:
                    sim.learn(history, sim.now)  # what the head learns from its store at start
                sim.run(eval_end + 3 * 3600)
                window = [j for j in sim.jobs if eval_start <= j.submitted < eval_end]
                run_waits = [_wait(j, sim.now) for j in window]
                run_peak = [_wait(j, sim.now) for j in window if at_peak(j.submitted)]
                waits += run_waits
                peak_waits += run_peak
                in_window = [d for d in sim.decisions if eval_start <= d[0] < eval_end]
                runs.append({
                    "phase_s": phase,
                    "worker_seconds": round(sim.worker_seconds(eval_start, eval_end), 1),
                    "worker_seconds_peak": round(sum(sim.worker_seconds(lo, hi) for lo, hi in peaks), 1),
                    "wait_p95_peak_s": round(percentile(run_peak, 95), 2),
                    "wait_p95_s": round(percentile(run_waits, 95), 2),
                    "size_changes": len(in_window),
                    "direction_changes": direction_runs([sign(b - a) for _, a, b in in_window]),
                    # live workers 1 minute before each peak, at its start, and 1, 2 and 5 minutes in
                    "workers_around_peak": [[sum(1 for w in sim.workers.values() if w.launched <= t
                                                 and (w.stopped is None or w.stopped > t))
                                             for t in (lo - 60, lo, lo + 60, lo + 120, lo + 300)] for lo, _ in peaks],
                    "engine_start_s": round(sim.autoscaler.start_s(sim.config.profiles[0]), 3),
                })
            scenarios.append({
                "scenario": label, "start_s": round(start_s, 3), "policies": name,
                "worker_seconds": round(statistics.fmean(r["worker_seconds"] for r in runs), 1),
                "worker_seconds_peak": round(statistics.fmean(r["worker_seconds_peak"] for r in runs), 1),
                "jobs": len(waits) // len(runs), "peak_jobs": len(peak_waits) // len(runs),
                "wait_p95_peak_s": round(percentile(peak_waits, 95), 2),
                "wait_p50_peak_s": round(percentile(peak_waits, 50), 2),
                "wait_mean_peak_s": round(statistics.fmean(peak_waits), 2),
                "wait_max_peak_s": round(max(peak_waits), 2),
                "wait_p95_s": round(percentile(waits, 95), 2),
                "wait_p50_s": round(percentile(waits, 50), 2),
                "size_changes_per_day": round(statistics.fmean(r["size_changes"] for r in runs) / SIM_EVAL_DAYS, 1),
                "runs": runs,
            })
            log(f"simulation ({label}, {name}): peak p95 {scenarios[-1]['wait_p95_peak_s']} s, "
                f"{scenarios[-1]['worker_seconds']:,} worker-seconds")
    return {
        "tick_s": SIM_TICK_S, "phases_s": list(SIM_PHASES_S), "train_days": SIM_TRAIN_DAYS,
        "eval_days": SIM_EVAL_DAYS, "seed": SIM_SEED,
        "eval_start_utc": datetime.fromtimestamp(eval_start, timezone.utc).isoformat(),
        "peak_utc_hours": list(SIM_PEAK), "peak_slots": SIM_PEAK_SLOTS, "duration_s": list(SIM_DURATION),
        "max_workers": SIM_MAX_WORKERS, "min_workers": MIN_WORKERS, "history_jobs": len(history),
        "scenarios": scenarios, "wall_s": round(time.perf_counter() - began, 1),
    }


# -- orchestration ------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[], dict[str, Any]]] = {"clusterai": run_clusterai, "dask": run_dask}


def machine() -> dict[str, Any]:
    from bench.jobs import _cpu_model, _revision, _version

    return {
        "nproc": len(os.sched_getaffinity(0)), "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES}, "revision": _revision(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    def check(target: str, measured: Any, met: bool | None) -> dict[str, Any]:
        return {"target": target, "measured": measured, "met": met}

    ca, dk = results.get("clusterai", {}), results.get("dask", {})
    decision = _get(ca, "first_launch_decision_max_s")
    lost = _get(ca, "jobs_lost")
    flips = _get(ca, "direction_changes_max")
    out = [
        check("a launch decision <= 2 s after a backlog appears (worst period)", decision,
              decision <= 2.0 if decision is not None else None),
        check("0 jobs lost", lost, lost == 0 if lost is not None else None),
        check("at most 2 direction changes per square-wave period (worst period)", flips,
              flips <= 2 if flips is not None else None),
    ]
    scenarios = _get(results, "simulation", "scenarios") or []
    names = list(SIM_POLICIES)
    measured = {s["policies"]: s for s in scenarios if s["scenario"] == "measured start_s"}
    if all(n in measured for n in names):
        reactive, predictive = measured[names[0]], measured[names[1]]
        cut = 1 - predictive["wait_p95_peak_s"] / reactive["wait_p95_peak_s"] if reactive["wait_p95_peak_s"] else 0.0
        extra = predictive["worker_seconds"] / reactive["worker_seconds"] - 1
        out.append(check("peak p95 wait with predictive >= 50 % below reactive, for <= 10 % more worker-seconds "
                         "(simulation, measured start_s)",
                         [f"p95 {reactive['wait_p95_peak_s']} -> {predictive['wait_p95_peak_s']} s "
                          f"({cut:+.0%} cut)", f"worker-seconds {extra:+.1%}"],
                         cut >= 0.5 and extra <= 0.10))
    else:
        out.append(check("peak p95 wait with predictive >= 50 % below reactive, <= 10 % more worker-seconds",
                         None, None))
    p95 = [_get(ca, "wait_p95_s"), _get(dk, "wait_p95_s")]
    ws = [_get(ca, "worker_seconds"), _get(dk, "worker_seconds")]
    known = None not in p95 and None not in ws
    out.append(check("clusterai better than Adaptive on p95 wait at equal or lower worker-seconds (square wave)",
                     [f"p95 {p95[0]} vs {p95[1]} s", f"worker-seconds {ws[0]} vs {ws[1]}"],
                     p95[0] < p95[1] and ws[0] <= ws[1] if known else None))
    return out


def _fmt(value: Any) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return " / ".join(_fmt(v) for v in value)
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    parts = []
    live = []
    for label, key in (("clusterai", "clusterai"), ("plain Dask Adaptive", "dask")):
        system = results.get(key)
        if isinstance(system, dict) and "rounds" in system:
            live += [(f"{label}, round {i}", r) for i, r in enumerate(system["rounds"], 1) if "error" not in r]
            if "rounds_ok" in system:
                live.append((f"**{label}, pooled**", system))
    if live:
        parts.append(_table(
            ["system", "worker-s (registered)", "worker-s (launched)", "wait p50 s", "wait p95 s",
             "launch decision after backlog, s", "direction changes", "jobs lost", "decision -> registered s",
             "decision -> ready s"],
            [[label, r["worker_seconds"], r["worker_seconds_launched"], r["wait_p50_s"], r["wait_p95_s"],
              [p["first_launch_decision_s"] for p in r["periods"]] if "periods" in r
              else f"max {_fmt(r['first_launch_decision_max_s'])}",
              [p["direction_changes"] for p in r["periods"]] if "periods" in r
              else f"max {_fmt(r['direction_changes_max'])}",
              r["jobs_lost"], r["decision_to_registered_median_s"], r["decision_to_ready_median_s"]]
             for label, r in live]))
        parts.append(_table(
            ["system", "period", "wait p50 s", "wait p95 s", "burst drained after s", "peak workers",
             "first spec growth s", "direction changes (log / sampled)", "sizes (s after start: from -> to)"],
            [[label, i + 1, p["wait_p50_s"], p["wait_p95_s"], p["drained_s"], p["peak_workers"],
              p["first_spec_growth_s"], f"{p['direction_changes']} / {p['direction_changes_sampled']}",
              ", ".join(f"{t:g}: {a}->{b}" for t, a, b in p["sizes"])]
             for label, r in live if "periods" in r for i, p in enumerate(r["periods"])]))
    sim = results.get("simulation")
    if isinstance(sim, dict) and "scenarios" in sim:
        parts.append("SIMULATION of the decision engine (not a cluster):\n" + _table(
            ["scenario", "start_s", "policies", "worker-s", "worker-s in peaks", "peak wait p50 / p95 s",
             "peak p95 per tick phase s", "wait p50 / p95 s (all)", "size changes a day",
             "workers at peak -1/0/+1/+2/+5 min (phase 0, day 1)"],
            [[s["scenario"], s["start_s"], s["policies"], s["worker_seconds"], s["worker_seconds_peak"],
              [s["wait_p50_peak_s"], s["wait_p95_peak_s"]], [r["wait_p95_peak_s"] for r in s["runs"]],
              [s["wait_p50_s"], s["wait_p95_s"]], s["size_changes_per_day"],
              "/".join(map(str, s["runs"][0]["workers_around_peak"][0]))]
             for s in sim["scenarios"]]))
    met = {True: "yes", False: "**no**", None: "not measured"}
    parts.append(_table(["target", "measured", "met"], [[t["target"], t["measured"], met[t["met"]]] for t in targets]))
    parts += [f"section {name} failed: {r['error']}" for name, r in results.items()
              if isinstance(r, dict) and "error" in r]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[*SECTIONS, "simulation"], help="run only these parts")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run, shorter and smaller; its figures mean little")
    parser.add_argument("--start-s", type=float, default=None,
                        help="the simulation's worker start time (default: measured on the clusterai cluster)")
    parser.add_argument("--out", type=Path, default=RESULTS / "autoscale.json")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.section:
        write_json(args.out, SECTIONS[args.section]())
        return 0
    if args.quick and not QUICK:  # the sizes are read at import: run again with the switch in the environment
        os.environ["BENCH_QUICK"] = "1"
        rest = argv if argv is not None else sys.argv[1:]
        os.execv(sys.executable, [sys.executable, "-m", "bench.autoscale", *rest])

    from bench.jobs import run_in_own_session

    began = time.perf_counter()
    info = machine()
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "BENCH_QUICK": "1" if QUICK else "0"}  # worker processes import bench.*
    results: dict[str, Any] = {}
    chosen = args.only or [*SECTIONS, "simulation"]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SECTIONS if name in chosen}
    for number in range(1, ROUNDS + 1):
        for name in rounds:
            log(f"square wave: {name}, round {number} of {ROUNDS}")
            t0 = time.perf_counter()
            result = run_in_own_session(["bench.autoscale", "--section", name], env, SECTION_TIMEOUT)
            result["wall_s"] = round(time.perf_counter() - t0, 1)
            rounds[name].append(result)
    for name, done in rounds.items():
        results[name] = pool(done)
    if "simulation" in chosen:
        start_s = args.start_s if args.start_s is not None else _get(results, "clusterai", "decision_to_ready_median_s")
        if start_s is None:
            results["simulation"] = {"error": "no start_s: run the clusterai section too, or give --start-s"}
        else:
            log(f"simulation, start_s {start_s} s ({'given' if args.start_s is not None else 'measured'})")
            results["simulation"] = run_simulation(float(start_s))
            results["simulation"]["start_s_source"] = "given (--start-s)" if args.start_s is not None else (
                "measured: clusterai launch decision -> every launched worker ready, median over the periods"
                " of every round")
    targets = checks(results)
    write_json(args.out, {
        "machine": info, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "quick": QUICK,
        "command": " ".join(["python -m bench.autoscale", *sys.argv[1:]]),
        "wall_s": round(time.perf_counter() - began, 1),
        "parameters": {"rounds": ROUNDS, "periods": PERIODS, "burst_jobs": BURST, "job_s": JOB_S, "period_s": PERIOD_S,
                       "sample_s": SAMPLE_S, "min_workers": MIN_WORKERS, "max_workers": MAX_WORKERS},
        "results": results, "targets": targets,
    })
    print(report(results, targets))
    log(f"wrote {args.out} in {time.perf_counter() - began:.0f} s")
    return 1 if any(isinstance(r, dict) and "error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
