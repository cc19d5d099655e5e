"""The job operations every surface shares (the Python client, the REST API, the CLI): submit,
read, cancel, retry, requeue dead letters, command a worker, read camera counts. Each writes the
store and wakes the coordinator; none needs Dask."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Sequence
from typing import Any

from clusterai.config import ClusterConfig
from clusterai.core.model import WORKER_ACTIONS, AuditEntry, Job, JobSpec, State, WorkerRecord
from clusterai.errors import BadInput, InvalidTransition, WorkerNotFound
from clusterai.service.status import cluster_status
from clusterai.service.submission import check_placeable, known_workers
from clusterai.store.protocol import JobStore


class JobService:
    def __init__(self, store: JobStore, config: ClusterConfig, wake: Callable[[], None] = lambda: None):
        self.store = store
        self.config = config
        self.wake = wake  # tells the coordinator to look at the store now (a no-op without one)

    # -- submitting ---------------------------------------------------------------------------

    def submit_groups(self, groups: Sequence[tuple[Sequence[JobSpec], AuditEntry | None]],
                      before_wake: Callable[[list[list[Job]]], None] | None = None) -> list[list[Job]]:
        """Several submissions in one transaction: all stored, or none. `before_wake` sees the stored
        jobs before the coordinator is told of them."""
        constrained = [s for specs, _ in groups for s in specs if s.resources or s.labels]
        if constrained:
            known = known_workers(self.store, self.config)
            distinct = {(s.queue, tuple(sorted(s.resources.items())), tuple(sorted(s.labels.items()))): s
                        for s in constrained}
            for spec in distinct.values():
                check_placeable(spec, known)
        stored = self.store.submit_groups(groups, time.time())
        if before_wake is not None:
            before_wake(stored)
        self.wake()
        return stored

    # -- reading ------------------------------------------------------------------------------

    def status(self, window: float = 60.0) -> dict[str, Any]:
        """The cluster in one answer (what GET /api/v1/cluster/status returns)."""
        return cluster_status(self.store, window, alerts=self.config.alerts)

    def camera_counts(self, *, job: int | None = None, camera: str | None = None, since: float | None = None,
                      until: float | None = None, limit: int = 1000) -> dict[str, Any]:
        """Count series of camera.count jobs: the latest totals per job, and the points asked for."""
        series = [s for s in self.store.count_series()
                  if (job is None or s["job_id"] == job) and (camera is None or s["camera"] == camera)]
        points = self.store.list_count_points(job_id=job, camera=camera, since=since, until=until, limit=limit)
        return {"series": series, "points": [p.to_dict() for p in points], "truncated": len(points) == limit}

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, job_id: int) -> Job:
        return self.store.cancel(job_id, time.time())

    def retry(self, job_id: int) -> Job:
        """Run a finished (dead, cancelled or succeeded) job again."""
        requeued = self.store.requeue(job_id, time.time())
        self.wake()
        return requeued

    def requeue_dead(self, ids: Sequence[int] = (), *, everything: bool = False) -> builtins.list[int]:
        """Put dead letters back in the queue: the ids given (each must be dead), or all of them."""
        if everything:
            ids = [j.id for j in self.store.list_jobs(state=State.DEAD, limit=10_000_000)]
        elif not ids:
            raise BadInput("name the job ids to requeue, or ask for all of them")
        else:
            ids = builtins.list(dict.fromkeys(ids))
            states = self.store.states_of(ids)
            for job_id in ids:
                if job_id not in states:
                    raise BadInput(f"no job with id {job_id}")
                if states[job_id] is not State.DEAD:
                    raise BadInput(f"job {job_id} is {states[job_id].value}, not dead; nothing was requeued")
        for job_id in ids:
            self.store.requeue(job_id, time.time())
        self.wake()
        return builtins.list(ids)

    # -- commanding workers -------------------------------------------------------------------

    def find_worker(self, name: str) -> WorkerRecord:
        """A worker by name or address, live ones first; WorkerNotFound lists the live ones."""
        workers = self.store.list_workers()
        live = [w for w in workers if w.status != "gone"]
        for w in live + workers:
            if name in (w.name, w.address):
                return w
        raise WorkerNotFound(name, [w.name for w in live])

    def request_command(self, worker: str, action: str) -> tuple[WorkerRecord, int]:
        """Queue `action` for the coordinator to carry out on `worker`; the worker and the command id."""
        if action not in WORKER_ACTIONS:
            raise BadInput(f"unknown worker action {action!r}; allowed: {', '.join(WORKER_ACTIONS)}")
        target = self.find_worker(worker)
        if target.status == "gone":
            raise InvalidTransition(f"worker {target.name} has left the cluster; nothing to {action}")
        command_id = self.store.add_worker_command(target.address, action, time.time())
        self.wake()
        return target, command_id

    def command_outcome(self, command_id: int) -> str | None:
        """What the coordinator did, once it has acted; None until then."""
        _, _, done_at, outcome = self.store.worker_command(command_id)
        return outcome if done_at is not None else None

    def command_worker(self, worker: str, action: str, wait: float = 10.0) -> str | None:
        """Ask the coordinator to drain, undrain, remove or restart a worker (by name or address);
        returns what it did, or None if it has not acted within `wait` seconds."""
        _, command_id = self.request_command(worker, action)
        deadline = time.monotonic() + wait
        while (outcome := self.command_outcome(command_id)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return outcome

    async def command_worker_async(self, worker: str, action: str, wait: float = 10.0
                                   ) -> tuple[WorkerRecord, str | None]:
        """command_worker for an event loop: the store calls run in threads, the waiting on the loop
        (many callers waiting cost no threads)."""
        target, command_id = await asyncio.to_thread(self.request_command, worker, action)
        deadline = time.monotonic() + wait
        while (outcome := await asyncio.to_thread(self.command_outcome, command_id)) is None:
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        return target, outcome
