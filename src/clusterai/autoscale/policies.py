"""Scaling policies, in the style of the placement strategies: each is a small object with one method,
`desired(snapshot, profile, current) -> Proposal | None` (None: no opinion this time).

Policies only propose; `combine` takes the largest proposal (capacity wins over thrift, so one policy
cannot starve another's demand), and the engine clamps, limits the step and applies cooldowns.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Protocol

from clusterai.autoscale.cron import Cron
from clusterai.autoscale.model import Profile, QueueDemand, Snapshot
from clusterai.core.smoothing import ewma

HOURS_PER_WEEK = 168


@dataclass(frozen=True, slots=True)
class Proposal:
    workers: int
    reason: str


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def desired(self, snapshot: Snapshot, profile: Profile, current: int) -> Proposal | None: ...


def runnable(snapshot: Snapshot, profile: Profile) -> list[QueueDemand]:
    return [d for d in snapshot.demand if profile.can_run(d)]


def combine(proposals: Iterable[tuple[str, Proposal | None]]) -> Proposal | None:
    """The largest proposal, its reason prefixed by the policy that made it; the first wins a tie."""
    best: tuple[str, Proposal] | None = None
    for name, proposal in proposals:
        if proposal is not None and (best is None or proposal.workers > best[1].workers):
            best = (name, proposal)
    if best is None:
        return None
    return Proposal(best[1].workers, f"{best[0]}: {best[1].reason}")


# -- reactive ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Reactive:
    """One step up when any signal crosses its high mark, one step down when every signal is below
    its low mark, and no change in between: the gap between the marks is the hysteresis band.

    cpu, memory and latency are cluster-wide, so they only count for a profile that has runnable
    work; without any, this policy has no opinion (target tracking and the engine shrink it).
    """

    cpu_high: float = 0.80
    memory_high: float = 0.85
    queue_high: int = 100
    latency_high_s: float = 0.5
    cpu_low: float = 0.30
    memory_low: float = 0.60
    queue_low: int = 10
    latency_low_s: float = 0.25
    step: int = 1
    name: str = "reactive"

    def desired(self, snapshot: Snapshot, profile: Profile, current: int) -> Proposal | None:
        work = runnable(snapshot, profile)
        if sum(d.active for d in work) == 0:
            return None
        queued = sum(d.queued for d in work)
        signals = (("cpu", snapshot.cpu, self.cpu_high, self.cpu_low),
                   ("memory", snapshot.memory, self.memory_high, self.memory_low),
                   ("queue", float(queued), float(self.queue_high), float(self.queue_low)),
                   ("latency_p95_s", snapshot.latency_p95_s, self.latency_high_s, self.latency_low_s))
        known = [(name, value, high, low) for name, value, high, low in signals if value is not None]
        crossed = [f"{name} {value:g} >= {high:g}" for name, value, high, _ in known if value >= high]
        if crossed:
            return Proposal(current + self.step, "; ".join(crossed))
        if all(value < low for _, value, _, low in known):
            return Proposal(max(current - self.step, 0), "every signal below its low mark")
        return Proposal(current, "within the hysteresis band")


# -- target tracking ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TargetTracking:
    """Enough workers to finish the runnable backlog within `target_duration_s`, from each kind of
    job's measured mean duration, as Dask's `Scheduler.adaptive_target` does:
    slots = ceil(sum(jobs * duration) / target), never more slots than jobs, then / concurrency.
    Running jobs count too, else the workers running them would look idle and be retired."""

    target_duration_s: float = 30.0
    unknown_duration_s: float = 0.5  # Dask's distributed.scheduler.unknown-task-duration
    name: str = "target_tracking"

    def desired(self, snapshot: Snapshot, profile: Profile, current: int) -> Proposal | None:
        work = runnable(snapshot, profile)
        jobs = sum(d.active for d in work)
        if jobs == 0:
            return Proposal(0, "no runnable backlog")
        seconds = sum(d.active * (d.mean_duration_s if d.mean_duration_s is not None else self.unknown_duration_s)
                      for d in work)
        slots = min(math.ceil(seconds / self.target_duration_s), jobs)
        workers = math.ceil(slots / profile.concurrency)
        return Proposal(workers, f"{seconds:g}s of work over a {self.target_duration_s:g}s target "
                                 f"needs {slots} slots, {workers} workers of {profile.concurrency}")


# -- scheduled ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    """At least `workers` for `duration_s` after each minute `cron` matches (so "0 8 * * 1-5" with
    36000 s is weekdays 08:00-18:00; "* 8-17 * * 1-5" with 60 s is the same hours)."""

    cron: Cron
    duration_s: float
    workers: int

    @classmethod
    def of(cls, cron: str, duration_s: float, workers: int) -> Window:
        return cls(Cron.parse(cron), duration_s, workers)

    @classmethod
    def hours(cls, days: str, hours: str, workers: int) -> Window:
        """Weekday and hour ranges, e.g. days "mon-fri", hours "8-17": active through 17:59."""
        return cls(Cron.parse(f"* {hours} * * {days}"), 60.0, workers)

    def active(self, at: datetime) -> bool:
        return self.cron.last_match(at, timedelta(seconds=self.duration_s)) is not None


@dataclass(frozen=True, slots=True)
class Scheduled:
    windows: Sequence[Window]
    tz: tzinfo = timezone.utc
    name: str = "scheduled"

    def desired(self, snapshot: Snapshot, profile: Profile, current: int) -> Proposal | None:
        at = datetime.fromtimestamp(snapshot.now, self.tz)
        active = [w for w in self.windows if w.active(at)]
        if not active:
            return None
        best = max(active, key=lambda w: w.workers)
        return Proposal(best.workers, f"window {best.cron.text!r} for {best.duration_s:g}s wants {best.workers}")


# -- predictive ---------------------------------------------------------------------------------

class Predictive:
    """Learns, per hour of the week (168 buckets, Monday 00:00 first), how many job slots were busy
    on average, smoothing each bucket over the weeks with an exponentially weighted mean (the latest
    week weighs `alpha`); `desired` asks for the larger of now and one lead time ahead, so workers
    are up (started, models loaded) when a recurring peak begins and stay until it ends.

    The lead time is `lead_s`, or the profile's `start_s` (which the engine keeps measured), plus
    `tick_s`, the time between two decisions: the last round before a peak may come that long
    before it, and must already see it."""

    name = "predictive"

    def __init__(self, history: Iterable[tuple[float, float]] = (), lead_s: float | None = None, *,
                 alpha: float = 0.3, tz: tzinfo = timezone.utc, noise_slots: float = 0.1, tick_s: float = 0.0) -> None:
        self.lead_s = lead_s
        self.tick_s = tick_s
        self.alpha = alpha
        self.tz = tz
        self.noise_slots = noise_slots  # below this many busy slots an hour counts as empty
        self._busy: dict[tuple[int, int], float] = defaultdict(float)  # (week, bucket) -> busy seconds
        self._since: float | None = None
        self._until: float | None = None
        self._buckets: list[float] | None = None
        self.learn(history)

    def learn(self, rows: Iterable[tuple[float, float]], until: float | None = None) -> None:
        """Add past jobs, each `(submitted_at_epoch, duration_s)`; `until` is when the history ends
        (default: the latest job's end), so hours not lived yet are not taken for quiet ones."""
        for submitted, duration in rows:
            self._add(float(submitted), max(float(duration), 0.0))
        if until is not None:
            self._until = until if self._until is None else max(self._until, until)
        self._buckets = None

    def _add(self, start: float, duration: float) -> None:
        self._since = start if self._since is None else min(self._since, start)
        end = start + min(duration, 7 * 86400.0)
        self._until = end if self._until is None else max(self._until, end)
        at = start
        while at < end:  # split the job's seconds over the hours it ran in
            t = datetime.fromtimestamp(at, self.tz)
            boundary = (t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)).timestamp()
            upto = min(end, boundary)
            self._busy[_week_and_bucket(t)] += upto - at
            at = upto

    def buckets(self) -> list[float]:
        """The learned busy slots per hour of the week."""
        if self._buckets is None:
            self._buckets = self._smooth()
        return self._buckets

    def _smooth(self) -> list[float]:
        smoothed: list[float | None] = [None] * HOURS_PER_WEEK
        if self._since is None or self._until is None:
            return [0.0] * HOURS_PER_WEEK
        hour = datetime.fromtimestamp(self._since, self.tz).replace(minute=0, second=0, microsecond=0)
        while hour.timestamp() + 3600 <= self._until:  # only hours wholly observed
            key = _week_and_bucket(hour)
            smoothed[key[1]] = ewma(smoothed[key[1]], self._busy.get(key, 0.0) / 3600.0, self.alpha)
            hour += timedelta(hours=1)
        return [value or 0.0 for value in smoothed]

    def expected_workers(self, at: float, concurrency: int) -> int:
        slots = self.buckets()[_week_and_bucket(datetime.fromtimestamp(at, self.tz))[1]]
        if slots < self.noise_slots:
            return 0
        return math.ceil(slots / max(concurrency, 1) - 1e-9)

    def desired(self, snapshot: Snapshot, profile: Profile, current: int) -> Proposal | None:
        if self._since is None:
            return None
        lead = (self.lead_s if self.lead_s is not None else profile.start_s) + self.tick_s
        now = self.expected_workers(snapshot.now, profile.concurrency)
        # every hour up to one lead time ahead: a lead longer than a peak must not step over it
        ahead = [snapshot.now + min(k * 3600.0, lead) for k in range(1, math.ceil(lead / 3600.0) + 1)]
        soon = max((self.expected_workers(t, profile.concurrency) for t in ahead), default=0)
        if soon > now:
            return Proposal(soon, f"history expects {soon} workers within {lead:g}s (the lead time)")
        return Proposal(now, f"history expects {now} workers this hour of the week")


def _week_and_bucket(t: datetime) -> tuple[int, int]:
    monday = t.date() - timedelta(days=t.weekday())
    return monday.toordinal(), t.weekday() * 24 + t.hour
