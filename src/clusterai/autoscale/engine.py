"""The autoscaler: from a snapshot to one decision per profile, and which workers may go.

Per profile and tick: the policies propose, `combine` takes the largest, the engine clamps it to the
profile's bounds, limits the change to `max_step`, and holds it back during a cooldown. Cooldowns are
per direction: growing again needs `up_cooldown_s` since the last change, shrinking needs
`down_cooldown_s` since the last change of either direction, so a square wave of demand costs at
most one rise and one fall per period instead of a flap every tick. Getting back within a profile's
bounds (fewer than min, more than max) ignores cooldowns: those are rules, not reactions to load.

Each demand group is given to the first profile (in configured order) that can run it, so a job any
profile can run does not grow every profile; list cheaper profiles first. Demand no profile can run
is reported as `Plan.unschedulable`, never scaled for.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from clusterai.autoscale.model import Decision, DecisionRecord, Profile, QueueDemand, Snapshot, WorkerView
from clusterai.autoscale.policies import Policy, combine
from clusterai.core.smoothing import ewma
from clusterai.errors import AutoscaleConfigError


@dataclass(frozen=True, slots=True)
class Retirement:
    stop_now: list[str]  # nothing running on them: stop at once
    drain: list[str]  # stop placing on them, let their jobs finish, then retire (they come back in stop_now)


def choose_to_retire(workers: Sequence[WorkerView], count: int) -> Retirement:
    """The safe order to remove `count` workers: launched-but-not-started first, then idle ones
    (longest idle first), then busy ones, which are only ever drained, never stopped. Workers that
    were draining and have finished are always added to `stop_now`; they do not count towards
    `count` (the engine's `current` already left them out). Workers with no profile are never chosen."""
    managed = [w for w in workers if w.profile is not None]
    finished = sorted(w.name for w in managed if w.draining and w.busy == 0)
    pool = [w for w in managed if not w.draining]
    unstarted = sorted((w for w in pool if not w.started and w.busy == 0), key=lambda w: w.name)
    idle = sorted((w for w in pool if w.started and w.busy == 0),
                  key=lambda w: (w.idle_since is None, w.idle_since or 0.0, w.name))
    busy = sorted((w for w in pool if w.busy > 0), key=lambda w: (w.busy, w.name))  # soonest done first
    count = max(count, 0)
    stop = [w.name for w in (unstarted + idle)[:count]]
    drain = [w.name for w in busy[:count - len(stop)]]
    return Retirement(stop_now=finished + stop, drain=drain)


@dataclass(frozen=True, slots=True)
class Plan:
    """What `decide` answers: a decision per profile (iterate the plan for them) and the demand
    that no profile can run."""

    decisions: list[Decision]
    unschedulable: list[QueueDemand]
    logged: list[DecisionRecord] = field(default_factory=list)  # what this round added to the decision log

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)

    def __getitem__(self, index: int) -> Decision:
        return self.decisions[index]

    def of(self, profile: str) -> Decision:
        for decision in self.decisions:
            if decision.profile == profile:
                return decision
        raise KeyError(profile)


