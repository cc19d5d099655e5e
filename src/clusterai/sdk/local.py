"""The Python client: `clusterai.connect()` starts an embedded cluster, `connect(store=...)` attaches
to the store of one already running (for example `clusterai up` in another terminal)."""

from __future__ import annotations

import builtins
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterai.config import ClusterConfig, load_config
from clusterai.core.chunks import ID_CHUNK
from clusterai.core.model import (
    AuditEntry,
    Finish,
    Job,
    JobSpec,
    State,
    WorkerRecord,
)
from clusterai.core.tasks import describe_tasks, import_task_modules
from clusterai.errors import BadInput, JobFailed, ResultTimeout
from clusterai.head.runtime import BackgroundRuntime
from clusterai.sdk.dask_access import embedded_dask_client
from clusterai.sdk.protocol import ClusterClient
from clusterai.sdk.remote import RemoteClient
from clusterai.service.autoscale import AutoscaleService
from clusterai.service.jobs import JobService
from clusterai.service.pipelines import Pipelines
from clusterai.service.registry import RegistryService
from clusterai.service.runs import PipelineRunner
from clusterai.service.submission import spec_factory
from clusterai.service.sweeps import SweepService
from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore

JobRef = int | Job


def _job_id(job: JobRef) -> int:
    return job.id if isinstance(job, Job) else int(job)


class _Waiters:
    """Threads waiting for jobs to end, woken by the embedded coordinator instead of polling.

    It also watches the jobs `submit` stored, until the coordinator reports them finished: result()
    on a job still watched knows it has not finished (a finish would have ended the watch), so it
    waits without first reading the job's state from the store. A job that ends another way (a
    cancel from another process) is seen by the wait's slow re-check."""

    WATCHED = 10_000  # the oldest beyond this are forgotten: result() then reads the store first

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, list[_Group]] = {}
        self._watched: OrderedDict[int, None] = OrderedDict()

    def notify(self, finish: Finish) -> None:
        with self._lock:
            self._watched.pop(finish.job_id, None)
            groups = self._groups.pop(finish.job_id, ())
        for group in groups:
            group.done(finish.job_id, finish)

    def watch(self, job: Job) -> None:
        """From submit, before the coordinator is woken: it cannot have finished the job yet."""
        if job.state.terminal:  # an idempotency key found a finished job
            return
        with self._lock:
            self._watched[job.id] = None
            if len(self._watched) > self.WATCHED:
                self._watched.popitem(last=False)

    def unwatch(self, job_id: int) -> None:
        with self._lock:
            self._watched.pop(job_id, None)

    def group(self, ids: Iterable[int], keep: bool = False) -> tuple[_Group, bool]:
        """A group waiting for `ids`, and whether every one of them is watched (unfinished for sure)."""
        group = _Group(set(ids), keep)
        with self._lock:
            unfinished = all(job_id in self._watched for job_id in group.remaining)
            for job_id in group.remaining:
                self._groups.setdefault(job_id, []).append(group)
        return group, unfinished

    def forget(self, group: _Group) -> None:
        with self._lock:
            for job_id in list(group.remaining):
                waiting = self._groups.get(job_id)
                if waiting and group in waiting:
                    waiting.remove(group)
                    if not waiting:
                        del self._groups[job_id]


class _Group:
    def __init__(self, ids: set[int], keep: bool = False):
        self.remaining = ids
        self.keep = keep  # result() keeps the stored outcome our coordinator reports: no read back
        self.finishes: dict[int, Finish] = {}
        self._lock = threading.Lock()
        self.event = threading.Event()
        if not ids:
            self.event.set()

    def done(self, job_id: int, finish: Finish | None = None) -> None:
        with self._lock:
            if finish is not None and self.keep:
                self.finishes[job_id] = finish
            self.remaining.discard(job_id)
            if not self.remaining:
                self.event.set()


