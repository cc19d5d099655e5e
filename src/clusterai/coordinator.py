"""The coordinator: one asyncio loop that claims ready jobs, places them on workers, hands them to
Dask in batches, and commits every outcome to the store under the attempt's fencing token.

The store is the source of truth. Dask may lose a worker or run a function twice; the store
accepts exactly one outcome per attempt that still holds the lease, and records the rest as late.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from distributed.comm.core import CommClosedError

from clusterai.config import CoordinatorSection
from clusterai.errors import StoreUnavailable
from clusterai.jobs.model import Finish, Job, Outcome, State, WorkerRecord, canonical_json, decide
from clusterai.jobs.store import JobStore
from clusterai.placement import WorkerSlot, make_strategy

log = logging.getLogger("clusterai.coordinator")

Listener = Callable[[int, State], None]
_WORKER_GONE = (CommClosedError, OSError, EOFError)
_EWMA_ALPHA = 0.2
_SHORT_SECONDS = 0.05
_MAX_FETCH = 5000


class _Batch:
    """Jobs sent to one worker in one call; holds one of the worker's rooms until released."""

    def __init__(self, slot: WorkerSlot, jobs: list[Job], *, long: bool, suspect: bool):
        self.slot, self.jobs, self.long, self.suspect = slot, jobs, long, suspect
        slot.calls += 1
        slot.long_calls += long
        slot.isolated = slot.isolated or suspect

    def release(self) -> None:
        self.slot.calls -= 1
        self.slot.long_calls -= self.long
        if self.suspect:
            self.slot.isolated = False


