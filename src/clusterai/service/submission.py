"""Submission: a task name, a payload and options become a validated JobSpec (options resolved
call > @task > queue config > defaults), and a constrained job is checked against every worker
the cluster has had. The Python client, the API and the CLI all submit through here."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from clusterai.config import ClusterConfig
from clusterai.core.model import (
    KEY_PATTERN,
    NAME_PATTERN,
    NAME_RULE,
    VALUE_PATTERN,
    VALUE_RULE,
    Job,
    JobSpec,
    Priority,
    RetryPolicy,
    State,
)
from clusterai.core.nesting import MAX_DEPTH, deeper_than
from clusterai.core.tasks import get_task
from clusterai.errors import BadInput, NestedTooDeep
from clusterai.placement import Constraints, WorkerSlot
from clusterai.store.protocol import JobStore


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


def known_workers(store: JobStore, config: ClusterConfig) -> list[WorkerSlot]:
    """Every worker the cluster has had (the registry keeps gone ones), and the local workers
    cluster.yaml declares."""
    slots = [WorkerSlot(address=r.address, name=r.name, nthreads=r.nthreads, labels=r.labels,
                        resources=r.resources) for r in store.list_workers()]
    c = config.cluster
    if not c.scheduler:
        for i in range(c.workers):
            profile = c.worker_profiles[i] if i < len(c.worker_profiles) else None
            resources = {"CPU": float(c.threads_per_worker), **(profile.resources if profile else {})}
            slots.append(WorkerSlot(address=f"local-{i}", name=str(i), nthreads=c.threads_per_worker,
                                    labels=dict(profile.labels) if profile else {},
                                    resources=resources,
                                    accepts=frozenset(profile.accepts) if profile else frozenset()))
    return slots
