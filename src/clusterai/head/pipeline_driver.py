"""Moves pipeline runs forward from inside the coordinator's process.

The coordinator tells the driver when a job ends; if that job belongs to a running pipeline run,
the run is advanced at once (its next stage jobs created). A slow sweep picks up runs started
elsewhere (the API, another client, a previous coordinator that died) and changes made behind
the coordinator's back (a stage job cancelled through the API).
"""

from __future__ import annotations

import asyncio
import logging
import time

from clusterai.core.model import State
from clusterai.errors import ClusterAIError, StoreUnavailable
from clusterai.service.runs import PipelineRunner

log = logging.getLogger("clusterai.core.pipelines")


class PipelineDriver:
    def __init__(self, runner: PipelineRunner, *, sweep_every: float = 0.25, full_sweep_every: float = 10.0):
        self.runner = runner
        self.sweep_every = sweep_every
        self.full_sweep_every = full_sweep_every
        self._waiting_on: dict[int, set[int]] = {}  # unfinished stage job -> runs that wait for it
        self._known: set[int] = set()
        self._dirty: set[int] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def poke(self, run_id: int) -> None:
        """Thread-safe: look at this run now (started or retried by a client in this process)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._mark, run_id)

    def _mark(self, run_id: int) -> None:
        self._dirty.add(run_id)
        if self._wake is not None:
            self._wake.set()

    def job_finished(self, job_id: int, state: State) -> None:
        """A coordinator listener (called on its loop)."""
        runs = self._waiting_on.pop(job_id, None)
        if runs:
            self._dirty |= runs
            if self._wake is not None:
                self._wake.set()

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="clusterai-pipelines")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        assert self._wake is not None
        next_sweep = 0.0
        next_full = time.monotonic() + self.full_sweep_every
        while True:
            now = time.monotonic()
            try:
                if now >= next_sweep:
                    active = set(self.runner.store.active_runs())
                    self._dirty |= active - self._known
                    if now >= next_full:
                        self._dirty |= active
                        next_full = now + self.full_sweep_every
                    self._known = active
                    next_sweep = now + self.sweep_every
                self._advance_dirty()
            except StoreUnavailable as exc:
                log.warning("store unavailable while advancing pipelines: %s", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, next_sweep - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _advance_dirty(self) -> None:
        while self._dirty:
            run_id = self._dirty.pop()
            try:
                unfinished = self.runner.advance(run_id)
            except StoreUnavailable:
                self._dirty.add(run_id)
                raise
            except ClusterAIError as exc:  # a broken run must not stop the others
                log.error("pipeline run %d cannot advance: %s", run_id, exc)
                continue
            except Exception:
                log.exception("pipeline run %d cannot advance", run_id)
                continue
            self._known.add(run_id)
            for job_id in unfinished:
                self._waiting_on.setdefault(job_id, set()).add(run_id)