class Autoscaler:
    def __init__(self, profiles: Sequence[Profile], policies: Sequence[Policy] | Mapping[str, Sequence[Policy]],
                 *, up_cooldown_s: float = 30.0, down_cooldown_s: float = 120.0, max_step: int = 4,
                 clock: Callable[[], float] = time.monotonic, log_size: int = 200,
                 start_alpha: float = 0.3) -> None:
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            raise AutoscaleConfigError(f"profile names must be unique, got {names}")
        if isinstance(policies, Mapping):
            unknown = sorted(set(policies) - set(names))
            if unknown:
                raise AutoscaleConfigError(f"policies name unknown profiles {unknown}; profiles are {names}")
            self._policies = {name: list(policies.get(name, ())) for name in names}
        else:
            self._policies = {name: list(policies) for name in names}
        if max_step < 1:
            raise AutoscaleConfigError(f"max_step ({max_step}) must be at least 1")
        if up_cooldown_s < 0 or down_cooldown_s < 0:
            raise AutoscaleConfigError("cooldowns must not be negative")
        self.profiles = list(profiles)
        self.up_cooldown_s = up_cooldown_s
        self.down_cooldown_s = down_cooldown_s
        self.max_step = max_step
        self._clock = clock
        self._start_alpha = start_alpha
        self._last_up: dict[str, float] = {}
        self._last_down: dict[str, float] = {}
        self._launching: dict[str, tuple[str, float]] = {}  # unstarted worker -> (profile, first seen)
        self._start_s: dict[str, float] = {}  # measured lead time per profile
        self._measured: set[str] = set()  # workers whose start was measured already
        self._log: deque[DecisionRecord] = deque(maxlen=log_size)
        self._logged: list[DecisionRecord] = []  # this round's records (decide resets it)
        self._last_change: dict[str, tuple[int, int]] = {}

    @property
    def log(self) -> list[DecisionRecord]:
        """The last changes of size (holds are not logged: every tick would be one; nor is the same
        change twice in a row)."""
        return list(self._log)

    def start_s(self, profile: Profile) -> float:
        """The lead time policies see: measured from launch to registration once seen, else declared."""
        return self._start_s.get(profile.name, profile.start_s)

    def decide(self, snapshot: Snapshot) -> Plan:
        now = self._clock()
        self._observe_starts(snapshot, now)
        assigned: dict[str, list[QueueDemand]] = {p.name: [] for p in self.profiles}
        unschedulable: list[QueueDemand] = []
        for demand in snapshot.demand:
            if demand.active == 0:
                continue
            owner = next((p for p in self.profiles if p.can_run(demand)), None)
            if owner is not None:
                assigned[owner.name].append(demand)
            elif demand.queued > 0:
                unschedulable.append(demand)
        self._logged = []
        decisions = [self._decide_one(replace(snapshot, demand=assigned[p.name]), p, now) for p in self.profiles]
        return Plan(decisions, unschedulable, self._logged)

    def _decide_one(self, snapshot: Snapshot, declared: Profile, now: float) -> Decision:
        profile = replace(declared, start_s=self.start_s(declared))
        mine = snapshot.workers_of(profile.name)
        current = sum(1 for w in mine if not w.draining)
        proposals = [(policy.name, policy.desired(snapshot, profile, current))
                     for policy in self._policies[profile.name]]
        combined = combine(proposals)
        active = sum(d.active for d in snapshot.demand)
        busy = sum(w.busy for w in mine)
        if combined is not None:
            target, reason = combined.workers, combined.reason
        elif active == 0 and busy == 0:
            target, reason = profile.min, "idle: no runnable demand"
        else:
            target, reason = current, "no policy has an opinion"

        bounded = min(max(target, profile.min), profile.max)
        if bounded != target:
            reason += f"; clamped to {bounded} (bounds {profile.min}..{profile.max})"
        step = max(-self.max_step, min(self.max_step, bounded - current))
        if step != bounded - current:
            reason += f"; step limited to {self.max_step}"
        desired = current + step

        wait = self._cooldown_left(profile.name, desired > current, now) if desired != current else 0.0
        if wait > 0:
            wanted = desired
            # bounds are rules, not reactions to load: back inside them even during a cooldown
            inside = min(max(current, profile.min), profile.max)
            desired = current + max(-self.max_step, min(self.max_step, inside - current))
            reason = f"{'up' if wanted > current else 'down'} cooldown, {wait:.0f}s left (wanted {wanted}: {reason})"
            if desired != current:
                reason = f"back within bounds {profile.min}..{profile.max}; {reason}"
        if desired > current:
            self._last_up[profile.name] = now
        elif desired < current:
            self._last_down[profile.name] = now

        inputs: dict[str, Any] = {
            "current": current, "target": target, "bounded": bounded, "cooldown_left_s": round(wait, 3),
            "proposals": {name: None if p is None else {"workers": p.workers, "reason": p.reason}
                          for name, p in proposals},
            "queued": sum(d.queued for d in snapshot.demand), "running": sum(d.running for d in snapshot.demand),
            "busy": busy, "starting": sum(1 for w in mine if not w.started),
            "draining": sum(1 for w in mine if w.draining), "start_s": profile.start_s,
            "cpu": snapshot.cpu, "memory": snapshot.memory, "latency_p95_s": snapshot.latency_p95_s,
        }
        decision = Decision(profile.name, current, desired, reason, inputs)
        # the same change again (a launch that failed, an outside scaler that has not acted yet) is
        # not news until the profile did something else in between
        if desired != current and self._last_change.get(profile.name) != (current, desired):
            record = DecisionRecord.of(snapshot.now, decision)
            self._log.append(record)
            self._logged.append(record)
        self._last_change[profile.name] = (current, desired)
        return decision

    def _cooldown_left(self, profile: str, up: bool, now: float) -> float:
        cooldown = self.up_cooldown_s if up else self.down_cooldown_s
        last = max(self._last_up.get(profile, float("-inf")), self._last_down.get(profile, float("-inf")))
        return max(last + cooldown - now, 0.0)

    def _observe_starts(self, snapshot: Snapshot, now: float) -> None:
        """Measure launch-to-registration per profile: from the provider's launch time when the
        snapshot carries it (epoch seconds, exact even for a worker that registers within one
        round), else from the first round that saw the worker unstarted (up to a round short)."""
        present = set()
        for w in snapshot.workers:
            present.add(w.name)
            if w.profile is None or w.name in self._measured:
                continue
            if not w.started:
                self._launching.setdefault(w.name, (w.profile, now))
                continue
            if w.launched_at is not None:
                took = snapshot.now - w.launched_at
            elif w.name in self._launching:
                took = now - self._launching[w.name][1]
            else:
                continue  # up before this autoscaler saw it launch: nothing to measure
            self._launching.pop(w.name, None)
            self._measured.add(w.name)
            self._start_s[w.profile] = ewma(self._start_s.get(w.profile), max(took, 0.0), self._start_alpha)
        for name in set(self._launching) - present:
            del self._launching[name]
        self._measured &= present
