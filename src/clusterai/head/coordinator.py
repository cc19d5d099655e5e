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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from distributed.comm.core import CommClosedError

from clusterai.config import CoordinatorSection, PlacementSection
from clusterai.core.model import Finish, Job, Outcome, State, canonical_json, decide
from clusterai.errors import StoreUnavailable
from clusterai.head.metrics import Metrics
from clusterai.head.plugins import CoordinatorPlugin
from clusterai.head.registry import WorkerRegistry
from clusterai.placement import Strategy, WorkerSlot, make_strategy
from clusterai.placement.planner import Batch, Planner
from clusterai.store.protocol import JobStore
from clusterai.worker.execute import run_batch_anywhere

log = logging.getLogger("clusterai.head.coordinator")

_WORKER_GONE = (CommClosedError, OSError, EOFError)
_MAX_FETCH = 5000
_RECENT_OUTCOMES = 10_000
_FAILURES = frozenset({Outcome.FAILED, Outcome.TIMEOUT, Outcome.LOST, Outcome.EXPIRED})


class Coordinator:
    def __init__(
        self,
        store: JobStore,
        dask_client: Any,
        *,
        settings: CoordinatorSection | None = None,
        placement: PlacementSection | None = None,
        rng: random.Random | None = None,
        require_enrollment: bool = False,
        plugins: Sequence[CoordinatorPlugin] = (),
    ):
        self.store = store
        self.client = dask_client
        self.settings = settings or CoordinatorSection()
        self.placement = placement or PlacementSection()
        self.planner = self._make_planner(self.settings, self.placement)
        self.registry = WorkerRegistry(store, dask_client, breaker=self.placement.breaker,
                                       on_change=self._wake_set, require_enrollment=require_enrollment)
        self.metrics = Metrics()
        self.plugins: list[CoordinatorPlugin] = []
        self._hooked: dict[str, list[CoordinatorPlugin]] = {}  # per-item hooks: only the plugins that have them
        self._listeners: list[Callable[[Finish], None]] = []
        self.rng = rng or random.Random()
        self._inflight: dict[int, Job] = {}  # attempts started whose outcome is not stored yet: stop() hands them back
        self._accepted: OrderedDict[int, int] = OrderedDict()  # recent accepted outcomes: job -> attempt
        self._loops: list[asyncio.Task[None]] = []
        self._batches: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, str] = {}
        self._next_due: float | None = None
        self._next_promote = 0.0
        self._fast_registry_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.started_at = time.time()
        for plugin in plugins:
            self.add_plugin(plugin)

    @staticmethod
    def _make_planner(settings: CoordinatorSection, placement: PlacementSection) -> Planner:
        def build(name: str) -> Strategy:
            return make_strategy(name, hybrid_chain=placement.hybrid, reserve=placement.reserve)

        return Planner({queue: build(name) for queue, name in placement.queues.items()},
                       build(placement.strategy), batch_target_seconds=settings.batch_target_seconds,
                       max_batch=settings.max_batch, prefetch=placement.prefetch)

    @property
    def slots(self) -> dict[str, WorkerSlot]:
        return self.registry.slots

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await self._abandon_previous_attempts()
        self.store.watch(self.wake)  # PostgreSQL: woken by NOTIFY when work arrives from anywhere
        for plugin in self.plugins:
            await plugin.start(self)
        await self.registry.refresh()
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
        for plugin in self.plugins:
            try:
                await plugin.stop(self)
            except Exception:  # noqa: BLE001 - one plugin's failure must not keep attempts from going back
                log.exception("coordinator plugin %s failed to stop", type(plugin).__name__)
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

    def holds_lease(self, job_id: int, attempt: int) -> bool:
        """Whether reports from this attempt count: it runs now, or its outcome was just accepted
        (a task's last report travels through the scheduler and may arrive after its result)."""
        job = self._inflight.get(job_id)
        if job is not None:
            return job.attempt == attempt
        return self._accepted.get(job_id) == attempt

    def wake(self) -> None:
        """Thread-safe: there is new work to look at."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def add_plugin(self, plugin: CoordinatorPlugin) -> None:
        """Hook a plugin in; one added after start() gets no start() call (its hooks start now)."""
        self.plugins.append(plugin)
        for hook in ("attempts_started", "prepare_item", "job_finished"):  # called per batch, item or job
            if getattr(type(plugin), hook) is not getattr(CoordinatorPlugin, hook):
                self._hooked.setdefault(hook, []).append(plugin)

    def add_listener(self, listener: Callable[[Finish], None]) -> None:
        """Called on the coordinator's loop with the stored outcome of each job that reaches a final
        state (its result too: a waiter in this process need not read it back from the store)."""
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
                try:
                    if not (self.store.changed() or due or time.time() >= self._next_promote):
                        continue
                except StoreUnavailable:
                    await asyncio.sleep(0.5)
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
        limit = min(_MAX_FETCH, self.planner.fetch_limit(list(self.slots.values())))
        if limit == 0:
            return False
        jobs = self.store.fetch_ready(limit)
        if not jobs:
            return False
        plan = self.planner.plan(jobs, list(self.slots.values()), now, version=self.registry.version)
        self._explain(plan.waiting)
        if not plan.batches:
            return False
        assignments = [(job.id, batch.slot.address) for batch in plan.batches for job in batch.jobs]
        lease_until = now + self.settings.lease_seconds
        try:
            started = {job.id: job for job in self.store.start_attempts(assignments, now, lease_until)}
            for plugin in self._hooked.get("attempts_started", ()):
                plugin.attempts_started(list(started.values()))
        except StoreUnavailable:
            for batch in plan.batches:
                batch.release()
            raise
        for batch in plan.batches:
            batch.keep([started[job.id] for job in batch.jobs if job.id in started])
            if batch.jobs:
                for job in batch.jobs:  # here, not in the task: a task cancelled before it ran still hands them back
                    self._inflight[job.id] = job
                task = asyncio.create_task(self._run_batch(batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
            else:
                batch.release()  # every job in it was cancelled since it was fetched
        for job_id in started:
            self._waiting.pop(job_id, None)
        return len(jobs) == limit

    def _explain(self, reasons: dict[int, str]) -> None:
        """Store why jobs wait (for `jobs show`), writing only reasons that changed."""
        changed = {i: r for i, r in reasons.items() if self._waiting.get(i) != r}
        if changed:
            if len(self._waiting) > 10_000:
                self._waiting.clear()
            self._waiting.update(changed)
            self.store.set_waiting(changed)

    async def _run_batch(self, batch: Batch) -> None:
        slot, jobs = batch.slot, batch.jobs
        # the owner travels with every attempt: a task that says who asked for it learns it from here
        items: list[dict[str, Any]] = [{"id": j.id, "attempt": j.attempt, "task": j.task, "owner": j.owner,
                                        "payload": canonical_json(j.payload), "timeout": j.timeout} for j in jobs]
        for plugin in self._hooked.get("prepare_item", ()):
            for item, job in zip(items, jobs):
                plugin.prepare_item(item, job, slot)
        hard_limit = None
        if all(j.timeout for j in jobs):
            hard_limit = sum(j.timeout or 0 for j in jobs) + self.settings.hard_timeout_grace
        started = time.monotonic()
        cancelled = False
        try:
            finishes = await self._call_worker(batch, items, hard_limit)
            elapsed = time.monotonic() - started
            self._update_breakers(batch, finishes)
            await self._commit(finishes, jobs, elapsed)
        except asyncio.CancelledError:
            # stop(): the worker's answer never came, or its commit waits for the store; either way
            # the outcome is not stored, so the attempts stay in _inflight and stop() hands them back
            cancelled = True
            raise
        finally:
            batch.release()
            if not cancelled:
                for job in jobs:
                    if self._inflight.get(job.id) is job:
                        del self._inflight[job.id]
            if slot.status == "gone" and slot.calls == 0:
                self.registry.forget(slot)
            if self._wake is not None:
                self._wake.set()

    async def _call_worker(self, batch: Batch, items: list[dict[str, Any]], hard_limit: float | None
                           ) -> list[Finish]:
        slot, jobs = batch.slot, batch.jobs
        if batch.strategy == "dask":
            # Dask's scheduler picks the worker (and may steal the task); Dask reruns it if a
            # worker dies, so a lost worker surfaces here only as a late reply
            # jobs with hard constraints stay on the worker the planner found for them
            pinned = any(j.labels or j.resources for j in jobs)
            call = self.client.submit(run_batch_anywhere, items, pure=False,
                                      workers=[slot.address] if pinned else None, allow_other_workers=False)
        else:
            call = self.client.rpc(slot.address).clusterai_run(
                items=items, stop_after=self.placement.breaker.failures)
        try:
            replies = await (asyncio.wait_for(call, hard_limit) if hard_limit else call)
        except asyncio.TimeoutError:
            now = time.time()
            asyncio.create_task(self.registry.restart(slot))
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
            if outcome is not Outcome.ABANDONED:
                self.planner.observe(job.task, reply.get("duration", 0.0))
            if outcome is Outcome.SUCCEEDED:
                slot.completed += 1
            elif outcome is not Outcome.ABANDONED:
                slot.failed += 1
            finishes.append(self._decide(
                job, outcome, now, retryable=reply.get("retryable", True),
                result_json=reply.get("result"), error=reply.get("error"),
            ))
        return finishes

    def _decide(self, job: Job, outcome: Outcome, now: float, **kwargs: Any) -> Finish:
        return decide(job, outcome, now=now, poison_threshold=self.settings.poison_threshold,
                      rng=self.rng, **kwargs)

    def _update_breakers(self, batch: Batch, finishes: list[Finish]) -> None:
        now = time.time()
        slot = batch.slot
        for finish, job in zip(finishes, batch.jobs):
            if finish.outcome is Outcome.SUCCEEDED or finish.outcome in _FAILURES:
                ok = finish.outcome is Outcome.SUCCEEDED
                slot.breaker.record(ok, now)
                slot.breaker_for(job.task).record(ok, now)
        if batch.trial:  # a trial that ended without a verdict (cancelled, abandoned)
            slot.breaker.trial_running = False
            for breaker in slot.task_breakers.values():
                breaker.trial_running = False

    async def _commit(self, finishes: list[Finish], jobs: list[Job], elapsed: float | None = None) -> None:
        """Write outcomes; while the store is down, keep them and try again (never drop one).
        Metrics count only the outcomes the store accepted, so they agree with it."""
        delay = 0.1
        while True:
            try:
                accepted = self.store.finish_attempts(finishes, time.time())
                break
            except StoreUnavailable as exc:
                log.warning("store unavailable while committing %d outcomes: %s", len(finishes), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        now = time.time()
        while len(self._accepted) > _RECENT_OUTCOMES:
            self._accepted.popitem(last=False)
        for finish, job, ok in zip(finishes, jobs, accepted):
            if not ok:
                continue
            self._accepted[finish.job_id] = finish.attempt
            self.metrics.observe_outcome(job, finish, elapsed, now)
            if finish.state is State.PENDING and finish.run_at is not None:
                self._next_due = min(self._next_due or finish.run_at, finish.run_at)
            if finish.state.terminal:
                for plugin in self._hooked.get("job_finished", ()):
                    plugin.job_finished(finish.job_id, finish.state)
                for listener in self._listeners:
                    listener(finish)

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
            where = sorted({str(j.worker) for j in expired})
            log.warning("%d leases expired (worker%s %s stopped answering); their jobs go back to the queue",
                        len(expired), "s" if len(where) > 1 else "", ", ".join(where))
            finishes = [self._decide(j, Outcome.EXPIRED, now,
                                     error=f"lease expired on worker {j.worker}: it stopped answering")
                        for j in expired]
            await self._commit(finishes, expired)
            self._wake_set()

    async def _ping(self, slot: WorkerSlot, timeout: float) -> bool:
        self.registry.apply(slot, await self.registry.ping(slot, timeout))
        return True

    def _wake_set(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def expect_workers(self, within_s: float) -> None:
        """Workers are about to join (the autoscaler launched them): look for them five times a
        second for `within_s`, so a new worker gets work within 0.2 s of registering, not 1 s."""
        self._fast_registry_until = max(self._fast_registry_until, time.monotonic() + within_s)

    async def _registry_loop(self) -> None:
        next_prune = 0.0
        while True:
            await asyncio.sleep(0.2 if time.monotonic() < self._fast_registry_until else 1.0)
            try:
                await self.registry.refresh()
                now = time.time()
                self.metrics.observe_workers(self.slots.values(), now)
                for plugin in self.plugins:
                    plugin.tick(now)
                if now >= next_prune:
                    next_prune = now + 60.0
                    self.store.prune_events(now - self.settings.events_retention, self.settings.events_kept)
            except StoreUnavailable as exc:
                log.warning("store unavailable while saving the worker registry: %s", exc)
            except Exception as exc:  # noqa: BLE001 - a scheduler hiccup must not stop the loop
                log.warning("could not refresh workers from the scheduler: %s", exc)
