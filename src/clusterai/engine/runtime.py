"""Starts the job plane: a Dask cluster (embedded LocalCluster of worker processes, or an existing
scheduler), the clusterai worker plugin on every worker, and the coordinator."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

from distributed import Client, LocalCluster

from clusterai.config import ClusterConfig
from clusterai.coordinator import Coordinator
from clusterai.engine.plugin import ClusterAIWorkerPlugin
from clusterai.errors import ClusterAIError, ConfigError
from clusterai.jobs.store import JobStore, open_store
from clusterai.tasks import import_task_modules

log = logging.getLogger("clusterai.runtime")


class ClusterRuntime:
    """The parts of a running cluster, started and stopped together on one event loop."""

    def __init__(self, config: ClusterConfig, *, store: JobStore | None = None):
        self.config = config
        self.store = store
        self.local_cluster: LocalCluster | None = None
        self.dask: Client | None = None
        self.coordinator: Coordinator | None = None

    async def start(self) -> None:
        import_task_modules(self.config.tasks)
        if self.store is None:
            self.store = open_store(self.config.store)
        c = self.config.cluster
        if c.scheduler:
            target: Any = c.scheduler
        else:
            self.local_cluster = await LocalCluster(
                n_workers=c.workers,
                threads_per_worker=c.threads_per_worker,
                processes=True,
                host=c.host,
                memory_limit=c.memory_limit,
                dashboard_address=c.dashboard_address if c.dashboard else None,
                worker_dashboard_address=None,
                death_timeout=c.death_timeout,
                asynchronous=True,
            )
            target = self.local_cluster
        try:
            self.dask = await Client(target, asynchronous=True, timeout=c.death_timeout)
        except OSError as exc:
            raise ConfigError(f"cluster.scheduler: cannot reach {c.scheduler!r}: {exc}") from None
        profiles = {str(i): p.model_dump() for i, p in enumerate(c.worker_profiles)}
        await self.dask.register_plugin(ClusterAIWorkerPlugin(self.config.tasks, profiles))
        self.coordinator = Coordinator(self.store, self.dask, settings=self.config.coordinator,
                                       placement=self.config.placement)
        await self.coordinator.start()

    async def stop(self) -> None:
        # Each step is bounded: a shutdown must end even when a worker is stuck or gone.
        pids = [s.pid for s in self.coordinator.slots.values() if s.pid] if self.coordinator else []
        if self.coordinator is not None:
            await _bounded("coordinator", self.coordinator.stop(), 15)
        if self.dask is not None:
            await _bounded("dask client", self.dask.close(), 10)
        if self.local_cluster is not None and not await _bounded("local cluster", self.local_cluster.close(), 20):
            _kill_leftovers(pids)

    @property
    def dashboard_link(self) -> str | None:
        if self.local_cluster is not None and self.config.cluster.dashboard:
            return self.local_cluster.dashboard_link
        return None

    @property
    def scheduler_address(self) -> str | None:
        if self.local_cluster is not None:
            return self.local_cluster.scheduler_address
        return self.config.cluster.scheduler


async def _bounded(what: str, step: Any, seconds: float) -> bool:
    """Run one shutdown step for at most `seconds`; True when it finished. Unlike wait_for, a step
    that ignores its cancellation cannot hold the shutdown hostage."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("closing the %s took over %s s; moving on", what, seconds)
        return False
    if task.exception() is not None:
        log.warning("closing the %s failed: %s", what, task.exception())
    return True


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            log.warning("killed worker process %d, which did not close in time", pid)
        except (ProcessLookupError, PermissionError):
            pass


class BackgroundRuntime:
    """A ClusterRuntime on its own thread and event loop, for the Python client and the demo."""

    def __init__(self, config: ClusterConfig, *, store: JobStore | None = None):
        self.runtime = ClusterRuntime(config, store=store)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="clusterai-runtime", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ClusterAIError(f"the cluster did not start within {timeout} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        # Not asyncio.run: at exit it waits for every leftover task, and a Dask task that ignores
        # its cancellation would then hang close() forever.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=5))
        finally:
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.runtime.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()
            await self.runtime.stop()
            return
        self._ready.set()
        await self._stop.wait()
        await self.runtime.stop()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the runtime's loop (for example to start the API beside it)."""
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
