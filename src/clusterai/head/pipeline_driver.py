"""Moves pipeline runs forward from inside the coordinator's process.

The coordinator tells the driver when a job ends; if that job belongs to a running pipeline run,
the run is advanced at once (its next stage jobs created), the runs made ready by one commit batch
together. The runner keeps each run it advances in memory, so an advance reads from the store only
what finished since and costs what changed, not the size of the run. A quick sweep picks up runs
started elsewhere (the API, another client, a previous coordinator that died); a slow one reads
every running run whole again, for changes made behind the coordinator's back (a stage job
cancelled through the API).
"""

from __future__ import annotations

import asyncio
import logging
import time

from clusterai.core.model import State
from clusterai.errors import ClusterAIError, RunNotFound, StoreUnavailable
from clusterai.service.runs import PipelineRunner

log = logging.getLogger("clusterai.core.pipelines")


class PipelineDriver:
    def __init__(self, runner: PipelineRunner, *, sweep_every: float = 0.25, full_sweep_every: float = 10.0,
                 start_grace: float = 2.0):
        self.runner = runner
        self.sweep_every = sweep_every
        self.full_sweep_every = full_sweep_every
        self.start_grace = start_grace  # how long a run nobody has advanced yet is left to its starter
        self._starting: dict[int, float] = {}  # such runs -> when the quick sweep first saw them
        self._waiting_on: dict[int, set[int]] = {}  # unfinished stage job -> runs that wait for it
        self._known: set[int] = set()
        self._dirty: dict[int, set[int] | None] = {}  # run -> its jobs finished since (None: read it whole)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def poke(self, run_id: int) -> None:
        """Thread-safe: look at this run now (started or retried by a client in this process)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._mark, run_id)

    def _mark(self, run_id: int) -> None:
        self._dirty[run_id] = None
        if self._wake is not None:
            self._wake.set()

    def job_finished(self, job_id: int, state: State) -> None:
        """A coordinator listener (called on its loop)."""
        runs = self._waiting_on.pop(job_id, None)
        if runs:
            for run_id in runs:
                finished = self._dirty.setdefault(run_id, set())
                if finished is not None:
                    finished.add(job_id)
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
                    if now >= next_full:  # every running run read whole again
                        wanted, next_full = active, now + self.full_sweep_every
                    else:
                        wanted = {r for r in active - self._known if not self._being_started(r, now)}
                    for run_id in wanted:
                        self._dirty[run_id] = None
                    self._forget(self._known - active)
                    self._known = (self._known & active) | wanted
                    self._starting = {r: t for r, t in self._starting.items() if r in active}
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

    def _being_started(self, run_id: int, now: float) -> bool:
        """A run just stored whose starter is still creating its first stage jobs (nothing has
        moved its updated_at yet): advancing it now would plan and look up the same jobs twice,
        with the coordinator's loop waiting. Its starter's poke, or the next quick sweep after its
        first jobs are stored, brings it in; a starter that died leaves it for start_grace."""
        try:
            _, created_at, updated_at = self.runner.store.run_head(run_id)
        except RunNotFound:  # gone meanwhile: advancing it says so
            return False
        if updated_at != created_at or now - self._starting.setdefault(run_id, now) >= self.start_grace:
            self._starting.pop(run_id, None)
            return False
        return True

    def _forget(self, runs: set[int]) -> None:
        """Runs that finished (here or elsewhere): out of memory."""
        if not runs:
            return
        for run_id in runs:
            self.runner.forget(run_id)
        for job_id in [j for j, waiting in self._waiting_on.items() if waiting & runs]:
            left = self._waiting_on[job_id] - runs
            if left:
                self._waiting_on[job_id] = left
            else:
                del self._waiting_on[job_id]

    def _advance_dirty(self) -> None:
        while self._dirty:
            run_id, finished = self._dirty.popitem()
            try:
                unfinished = self.runner.advance(run_id, finished, keep=True)
            except StoreUnavailable:
                self._dirty[run_id] = None  # the runner let go of it: read it whole next time
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