class Client:
    def __init__(self, store: JobStore, config: ClusterConfig, runtime: BackgroundRuntime | None):
        self.store = store
        self.config = config
        self.runtime = runtime
        self._waiters = _Waiters()
        # our own coordinator reports each job it finishes: waits are woken, not polled
        coordinator = runtime.runtime.coordinator if runtime is not None else None
        self._reported = coordinator is not None
        if coordinator is not None:
            coordinator.add_listener(self._waiters.notify)
        self.service = JobService(store, config, wake=self._wake)
        self.autoscaling = AutoscaleService(store, config)
        driver = runtime.runtime.pipelines if runtime is not None else None
        self.pipelines = Pipelines(PipelineRunner(store, config, wake=self._wake),
                                   poke=driver.poke if driver is not None else lambda run_id: None)
        sweeps = runtime.runtime.sweeps if runtime is not None else None
        self.sweeps = SweepService(store, config, wake=self._wake,
                                   poke=sweeps.poke if sweeps is not None else lambda sweep_id: None)
        self.registry = RegistryService(store)

    # -- training -----------------------------------------------------------------------------

    def sweep(self, objective: str, space: dict[str, Any], trials: int, *, sampler: str | dict[str, Any] | None = None,
              wait: bool = False, timeout: float | None = None, **options: Any) -> dict[str, Any]:
        """Start a hyper-parameter sweep: `trials` jobs of the task `objective` (a task name or
        "pkg.module:function"), each with parameters drawn from `space`. Options: name, metric, mode,
        concurrency, pruner, register, job (see docs/training.md). Returns its status; with
        wait=True, once it has finished."""
        raw: dict[str, Any] = {"objective": objective, "space": space, "trials": trials, **options}
        if sampler is not None:
            raw["sampler"] = sampler
        started = self.sweeps.start(raw)
        return self.sweeps.wait(started["id"], timeout) if wait else started

    def dask_client(self) -> Any:
        """A distributed.Client on this embedded cluster's scheduler (dask.bag, dask.dataframe on the
        same workers); close it when done. For a head elsewhere: clusterai.dask_client(address)."""
        if self.runtime is None:
            raise BadInput("this client is attached to a store, not to a cluster it runs: use "
                           "clusterai.dask_client('tls://head:8786') with a client certificate")
        return embedded_dask_client(self.runtime.runtime)

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, task: str, payload: dict[str, Any] | None = None, **options: Any) -> Job:
        """Submit one job. Options: queue, priority, run_at, delay, timeout, retries, backoff,
        max_backoff, idempotency_key, resources, labels."""
        spec = spec_factory(self.config, task, **options)(payload or {})
        watch = (lambda stored: self._waiters.watch(stored[0][0])) if self._reported else None
        return self.service.submit_groups([([spec], None)], before_wake=watch)[0][0]

    def submit_many(self, task: str, payloads: Sequence[dict[str, Any]], **options: Any) -> list[Job]:
        """Submit many jobs of one task in one transaction: all are stored, or none."""
        make = spec_factory(self.config, task, **options)
        return self.submit_groups([([make(p) for p in payloads], None)])[0]

    def submit_groups(self, groups: Sequence[tuple[Sequence[JobSpec], AuditEntry | None]]) -> list[list[Job]]:
        """Several submissions in one transaction: all stored, or none."""
        return self.service.submit_groups(groups)

    def _wake(self) -> None:
        if self.runtime is not None and self.runtime.runtime.coordinator is not None:
            self.runtime.runtime.coordinator.wake()

    # -- reading ------------------------------------------------------------------------------

    def get(self, job: JobRef) -> Job:
        return self.store.get(_job_id(job))

    def dead_letters(self, limit: int = 100) -> list[Job]:
        return self.list(state=State.DEAD, limit=limit)

    def workers(self) -> list[WorkerRecord]:
        return self.store.list_workers()

    def counts(self) -> dict[str, int]:
        return self.store.job_counts()

    def status(self, window: float = 60.0) -> dict[str, Any]:
        """The cluster in one answer (what GET /api/v1/cluster/status returns)."""
        return self.service.status(window)

    def tasks(self) -> builtins.list[dict[str, Any]]:
        return describe_tasks()

    def requeue_dead(self, ids: Sequence[int] = (), *, everything: bool = False) -> builtins.list[int]:
        """Put dead letters back in the queue: the ids given (each must be dead), or all of them."""
        return self.service.requeue_dead(ids, everything=everything)

    # -- waiting ------------------------------------------------------------------------------

    def wait(self, jobs: Sequence[JobRef], timeout: float | None = None) -> None:
        """Block until every job is finished (succeeded, dead or cancelled); ResultTimeout if they
        are not by then. Read them afterwards with get_many (kept apart: a wait on 100,000 jobs
        should not build 100,000 objects)."""
        self._wait(jobs, timeout)

    def _wait(self, jobs: Sequence[JobRef], timeout: float | None, keep: bool = False) -> dict[int, Finish]:
        """With `keep`, the outcomes our own coordinator stored meanwhile, by job id."""
        ids = [_job_id(j) for j in jobs]
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.runtime is not None:
            group, unfinished = self._waiters.group(ids, keep)
            left, finishes = self._wait_embedded(group, [] if unfinished else ids, deadline), group.finishes
        else:
            left, finishes = self._poll(ids, deadline), {}
        if left:
            raise ResultTimeout(f"{left} of {len(ids)} jobs still unfinished after {timeout} s")
        return finishes

    def _wait_embedded(self, group: _Group, ids: list[int], deadline: float | None) -> int:
        """Woken by our own coordinator; a slow re-check catches cancels from other processes. `ids`:
        the jobs to look up first (they may have finished before the group was registered)."""
        try:
            if ids:
                self._mark_finished(group, ids)
            while not group.event.wait(2.0):
                if deadline is not None and time.monotonic() > deadline:
                    break
                self._mark_finished(group, sorted(group.remaining)[:ID_CHUNK])
        finally:
            self._waiters.forget(group)
        return len(group.remaining)

    def _mark_finished(self, group: _Group, ids: Sequence[int]) -> None:
        for job_id, state in self.store.states_of(ids).items():
            if state.terminal:
                group.done(job_id)

    def _poll(self, ids: list[int], deadline: float | None) -> int:
        """Poll the store, oldest jobs first: they finish first, so each look stays small."""
        left = sorted(set(ids))
        pause = 0.002
        while left:
            head = left[:ID_CHUNK]
            states = self.store.states_of(head)
            done = {i for i in head if states.get(i) is not None and states[i].terminal}
            if done:
                left = [i for i in left if i not in done]
                if len(done) == len(head):
                    pause = 0.002
                    continue
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        return len(left)

    def get_many(self, jobs: Sequence[JobRef]) -> list[Job]:
        """Jobs by id, in the order given, without their attempt history."""
        return self.store.get_many([_job_id(j) for j in jobs])

    def result(self, job: JobRef, timeout: float | None = None) -> Any:
        """The job's result, waiting for it; JobFailed if it ended dead or cancelled."""
        stored = self._wait([job], timeout, keep=True).get(_job_id(job))
        if stored is not None:  # as committed: no need to read it back
            if stored.state is not State.SUCCEEDED:
                raise JobFailed(stored.job_id, stored.state.value, stored.error)
            return None if stored.result_json is None else json.loads(stored.result_json)
        done = self.store.get(_job_id(job), attempts=False)
        if done.state is not State.SUCCEEDED:
            raise JobFailed(done.id, done.state.value, done.error)
        return done.result

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, job: JobRef) -> Job:
        self._waiters.unwatch(_job_id(job))  # it may end without its coordinator's report
        return self.service.cancel(_job_id(job))

    def retry(self, job: JobRef) -> Job:
        """Run a finished (dead, cancelled or succeeded) job again."""
        return self.service.retry(_job_id(job))

    def command_worker(self, worker: str, action: str, wait: float = 10.0) -> str | None:
        """Ask the coordinator to drain, undrain, remove or restart a worker (by name or address);
        returns what it did, or None if it has not acted within `wait` seconds."""
        return self.service.command_worker(worker, action, wait)

    def camera_counts(self, *, job: int | None = None, camera: str | None = None, since: float | None = None,
                      until: float | None = None, limit: int = 1000) -> dict[str, Any]:
        """Count series of camera.count jobs: the latest totals per job, and the points asked for."""
        return self.service.camera_counts(job=job, camera=camera, since=since, until=until, limit=limit)

    def autoscale(self, decisions: int = 50) -> dict[str, Any]:
        """What the autoscaler reports: per profile workers, desired, bounds and why; its decisions."""
        return self.autoscaling.status(decisions)

    def set_autoscale(self, enabled: bool, *, minimum: int | None = None, maximum: int | None = None,
                      profile: str | None = None) -> dict[str, Any]:
        """Enable (with new bounds for a profile) or disable the autoscaler; the head applies it at
        its next round (within autoscale.interval_s)."""
        return self.autoscaling.set(enabled=enabled, minimum=minimum, maximum=maximum, profile=profile)

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()
        self.store.close()

    def list(self, *, state: State | str | None = None, task: str | None = None,
             queue: str | None = None, worker: str | None = None, after_id: int | None = None,
             limit: int = 100) -> builtins.list[Job]:
        return self.store.list_jobs(state=State(state) if state else None, task=task, queue=queue,
                                    worker=worker, after_id=after_id, limit=limit)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    config: ClusterConfig | str | Path | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    ca_cert: str | None = None,
    store: str | None = None,
    tasks: Sequence[str] = (),
    workers: int | None = None,
    scheduler: str | None = None,
) -> Client | RemoteClient:
    """Embedded cluster by default; with `store=`, attach to the store of a running cluster; with
    `url=` (or $CLUSTERAI_URL), reach a cluster over its REST API with `token=` (or
    $CLUSTERAI_TOKEN; `ca_cert=` or $CLUSTERAI_CA_CERT for a self-signed HTTPS certificate)."""
    url = url or os.environ.get("CLUSTERAI_URL")
    if url:
        return RemoteClient(url, token or os.environ.get("CLUSTERAI_TOKEN") or "",
                            ca_cert=ca_cert or os.environ.get("CLUSTERAI_CA_CERT"))
    conf = config if isinstance(config, ClusterConfig) else load_config(config)
    if tasks:
        conf = conf.with_overrides(tasks=[*conf.tasks, *tasks])
    if store is not None:
        conf = conf.with_overrides(store=store)
        import_task_modules(conf.tasks)
        return Client(open_store(conf.store), conf, runtime=None)
    conf = conf.with_overrides(**{"cluster.workers": workers, "cluster.scheduler": scheduler})
    runtime = BackgroundRuntime(conf)
    runtime.start()
    assert runtime.runtime.store is not None
    return Client(runtime.runtime.store, conf, runtime=runtime)


if TYPE_CHECKING:
    def _both_keep_the_protocol(local: Client, remote: RemoteClient) -> list[ClusterClient]:
        return [local, remote]  # mypy fails here when either client drifts from sdk/protocol.py
