"""Turns ready jobs into batches on workers: batch sizes from measured durations, hard constraints,
breakers and free rooms first, then each queue's strategy. No I/O: the coordinator does that."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from clusterai.core.model import Job
from clusterai.core.smoothing import DURATION_ALPHA, ewma
from clusterai.placement.slots import Constraints, WorkerSlot
from clusterai.placement.strategies import PriorityReserve, Strategy

SHORT_SECONDS = 0.05  # a task faster than this may be prefetched and batched
DEEP_QUEUE = 2  # ready jobs beyond the free rooms, per worker, from which every worker prefetches one


class Batch:
    """Jobs sent to one worker in one call; holds a room, its jobs' count and their resources on
    the worker from the moment it is planned, so the next choice in the same round sees them."""

    def __init__(self, slot: WorkerSlot, jobs: list[Job], *, long: bool, suspect: bool,
                 strategy: str, trial: bool = False):
        self.slot, self.jobs, self.long, self.suspect = slot, list(jobs), long, suspect
        self.strategy, self.trial = strategy, trial
        self.held: dict[str, float] = {}
        slot.calls += 1
        slot.jobs += len(self.jobs)
        slot.long_calls += long
        slot.isolated = slot.isolated or suspect

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        self.slot.jobs += 1

    def keep(self, jobs: list[Job]) -> None:
        """Narrow the batch to the jobs that really started (others were cancelled meanwhile)."""
        self.slot.jobs -= len(self.jobs) - len(jobs)
        self.jobs = jobs

    def hold(self, requires: Mapping[str, float]) -> None:
        for key, amount in requires.items():
            self.slot.in_use[key] = self.slot.in_use.get(key, 0.0) + amount
            self.held[key] = self.held.get(key, 0.0) + amount

    def release(self) -> None:
        self.slot.calls -= 1
        self.slot.jobs -= len(self.jobs)
        self.slot.long_calls -= self.long
        if self.suspect:
            self.slot.isolated = False
        for key, amount in self.held.items():
            self.slot.in_use[key] = self.slot.in_use.get(key, 0.0) - amount
        self.held = {}


@dataclass
class Plan:
    batches: list[Batch] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> why it stays queued


class Planner:
    """Placement stays cheap at scale: the workers that meet a job's hard constraints are cached
    per kind of job (until the registry changes), and among more than `sample_size` of them a
    strategy ranks a random sample (the power of d choices), falling back to all of them only
    when the sample has no room."""

    def __init__(self, strategies: Mapping[str, Strategy], default: Strategy, *,
                 batch_target_seconds: float = 0.02, max_batch: int = 500, explain_limit: int = 50,
                 sample_size: int = 8, rng: random.Random | None = None, prefetch: bool = True):
        self.strategies = dict(strategies)
        self.default = default
        self.batch_target_seconds = batch_target_seconds
        self.max_batch = max_batch
        self.explain_limit = explain_limit
        self.sample_size = sample_size
        self.rng = rng or random.Random()
        self.prefetch = prefetch  # a long job may wait on a worker when the queue is deep (has_room)
        self.duration: dict[str, float] = {}  # EWMA seconds per job, per task, over all workers
        self._eligible: dict[tuple[object, ...], list[WorkerSlot]] = {}
        self._version: int | None = None

    def strategy_for(self, queue: str) -> Strategy:
        return self.strategies.get(queue, self.default)

    def observe(self, task: str, seconds: float) -> None:
        self.duration[task] = ewma(self.duration.get(task), seconds, DURATION_ALPHA)

    def size_for(self, task: str) -> int:
        if task not in self.duration:
            return 1  # learn a task's duration from one job before batching it
        per_job = max(self.duration[task], 1e-6)
        return max(1, min(self.max_batch, int(self.batch_target_seconds / per_job)))

    def is_short(self, task: str) -> bool:
        return self.duration.get(task, float("inf")) < SHORT_SECONDS

    def fetch_limit(self, slots: Sequence[WorkerSlot]) -> int:
        """About as many jobs as the free rooms can take (a room each worker may prefetch into
        included): rows that stay queued are wasted work. At least enough to tell whether the
        queue is deep, so that a full fetch always is."""
        rooms = _rooms(slots, prefetch=self.prefetch)
        if rooms == 0:
            return 0
        per_room = max((self.size_for(t) for t in self.duration), default=1)
        return max(rooms * per_room, _deep(slots) if self.prefetch else 0) + 16

    def plan(self, jobs: Sequence[Job], slots: Sequence[WorkerSlot], now: float,
             version: int | None = None) -> Plan:
        """Batches for the ready jobs (in priority order); the rest stay queued, with a reason.
        `version` names the registry's state: while it holds, cached eligibility stays valid."""
        if version is None or version != self._version:
            self._eligible.clear()
            self._version = version
        plan = Plan()
        open_batch: dict[tuple[object, ...], Batch] = {}
        reasons: dict[tuple[object, ...], str] = {}
        idle_slots = sum(max(0, s.capacity - s.calls) for s in slots if s.status == "ready")
        # a queue deep enough that each worker's next job is certain: each may hold one waiting
        prefetch = self.prefetch and len(jobs) >= _deep(slots)
        free_rooms = _rooms(slots, prefetch)
        virtual: dict[str, float] = {}  # seconds of held-back work counted against busy workers
        for job in jobs:
            c = Constraints.of(job)
            size = 1 if (job.lost_count or c.requires) else self.size_for(job.task)
            key = (job.task, job.queue, c.key, tuple(sorted(c.prefers.items())))
            batch = open_batch.get(key)
            if size > 1 and batch is not None and len(batch.jobs) < size:
                batch.add(job)
                continue
            short = self.is_short(job.task)
            strategy = self.strategy_for(job.queue)
            # only a long job is prefetched: a short one queued behind a long job would wait for
            # it while other workers get through hundreds like it (short ones have their own rule)
            # and only of a task whose duration is known: a first job of its kind may be short
            candidates = self.candidates_for(job, c, slots, short, now, strategy,
                                             prefetch and not short and job.task in self.duration)
            self._fill_latency(job.task, candidates)
            for keep in getattr(strategy, "filters", ()):
                if isinstance(keep, PriorityReserve):
                    keep.pool_free = idle_slots
            slot = strategy.choose(job, candidates) if candidates else None
            if slot is not None and getattr(strategy, "waits_for_faster", False):
                faster = self._faster_busy_worker(job, c, slot, slots, virtual)
                if faster is not None:
                    # minimum completion time: this job is better off waiting for `faster` (a
                    # slow idle worker would finish it later); count it against faster's backlog
                    virtual[faster.address] = virtual.get(faster.address, 0.0) + faster.latency[job.task] / max(
                        1, faster.capacity)
                    if len(plan.waiting) < self.explain_limit:
                        plan.waiting[job.id] = f"waiting for a faster worker ({faster.name}) to free up"
                    continue
            if slot is None:
                if len(plan.waiting) < self.explain_limit:
                    why_key = (c.key, job.queue, job.task, bool(candidates))
                    if why_key not in reasons:  # one look at the registry per kind of job and round
                        reasons[why_key] = self.why_waiting(job, c, slots, bool(candidates), strategy, now)
                    plan.waiting[job.id] = reasons[why_key]
                if free_rooms <= 0:
                    break  # every worker is full: nothing further down the list can go either
                continue
            free_rooms -= 1
            idle_slots -= 1
            trial = self._begin_trials(slot, job.task, now)
            batch = Batch(slot, [job], long=not short, suspect=job.lost_count > 0,
                          strategy=strategy.name, trial=trial)
            batch.hold(c.requires)
            plan.batches.append(batch)
            if size > 1:
                open_batch[key] = batch
        return plan

    def candidates_for(self, job: Job, c: Constraints, slots: Sequence[WorkerSlot], short: bool,
                       now: float, strategy: Strategy, prefetch: bool = False) -> list[WorkerSlot]:
        key = (c.key, job.queue, job.task)
        eligible = self._eligible.get(key)
        if eligible is None:
            eligible = [s for s in slots if s.why_not(job, c) is None]
            if self._version is not None:
                self._eligible[key] = eligible
        if len(eligible) > self.sample_size and getattr(strategy, "samples", False):
            picked = self.candidates(job, c, self.rng.sample(eligible, self.sample_size), short, now, True,
                                     prefetch)
            if picked:
                return picked
        return self.candidates(job, c, eligible, short, now, True, prefetch)

    @staticmethod
    def candidates(job: Job, c: Constraints, slots: Sequence[WorkerSlot], short: bool,
                   now: float, eligible: bool = False, prefetch: bool = False) -> list[WorkerSlot]:
        """The workers that may take the job now; `eligible`: they are known to meet its hard
        constraints already (this runs once per decision, so it skips what it can)."""
        suspect = job.lost_count > 0
        out = []
        task = job.task
        for s in slots:
            if suspect:
                # a job that was on a worker when it died runs on an otherwise idle worker, and
                # nothing joins it there: if it is poison, it takes no innocent job down with it
                if s.status != "ready" or s.isolated or s.calls:
                    continue
            elif not s.has_room(short, prefetch):
                continue
            if s.breaker.opened_at is not None and not s.breaker.allows(now):
                continue
            task_breaker = s.task_breakers.get(task)
            if task_breaker is not None and task_breaker.opened_at is not None and not task_breaker.allows(now):
                continue
            if (eligible or s.why_not(job, c) is None) and (not c.requires or s.fits_now(c)):
                out.append(s)
        return out

    def _faster_busy_worker(self, job: Job, c: Constraints, chosen: WorkerSlot, slots: Sequence[WorkerSlot],
                            virtual: dict[str, float]) -> WorkerSlot | None:
        """A busy worker that would finish this job before `chosen` does, counting what it runs and
        what this round already held back for it. Only in pools small enough to look at whole:
        in large pools a free fast worker is almost always in the sample anyway."""
        mine = chosen.latency.get(job.task)
        eligible = self._eligible.get((c.key, job.queue, job.task))
        if mine is None or eligible is None or len(eligible) > self.sample_size * 4:
            return None
        # a prefetch room is behind what the worker runs: the job starts when one of those ends
        ahead = max(0, chosen.jobs + 1 - chosen.capacity)
        finish_here = (ahead + 1) * mine / max(1, chosen.capacity) + virtual.get(chosen.address, 0.0)
        best, best_finish = None, finish_here
        for s in eligible:
            lat = s.latency.get(job.task)
            if s is chosen or lat is None or s.status != "ready" or s.has_room(False):
                continue
            finish = (s.jobs + 1) * lat / max(1, s.capacity) + virtual.get(s.address, 0.0)
            if finish < best_finish:
                best, best_finish = s, finish
        return best

    def _fill_latency(self, task: str, candidates: Sequence[WorkerSlot]) -> None:
        """A worker that has not run this task yet is assumed as fast as the cluster's average,
        so that it is not passed over (or flooded) for lack of its own history."""
        average = self.duration.get(task)
        if average is not None:
            for s in candidates:
                s.latency.setdefault(task, average)

    @staticmethod
    def _begin_trials(slot: WorkerSlot, task: str, now: float) -> bool:
        trial = False
        for breaker in (slot.breaker, slot.breaker_for(task)):
            if breaker.state(now).value == "half_open":
                breaker.begin(now)
                trial = True
        return trial

    @staticmethod
    def why_waiting(job: Job, c: Constraints, slots: Sequence[WorkerSlot], had_candidates: bool,
                    strategy: Strategy, now: float) -> str:
        if had_candidates:
            return f"held back by the {strategy.name} strategy (capacity reserved for higher priority)"
        live = [s for s in slots if s.status != "gone"]
        if not live:
            return "no workers have joined the cluster yet"
        able = [s for s in live if s.why_not(job, c) is None]
        if not able:
            reasons = "; ".join(s.why_not(job, c) or "" for s in live[:5])
            return f"no current worker can run it: {reasons}"
        if all(s.status == "draining" for s in able):
            return "every worker that can run it is draining"
        if not any(s.breaker.allows(now) and s.breaker_for(job.task).allows(now) for s in able):
            names = ", ".join(s.name for s in able[:5])
            return f"circuit breakers are open on every worker that can run it ({names})"
        if not any(s.fits_now(c) for s in able):
            return f"waiting for free resources {dict(c.requires)} on a matching worker"
        return "every worker that can run it is busy"


def _rooms(slots: Sequence[WorkerSlot], prefetch: bool) -> int:
    return sum(max(0, s.capacity + 1 - s.calls) for s in slots if s.has_room(True, prefetch))


def _deep(slots: Sequence[WorkerSlot]) -> int:
    """Ready jobs from which the queue counts as deep: the idle rooms, and DEEP_QUEUE per worker."""
    ready = [s for s in slots if s.status == "ready"]
    return sum(max(0, s.capacity - s.calls) for s in ready) + DEEP_QUEUE * len(ready)
