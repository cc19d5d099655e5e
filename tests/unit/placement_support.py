"""Builders shared by the placement tests: worker slots and jobs with only the fields a test names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from clusterai.core.model import Job, Priority, RetryPolicy, State
from clusterai.placement.slots import WorkerSlot

NOW = 1_000.0
TASK = "unit.t"


def make_slot(
    name: str = "a",
    *,
    address: str | None = None,
    nthreads: int = 1,
    labels: dict[str, str] | None = None,
    resources: dict[str, float] | None = None,
    models: Iterable[str] = (),
    datasets: Iterable[str] = (),
    latency: dict[str, float] | None = None,
    calls: int = 0,
    jobs: int = 0,
    **changes: Any,
) -> WorkerSlot:
    """A ready worker; its address sorts like its name unless one is given."""
    return WorkerSlot(
        address=address or f"tcp://{name}:8786",
        name=name,
        nthreads=nthreads,
        labels=dict(labels or {}),
        resources=dict(resources or {}),
        models=frozenset(models),
        datasets=frozenset(datasets),
        latency=dict(latency or {}),
        calls=calls,
        jobs=jobs,
        **changes,
    )


def make_job(id: int = 1, **changes: Any) -> Job:
    fields: dict[str, Any] = dict(
        id=id, task=TASK, queue="default", priority=Priority.NORMAL, state=State.QUEUED,
        payload={}, created_at=0.0, updated_at=0.0, run_at=0.0, attempt=0, failures=0,
        lost_count=0, retry=RetryPolicy(),
    )
    fields.update(changes)
    return Job(**fields)


def make_jobs(count: int, *, first_id: int = 1, **changes: Any) -> list[Job]:
    return [make_job(first_id + i, **changes) for i in range(count)]
