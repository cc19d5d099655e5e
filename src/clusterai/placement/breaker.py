"""Circuit breaker: a worker (or a worker for one task) that keeps failing is taken out of rotation
for a cooldown, then trusted with one trial job before it is closed again."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"  # in rotation
    OPEN = "open"  # out of rotation until the cooldown ends
    HALF_OPEN = "half_open"  # one trial job allowed; its outcome closes or reopens it


# how metrics show a breaker's state (a gauge): the worst of a worker's breakers is the highest
BREAKER_VALUES = {BreakerState.CLOSED.value: 0, BreakerState.HALF_OPEN.value: 1, BreakerState.OPEN.value: 2}


@dataclass
class CircuitBreaker:
    failures: int = 5  # consecutive failures that open the breaker
    cooldown: float = 30.0
    consecutive: int = 0
    opened_at: float | None = None
    trial_running: bool = False

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at < self.cooldown:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allows(self, now: float) -> bool:
        """May work be sent now? (Does not reserve the half-open trial: see `begin`.)"""
        state = self.state(now)
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self.trial_running)

    def begin(self, now: float) -> None:
        if self.state(now) is BreakerState.HALF_OPEN:
            self.trial_running = True

    def record(self, success: bool, now: float) -> None:
        if success:
            self.consecutive = 0
            self.opened_at = None
        else:
            self.consecutive += 1
            half_open = self.state(now) is BreakerState.HALF_OPEN
            if half_open or self.consecutive >= self.failures:
                self.opened_at = now
        self.trial_running = False

    def abandon_trial(self) -> None:
        """The trial never reached the worker (nothing to learn from it)."""
        self.trial_running = False
