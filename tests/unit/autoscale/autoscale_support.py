"""Helpers for the autoscaler's tests: a fake clock and a toy cluster whose backlog real workers drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterai.autoscale import Autoscaler, Decision, Profile, QueueDemand, Snapshot, WorkerView

MONDAY = 1_704_067_200.0  # 2024-01-01 00:00 UTC, a Monday


class FakeClock:
    def __init__(self, t: float = 10_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def demand(queued: int = 0, running: int = 0, duration: float | None = 1.0, queue: str = "default",
           requires: dict[str, float] | None = None, labels: frozenset[str] = frozenset()) -> QueueDemand:
    return QueueDemand(queue, requires or {}, labels, queued, running, duration)


def idle_workers(profile: str, n: int, since: float = 0.0) -> list[WorkerView]:
    return [WorkerView(f"{profile}-{i}", profile, idle_since=since) for i in range(n)]


def directions(decisions: list[Decision]) -> list[int]:
    """+1 / -1 for every change of size, in order."""
    return [1 if d.delta > 0 else -1 for d in decisions if d.delta != 0]


def flips(signs: list[int]) -> int:
    """Changes of direction: up then down, or down then up (the first move is not a flip)."""
    return sum(1 for a, b in zip(signs, signs[1:]) if a != b)


@dataclass
class ToyCluster:
    """Jobs arrive at `rate` a second; each started worker runs `concurrency` at once, each job taking
    `duration` s; the autoscaler's decisions are applied at once (workers start within one tick)."""

    autoscaler: Autoscaler
    profile: Profile
    clock: FakeClock
    duration: float = 3.0
    dt: float = 5.0
    backlog: float = 0.0
    workers: int = 0
    history: list[tuple[float, Decision]] = field(default_factory=list)

    def tick(self, rate: float) -> Decision:
        slots = self.workers * self.profile.concurrency
        running = min(math.ceil(self.backlog), slots)
        queued = max(math.ceil(self.backlog) - running, 0)
        views = []
        left = running
        for i in range(self.workers):
            busy = min(left, self.profile.concurrency)
            left -= busy
            views.append(WorkerView(f"w{i}", self.profile.name, busy=busy, concurrency=self.profile.concurrency,
                                    idle_since=None if busy else self.clock.t))
        snapshot = Snapshot(now=MONDAY + self.clock.t, demand=[demand(queued, running, self.duration)],
                            workers=views, cpu=running / slots if slots else None)
        decision = self.autoscaler.decide(snapshot).of(self.profile.name)
        self.history.append((self.clock.t, decision))
        self.workers = decision.desired
        done = min(running * self.dt / self.duration, self.backlog)
        self.backlog = max(self.backlog - done + rate * self.dt, 0.0)
        self.clock.advance(self.dt)
        return decision


FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True  # not Linux: trust kill(0)
    return state != "Z"


async def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def read_record(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def kill_leftovers(directory: Path) -> None:
    """After a test, whatever it asserted: no fake worker (or its child) survives it."""
    for path in directory.glob("*.json"):
        record = json.loads(path.read_text())
        for pid in (record["pid"], record["child"]):
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
