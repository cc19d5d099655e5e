"""The Python client: `clusterai.connect()` starts an embedded cluster, `connect(store=...)` attaches
to the store of one already running (for example `clusterai up` in another terminal)."""

from __future__ import annotations

import builtins
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clusterai.config import ClusterConfig, load_config
from clusterai.core.model import (
    KEY_PATTERN,
    NAME_PATTERN,
    NAME_RULE,
    VALUE_PATTERN,
    VALUE_RULE,
    AuditEntry,
    Job,
    JobSpec,
    Priority,
    RetryPolicy,
    State,
    WorkerRecord,
)
from clusterai.core.nesting import MAX_DEPTH, deeper_than
from clusterai.core.tasks import get_task, import_task_modules
from clusterai.errors import BadInput, JobFailed, NestedTooDeep, ResultTimeout
from clusterai.head.runtime import BackgroundRuntime
from clusterai.placement import Constraints, WorkerSlot
from clusterai.sdk.pipelines import Pipelines
from clusterai.sdk.remote import RemoteClient
from clusterai.service.runs import PipelineRunner
from clusterai.store.protocol import JobStore, open_store

JobRef = int | Job
_CHECK_CHUNK = 500


def _job_id(job: JobRef) -> int:
    return job.id if isinstance(job, Job) else int(job)


def build_spec(config: ClusterConfig, task: str, payload: Any, **options: Any) -> JobSpec:
    """Validate a submission and resolve its options: call > @task > queue config > defaults."""
    return spec_factory(config, task, **options)(payload)


def spec_factory(config: ClusterConfig, task: str, **options: Any) -> Callable[..., JobSpec]:
    """Resolve the options of a submission once; the returned function validates one payload and
    makes its JobSpec (a batch of one task with the same options resolves them only once)."""
    definition = get_task(task)
    if options.get("queue") is not None:
        _check_name("queue", options["queue"])
    queue = options.get("queue") or definition.queue or "default"
    qconf = config.queues.get(queue)
    d = config.defaults

    def pick(name: str) -> Any:
        for source in (options.get(name), getattr(definition, name, None),
                       getattr(qconf, name, None) if qconf else None):
            if source is not None:
                return source
        return getattr(d, name)

    run_at = options.get("run_at")
    if options.get("delay") is not None:
        run_at = time.time() + float(options["delay"])
    timeout = next((t for t in (options.get("timeout"), definition.timeout, d.timeout)
                    if t is not None), None)
    if timeout is not None and timeout <= 0:
        raise BadInput(f"timeout must be > 0 seconds, got {timeout}")
    priority = next((p for p in (options.get("priority"), definition.priority) if p is not None),
                    Priority.NORMAL)
    fields: dict[str, Any] = dict(
        task=task,
        queue=queue,
        priority=Priority.parse(priority),
        run_at=run_at,
        timeout=timeout,
        retry=RetryPolicy(retries=pick("retries"), backoff=pick("backoff"),
                          max_backoff=pick("max_backoff"), jitter=d.jitter),
        resources={**definition.resources, **_numbers("requires", options.get("requires") or {}),
                   **_numbers("resources", options.get("resources") or {})},
        labels=_strings("labels", options.get("labels") or {}),
        prefers=_strings("prefers", options.get("prefers") or {}),
        owner=options.get("owner"),
    )
    default_key = options.get("idempotency_key")
    if default_key is not None:
        _check_key(default_key)

    def make(payload: Any, idempotency_key: str | None = None) -> JobSpec:
        if idempotency_key is not None:
            _check_key(idempotency_key)
        if deeper_than(payload, MAX_DEPTH):  # before validation: pydantic and canonical JSON recurse too
            raise NestedTooDeep(MAX_DEPTH, "the payload")
        clean = definition.validate(payload if payload is not None else {})
        return JobSpec(payload=clean, idempotency_key=idempotency_key or default_key, **fields)

    return make


def _check_name(what: str, name: Any, pattern: str = NAME_PATTERN, rule: str = NAME_RULE) -> str:
    text = str(name)
    if not re.fullmatch(pattern, text):
        raise BadInput(f"{what}: {text[:120]!r} is not allowed; use {rule}")
    return text


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not re.fullmatch(KEY_PATTERN, key):
        raise BadInput("idempotency_key must be 1 to 200 characters without control characters")


