"""Coordinator plugins: what the coordinator does beside placing jobs, hooked in rather than written
into it, in the manner of Dask's SchedulerPlugin and dramatiq's middleware. Every hook is a no-op
by default; the coordinator calls them on its event loop, so a hook must not block for long.

Built in: camera counts (reports from counting tasks stored as series), provenance (which pipeline
run made a job, told to tasks that sign for it), gateway access (each worker's inference-only
credential, for tasks that call the LLM gateway) and finish listeners (the embedded client's
waiters, the pipeline driver)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from clusterai.core.model import Job, State
from clusterai.core.tasks import get_task
from clusterai.errors import UnknownTaskError
from clusterai.head.camera_counts import CountCollector
from clusterai.head.registry import WorkerRegistry
from clusterai.placement import WorkerSlot
from clusterai.placement.planner import Planner
from clusterai.store.protocol import JobStore
from clusterai.worker.counts import TOPIC as COUNTS_TOPIC


class Coordinator(Protocol):
    """What a plugin sees of the coordinator that runs it (head/coordinator.Coordinator)."""

    client: Any  # the coordinator's Dask client
    registry: WorkerRegistry
    planner: Planner

    def holds_lease(self, job_id: int, attempt: int) -> bool: ...
    def wake(self) -> None: ...
    def expect_workers(self, within_s: float) -> None: ...


class CoordinatorPlugin:
    async def start(self, coordinator: Coordinator) -> None:
        """Once, when the coordinator starts (before it dispatches)."""

    async def stop(self, coordinator: Coordinator) -> None:
        """Once, when the coordinator stops."""

    def attempts_started(self, jobs: list[Job]) -> None:
        """Attempts were just started (in the store) for `jobs`, before they are sent to workers. May
        read the store; a StoreUnavailable it raises hands the attempts back, like the start's own."""

    def prepare_item(self, item: dict[str, Any], job: Job, slot: WorkerSlot) -> None:
        """Add to what the worker at `slot` receives for `job`'s attempt (JSON values only)."""

    def job_finished(self, job_id: int, state: State) -> None:
        """A job reached a terminal state (its outcome is committed)."""

    def tick(self, now: float) -> None:
        """About once a second, from the coordinator's registry loop."""


def task_flag(task_name: str, flag: str) -> bool:
    """A flag of a task's @task registration; False for a task this head does not know."""
    try:
        return bool(getattr(get_task(task_name), flag))
    except UnknownTaskError:
        return False


class CameraCounts(CoordinatorPlugin):
    """Stores the totals counting tasks report at their checkpoints (head/camera_counts.py)."""

    def __init__(self, store: JobStore):
        self.store = store
        self.collector: CountCollector | None = None

    async def start(self, coordinator: Coordinator) -> None:
        self.collector = CountCollector(self.store, coordinator.holds_lease)
        coordinator.client.subscribe_topic(COUNTS_TOPIC, self.collector.on_event)

    def tick(self, now: float) -> None:
        if self.collector is not None:
            self.collector.flush()

    async def stop(self, coordinator: Coordinator) -> None:
        self.tick(0.0)


class Provenance(CoordinatorPlugin):
    """Tells tasks registered with provenance=True (video.logline) which pipeline run made their job:
    from the store, since a payload says whatever its submitter wrote."""

    def __init__(self, store: JobStore):
        self.store = store
        self._runs: dict[int, int | None] = {}  # started jobs whose task wants it -> their run (None: no run)

    def attempts_started(self, jobs: list[Job]) -> None:
        wanted = [job.id for job in jobs if task_flag(job.task, "provenance")]
        if wanted:
            runs = self.store.runs_of(wanted)
            self._runs.update({job_id: runs.get(job_id) for job_id in wanted})

    def prepare_item(self, item: dict[str, Any], job: Job, slot: WorkerSlot) -> None:
        if job.id in self._runs:
            item["run"] = self._runs.pop(job.id)


class GatewayAccess(CoordinatorPlugin):
    """Where tasks registered with gateway=True (llm.generate, llm.embed) find the LLM gateway, with
    the inference-only credential of the worker they run on (kept in memory, sent with those tasks'
    attempts to that worker only)."""

    def __init__(self, url: str, credential_for: Callable[[str], str]):
        self.url = url
        self.credential_for = credential_for

    def prepare_item(self, item: dict[str, Any], job: Job, slot: WorkerSlot) -> None:
        if task_flag(job.task, "gateway"):
            item["gateway"] = {"url": self.url, "token": self.credential_for(slot.address)}