class Coordinator:
    def __init__(
        self,
        store: JobStore,
        dask_client: Any,
        *,
        settings: CoordinatorSection | None = None,
        rng: random.Random | None = None,
    ):
        self.store = store
        self.client = dask_client
        self.settings = settings or CoordinatorSection()
        self.strategy = make_strategy(self.settings.strategy)
        self.rng = rng or random.Random()
        self.slots: dict[str, WorkerSlot] = {}
        self._ewma: dict[str, float] = {}
        self._inflight: dict[int, Job] = {}
        self._listeners: list[Listener] = []
        self._loops: list[asyncio.Task[None]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._next_due: float | None = None
        self._next_promote = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.started_at = time.time()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await self._abandon_previous_attempts()
        await self._refresh_workers()
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="clusterai-dispatch"),
            asyncio.create_task(self._lease_loop(), name="clusterai-leases"),
            asyncio.create_task(self._registry_loop(), name="clusterai-registry"),
        ]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in list(self._batches):
            task.cancel()
        await asyncio.gather(*self._loops, *self._batches, return_exceptions=True)
        # hand unfinished attempts back at once rather than waiting for their leases to expire
        now = time.time()
        finishes = [self._decide(job, Outcome.ABANDONED, now, error="coordinator stopped")
                    for job in self._inflight.values()]
        self._inflight.clear()
        if finishes:
            try:
                self.store.finish_attempts(finishes, now)
            except StoreUnavailable:
                log.warning("store unavailable at shutdown; leases will expire instead")

    def wake(self) -> None:
        """Thread-safe: there is new work to look at."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def add_listener(self, listener: Listener) -> None:
        """Called on the coordinator's loop whenever a job reaches a final state."""
        self._listeners.append(listener)

    async def _abandon_previous_attempts(self) -> None:
        # Attempts marked running belong to a coordinator that died: nobody will renew their
        # leases, so give them back now. A worker still running one answers late and is fenced off.
        now = time.time()
        stale = self.store.running_jobs()
        if stale:
            finishes = [self._decide(job, Outcome.ABANDONED, now, error="coordinator restarted")
                        for job in stale]
            self.store.finish_attempts(finishes, now)
            log.info("gave back %d attempts left running by a previous coordinator", len(stale))

    # -- dispatch -----------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except asyncio.TimeoutError:
                due = self._next_due is not None and time.time() >= self._next_due
                if not (self.store.changed() or due or time.time() >= self._next_promote):
                    continue
            self._wake.clear()
            try:
                if self._dispatch_once():
                    self._wake.set()  # more ready work than this round could place
            except StoreUnavailable as exc:
                log.warning("store unavailable, retrying: %s", exc)
                await asyncio.sleep(0.5)

    def _dispatch_once(self) -> bool:
        now = time.time()
        if now >= self._next_promote or (self._next_due is not None and now >= self._next_due):
            self.store.promote_due(now)
            self._next_due = self.store.next_due_at()
            self._next_promote = now + 1.0
        rooms = sum(max(0, s.nthreads + 1 - s.calls) for s in self.slots.values()
                    if s.status == "ready")
        if rooms == 0:
            return False
        # fetch about what the free rooms can take: parsing rows that stay queued is wasted work
        per_room = max((self._size_for(t) for t in self._ewma), default=1)
        limit = min(_MAX_FETCH, rooms * per_room + 16)
        jobs = self.store.fetch_ready(limit)
        if not jobs:
            return False
        plans = self._plan(jobs)
        if not plans:
            return False
        assignments = [(job.id, batch.slot.address) for batch in plans for job in batch.jobs]
        lease_until = now + self.settings.lease_seconds
        try:
            started = {job.id: job for job in self.store.start_attempts(assignments, now, lease_until)}
        except StoreUnavailable:
            for batch in plans:
                batch.release()
            raise
        for batch in plans:
            batch.jobs = [started[job.id] for job in batch.jobs if job.id in started]
            if batch.jobs:
                task = asyncio.create_task(self._run_batch(batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
            else:
                batch.release()  # every job in it was cancelled since it was fetched
        return len(jobs) == limit

    def _plan(self, jobs: Sequence[Job]) -> list[_Batch]:
        """Group ready jobs (in priority order) into batches and give each batch a worker."""
        plans: list[_Batch] = []
        open_batch: dict[str, _Batch] = {}
        for job in jobs:
            size = self._batch_size(job)
            batch = open_batch.get(job.task)
            if size > 1 and batch is not None and len(batch.jobs) < size:
                batch.jobs.append(job)
                continue
            suspect = job.lost_count > 0
            short = self._is_short(job.task)
            if suspect:
                # a job that was on a worker when it died runs on an otherwise idle worker, and
                # nothing joins it there: if it is poison, it takes no innocent job down with it
                candidates = [s for s in self.slots.values()
                              if s.status == "ready" and not s.isolated and s.calls == 0]
            else:
                candidates = [s for s in self.slots.values() if s.has_room(short)]
            if not candidates:
                if not any(s.has_room(True) for s in self.slots.values()):
                    break
                continue
            slot = self.strategy.choose(job, candidates)
            if slot is None:
                continue
            batch = _Batch(slot, [job], long=not short, suspect=suspect)
            plans.append(batch)
            if size > 1:
                open_batch[job.task] = batch
        return plans

    def _batch_size(self, job: Job) -> int:
        # Jobs that were on a worker when it died run alone, so a poison job cannot take
        # innocent batch-mates down with it again.
        if job.lost_count > 0:
            return 1
        return self._size_for(job.task)

    def _size_for(self, task: str) -> int:
        if task not in self._ewma:
            return 1  # learn a task's duration from one job before batching it
        per_job = max(self._ewma[task], 1e-6)
        return max(1, min(self.settings.max_batch, int(self.settings.batch_target_seconds / per_job)))

    def _is_short(self, task: str) -> bool:
        return self._ewma.get(task, float("inf")) < _SHORT_SECONDS

    # -- running a batch on a worker ----------------------------------------------------------

    async def _run_batch(self, batch: _Batch) -> None:
        slot, jobs = batch.slot, batch.jobs
        for job in jobs:
            self._inflight[job.id] = job
        slot.jobs += len(jobs)
        items = [{"id": j.id, "attempt": j.attempt, "task": j.task,
                  "payload": canonical_json(j.payload), "timeout": j.timeout} for j in jobs]
        hard_limit = None
        if all(j.timeout for j in jobs):
            hard_limit = sum(j.timeout or 0 for j in jobs) + self.settings.hard_timeout_grace
        try:
            finishes = await self._call_worker(slot, jobs, items, hard_limit)
            await self._commit(finishes)
        finally:
            batch.release()
            slot.jobs -= len(jobs)
            for job in jobs:
                if self._inflight.get(job.id) is job:
                    del self._inflight[job.id]
            if slot.status == "gone" and slot.calls == 0:
                self.slots.pop(slot.address, None)
            if self._wake is not None:
                self._wake.set()

    async def _call_worker(
        self, slot: WorkerSlot, jobs: list[Job], items: list[dict[str, Any]], hard_limit: float | None
    ) -> list[Finish]:
        call = self.client.rpc(slot.address).clusterai_run(items=items)
        try:
            replies = await (asyncio.wait_for(call, hard_limit) if hard_limit else call)
        except asyncio.TimeoutError:
            now = time.time()
            asyncio.create_task(self._restart_worker(slot))
            why = (f"JobTimeout: still running past its timeout plus "
                   f"{self.settings.hard_timeout_grace} s; worker {slot.name} restarted")
            return [self._decide(j, Outcome.TIMEOUT, now, error=why) for j in jobs]
        except _WORKER_GONE as exc:
            now = time.time()
            slot.status = "gone"
            why = f"worker {slot.name} ({slot.address}) lost: {type(exc).__name__}: {exc}"
            log.warning("%s; %d attempts go back to the queue", why, len(jobs))
            return [self._decide(j, Outcome.LOST, now, error=why) for j in jobs]
        if not isinstance(replies, (list, tuple)):
            # a worker without the clusterai plugin answers None to our handler
            slot.status = "unresponsive"
            now = time.time()
            why = f"worker {slot.name} did not run the batch (no clusterai plugin?): {replies!r}"
            return [self._decide(j, Outcome.LOST, now, error=why) for j in jobs]
        return self._finishes_from(slot, jobs, list(replies))

    def _finishes_from(
        self, slot: WorkerSlot, jobs: list[Job], replies: list[dict[str, Any]]
    ) -> list[Finish]:
        now = time.time()
        by_id = {j.id: j for j in jobs}
        finishes = []
        for reply in replies:
            job = by_id[reply["id"]]
            outcome = Outcome(reply["outcome"])
            self._observe(job.task, reply.get("duration", 0.0))
            if outcome is Outcome.SUCCEEDED:
                slot.completed += 1
            else:
                slot.failed += 1
            finishes.append(self._decide(
                job, outcome, now, retryable=reply.get("retryable", True),
                result_json=reply.get("result"), error=reply.get("error"),
            ))
        return finishes

    def _decide(self, job: Job, outcome: Outcome, now: float, **kwargs: Any) -> Finish:
        return decide(job, outcome, now=now, poison_threshold=self.settings.poison_threshold,
                      rng=self.rng, **kwargs)

    def _observe(self, task: str, seconds: float) -> None:
        previous = self._ewma.get(task)
        self._ewma[task] = seconds if previous is None else (
            _EWMA_ALPHA * seconds + (1 - _EWMA_ALPHA) * previous)

    async def _commit(self, finishes: list[Finish]) -> None:
        """Write outcomes; while the store is down, keep them and try again (never drop one)."""
        delay = 0.1
        while True:
            try:
                accepted = self.store.finish_attempts(finishes, time.time())
                break
            except StoreUnavailable as exc:
                log.warning("store unavailable while committing %d outcomes: %s", len(finishes), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for finish, ok in zip(finishes, accepted):
            if not ok:
                continue
            if finish.state is State.PENDING and finish.run_at is not None:
                self._next_due = min(self._next_due or finish.run_at, finish.run_at)
            if finish.state.terminal:
                for listener in self._listeners:
                    listener(finish.job_id, finish.state)

    async def _restart_worker(self, slot: WorkerSlot) -> None:
        slot.status = "unresponsive"
        try:
            await self.client.restart_workers([slot.address], raise_for_error=False)
        except Exception as exc:  # noqa: BLE001 - the registry loop notices whatever happened
            log.warning("could not restart worker %s: %s", slot.name, exc)

    # -- liveness -----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(period)
            try:
                await self._renew_and_expire(period)
            except StoreUnavailable as exc:
                log.warning("store unavailable during lease check: %s", exc)

    async def _renew_and_expire(self, ping_timeout: float) -> None:
        watched = [s for s in self.slots.values()
                   if s.status != "gone" and (s.jobs > 0 or s.status == "unresponsive")]
        answers = await asyncio.gather(
            *(self._ping(slot, ping_timeout) for slot in watched), return_exceptions=True
        )
        now = time.time()
        for slot, answer in zip(watched, answers):
            if answer is True:
                slot.last_ok = now
                if slot.status == "unresponsive":
                    slot.status = "ready"
                self.store.renew_leases(slot.address, now + self.settings.lease_seconds)
            elif slot.status == "ready":
                slot.status = "unresponsive"
                log.warning("worker %s does not answer; no new work until it does", slot.name)
        expired = self.store.expired_leases(now)
        if expired:
            finishes = [self._decide(j, Outcome.EXPIRED, now,
                                     error=f"lease expired on worker {j.worker}: it stopped answering")
                        for j in expired]
            await self._commit(finishes)
            self._wake_set()

    async def _ping(self, slot: WorkerSlot, timeout: float) -> bool:
        await asyncio.wait_for(self.client.rpc(slot.address).clusterai_ping(), timeout)
        return True

    def _wake_set(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _registry_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._refresh_workers()
            except StoreUnavailable as exc:
                log.warning("store unavailable while saving the worker registry: %s", exc)
            except Exception as exc:  # noqa: BLE001 - a scheduler hiccup must not stop the loop
                log.warning("could not refresh workers from the scheduler: %s", exc)

    async def _refresh_workers(self) -> None:
        info = await self.client.scheduler.identity()
        seen = info.get("workers", {})
        now = time.time()
        joined = []
        for address, w in seen.items():
            slot = self.slots.get(address)
            if slot is None:
                slot = self.slots[address] = WorkerSlot(
                    address=address, name=str(w.get("name", address)),
                    nthreads=int(w.get("nthreads", 1)), memory_limit=int(w.get("memory_limit") or 0),
                    last_ok=now,
                )
                joined.append(slot)
            slot.metrics = {k: float(v) for k, v in (w.get("metrics") or {}).items()
                            if isinstance(v, (int, float))}
        for address, slot in list(self.slots.items()):
            if address not in seen:
                slot.status = "gone"
                if slot.calls == 0:
                    del self.slots[address]
        unknown = [s for s in self.slots.values() if s.pid == 0 and s.status != "gone"]
        if unknown:
            await asyncio.gather(*(self._learn_pid(s) for s in unknown), return_exceptions=True)
        self.store.upsert_workers([self._record(s, now) for s in self.slots.values()
                                   if s.status != "gone"], now)
        if joined:
            self._wake_set()

    async def _learn_pid(self, slot: WorkerSlot) -> None:
        answer = await asyncio.wait_for(self.client.rpc(slot.address).clusterai_ping(), 5.0)
        slot.pid = int(answer.get("pid", 0)) if isinstance(answer, dict) else 0

    @staticmethod
    def _record(slot: WorkerSlot, now: float) -> WorkerRecord:
        metrics: dict[str, float] = {k: slot.metrics[k] for k in ("cpu", "memory") if k in slot.metrics}
        return WorkerRecord(
            name=slot.name, address=slot.address, status=slot.status, nthreads=slot.nthreads,
            memory_limit=slot.memory_limit, inflight=slot.jobs, completed=slot.completed,
            failed=slot.failed, last_seen=slot.last_ok or now, metrics=metrics, pid=slot.pid,
        )