def _numbers(what: str, mapping: dict[str, Any]) -> dict[str, float]:
    if not isinstance(mapping, dict):
        raise BadInput(f"{what} must be a mapping of resource names to amounts, got {type(mapping).__name__}")
    out = {}
    for key, value in mapping.items():
        name = _check_name(f"{what} key", key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise BadInput(f"{what}: {name} must be a number >= 0, got {value!r}")
        out[name] = float(value)
    return out


def _strings(what: str, mapping: dict[str, Any]) -> dict[str, str]:
    if not isinstance(mapping, dict):
        raise BadInput(f"{what} must be a mapping of names to values, got {type(mapping).__name__}")
    return {_check_name(f"{what} key", k): _check_name(f"{what}.{k}", v, VALUE_PATTERN, VALUE_RULE)
            for k, v in mapping.items()}


def check_placeable(spec: JobSpec, known: Sequence[WorkerSlot]) -> None:
    """Refuse a job that no worker the cluster has ever had could run (with its reasons); a job
    that only no *current* worker matches is accepted and waits."""
    if not known or not (spec.resources or spec.labels):
        return
    probe = Job(id=0, task=spec.task, queue=spec.queue, priority=spec.priority, state=State.QUEUED,
                payload={}, created_at=0, updated_at=0, run_at=0, attempt=0, failures=0, lost_count=0,
                retry=spec.retry, resources=spec.resources, labels=spec.labels)
    c = Constraints.of(probe)
    reasons = [w.why_not(probe, c) for w in known]
    if all(reasons):
        shown = "; ".join(r for r in reasons[:5] if r)
        raise BadInput(f"no worker of this cluster can run this job: {shown}")


class _Waiters:
    """Threads waiting for jobs to end, woken by the embedded coordinator instead of polling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[int, list[_Group]] = {}

    def notify(self, job_id: int, state: State) -> None:
        with self._lock:
            groups = self._groups.pop(job_id, ())
        for group in groups:
            group.done(job_id)

    def group(self, ids: Iterable[int]) -> _Group:
        group = _Group(set(ids))
        with self._lock:
            for job_id in group.remaining:
                self._groups.setdefault(job_id, []).append(group)
        return group

    def forget(self, group: _Group) -> None:
        with self._lock:
            for job_id in list(group.remaining):
                waiting = self._groups.get(job_id)
                if waiting and group in waiting:
                    waiting.remove(group)
                    if not waiting:
                        del self._groups[job_id]


class _Group:
    def __init__(self, ids: set[int]):
        self.remaining = ids
        self._lock = threading.Lock()
        self.event = threading.Event()
        if not ids:
            self.event.set()

    def done(self, job_id: int) -> None:
        with self._lock:
            self.remaining.discard(job_id)
            if not self.remaining:
                self.event.set()


class Client:
    def __init__(self, store: JobStore, config: ClusterConfig, runtime: BackgroundRuntime | None):
        self.store = store
        self.config = config
        self.runtime = runtime
        self._waiters = _Waiters()
        if runtime is not None and runtime.runtime.coordinator is not None:
            runtime.runtime.coordinator.add_listener(self._waiters.notify)
        driver = runtime.runtime.pipelines if runtime is not None else None
        self.pipelines = Pipelines(PipelineRunner(store, config, wake=self._wake),
                                   poke=driver.poke if driver is not None else lambda run_id: None)

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, task: str, payload: dict[str, Any] | None = None, **options: Any) -> Job:
        """Submit one job. Options: queue, priority, run_at, delay, timeout, retries, backoff,
        max_backoff, idempotency_key, resources, labels."""
        return self.submit_many(task, [payload or {}], **options)[0]

    def submit_many(self, task: str, payloads: Sequence[dict[str, Any]], **options: Any) -> list[Job]:
        """Submit many jobs of one task in one transaction: all are stored, or none."""
        make = spec_factory(self.config, task, **options)
        return self.submit_groups([([make(p) for p in payloads], None)])[0]

    def submit_groups(self, groups: Sequence[tuple[Sequence[JobSpec], AuditEntry | None]]) -> list[list[Job]]:
        """Several submissions in one transaction: all stored, or none."""
        constrained = [s for specs, _ in groups for s in specs if s.resources or s.labels]
        if constrained:
            known = self._known_workers()
            distinct = {(s.queue, tuple(sorted(s.resources.items())), tuple(sorted(s.labels.items()))): s
                        for s in constrained}
            for spec in distinct.values():
                check_placeable(spec, known)
        stored = self.store.submit_groups(groups, time.time())
        self._wake()
        return stored

    def _known_workers(self) -> list[WorkerSlot]:
        """Every worker the cluster has had (the registry keeps gone ones), and the local workers
        cluster.yaml declares."""
        slots = [WorkerSlot(address=r.address, name=r.name, nthreads=r.nthreads, labels=r.labels,
                            resources=r.resources) for r in self.store.list_workers()]
        c = self.config.cluster
        if not c.scheduler:
            for i in range(c.workers):
                profile = c.worker_profiles[i] if i < len(c.worker_profiles) else None
                resources = {"CPU": float(c.threads_per_worker), **(profile.resources if profile else {})}
                slots.append(WorkerSlot(address=f"local-{i}", name=str(i), nthreads=c.threads_per_worker,
                                        labels=dict(profile.labels) if profile else {},
                                        resources=resources,
                                        accepts=frozenset(profile.accepts) if profile else frozenset()))
        return slots

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
        return self.store.counts()

    def status(self, window: float = 60.0) -> dict[str, Any]:
        """The cluster in one answer (what GET /api/v1/cluster/status returns)."""
        from clusterai.service.status import cluster_status

        return cluster_status(self.store, window, alerts=self.config.alerts)

    def tasks(self) -> builtins.list[dict[str, Any]]:
        from clusterai.core.tasks import describe_tasks

        return describe_tasks()

    def requeue_dead(self, ids: Sequence[int] = (), *, everything: bool = False) -> builtins.list[int]:
        """Put dead letters back in the queue: the ids given (each must be dead), or all of them."""
        if everything:
            ids = [j.id for j in self.list(state=State.DEAD, limit=10_000_000)]
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
        self._wake()
        return builtins.list(ids)

    # -- waiting ------------------------------------------------------------------------------

    def wait(self, jobs: Sequence[JobRef], timeout: float | None = None) -> None:
        """Block until every job is finished (succeeded, dead or cancelled); ResultTimeout if they
        are not by then. Read them afterwards with get_many (kept apart: a wait on 100,000 jobs
        should not build 100,000 objects)."""
        ids = [_job_id(j) for j in jobs]
        deadline = None if timeout is None else time.monotonic() + timeout
        left = self._wait_embedded(ids, deadline) if self.runtime is not None else self._poll(ids, deadline)
        if left:
            raise ResultTimeout(f"{left} of {len(ids)} jobs still unfinished after {timeout} s")

    def _wait_embedded(self, ids: list[int], deadline: float | None) -> int:
        """Woken by our own coordinator; a slow re-check catches cancels from other processes."""
        group = self._waiters.group(ids)
        try:
            self._mark_finished(group, ids)
            while not group.event.wait(2.0):
                if deadline is not None and time.monotonic() > deadline:
                    break
                self._mark_finished(group, sorted(group.remaining)[:_CHECK_CHUNK])
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
            head = left[:_CHECK_CHUNK]
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
        self.wait([job], timeout)
        done = self.store.get(_job_id(job), attempts=False)
        if done.state is not State.SUCCEEDED:
            raise JobFailed(done.id, done.state.value, done.error)
        return done.result

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, job: JobRef) -> Job:
        return self.store.cancel(_job_id(job), time.time())

    def retry(self, job: JobRef) -> Job:
        """Run a finished (dead, cancelled or succeeded) job again."""
        requeued = self.store.requeue(_job_id(job), time.time())
        self._wake()
        return requeued

    def command_worker(self, worker: str, action: str, wait: float = 10.0) -> str | None:
        """Ask the coordinator to drain, undrain, remove or restart a worker (by name or address);
        returns what it did, or None if it has not acted within `wait` seconds."""
        from clusterai.head.registry import ACTIONS

        if action not in ACTIONS:
            raise BadInput(f"unknown worker action {action!r}; allowed: {', '.join(ACTIONS)}")
        live = [w for w in self.store.list_workers() if w.status != "gone"]
        target = next((w for w in live if worker in (w.name, w.address)), None)
        if target is None:
            known = ", ".join(w.name for w in live) or "(none)"
            raise BadInput(f"no live worker named {worker!r}; live workers: {known}")
        command_id = self.store.add_worker_command(target.address, action, time.time())
        self._wake()
        deadline = time.monotonic() + wait
        while True:
            _, _, done_at, outcome = self.store.worker_command(command_id)
            if done_at is not None:
                return outcome
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def camera_counts(self, *, job: int | None = None, camera: str | None = None, since: float | None = None,
                      until: float | None = None, limit: int = 1000) -> dict[str, Any]:
        """Count series of camera.count jobs: the latest totals per job, and the points asked for."""
        series = [s for s in self.store.count_series()
                  if (job is None or s["job_id"] == job) and (camera is None or s["camera"] == camera)]
        points = self.store.list_counts(job_id=job, camera=camera, since=since, until=until, limit=limit)
        return {"series": series, "points": [p.to_dict() for p in points], "truncated": len(points) == limit}

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
