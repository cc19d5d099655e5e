"""The clusterai WorkerPlugin: every Dask worker loads it, and it adds two comm handlers.

`clusterai_run` runs a batch of attempts in the plugin's own thread pool; `clusterai_ping`
answers lease renewals. Both travel over Dask's own comms as plain msgpack (no pickle): the
coordinator reaches the worker directly, without a scheduler round trip per job.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from clusterai.engine.execute import run_batch
from clusterai.tasks import import_task_modules, known_tasks

PLUGIN_NAME = "clusterai"


class ClusterAIWorkerPlugin(WorkerPlugin):
    name = PLUGIN_NAME

    def __init__(self, task_modules: list[str] | tuple[str, ...] = ()):
        self.task_modules = list(task_modules)
        self.inflight = 0
        self.completed = 0

    def setup(self, worker: Any) -> None:
        _ignore_terminal_interrupts()
        import_task_modules(self.task_modules)
        self.worker = worker
        self.pool = ThreadPoolExecutor(
            max(1, worker.state.nthreads), thread_name_prefix="clusterai-task"
        )
        worker.handlers["clusterai_run"] = self.run
        worker.handlers["clusterai_ping"] = self.ping

    def teardown(self, worker: Any) -> None:
        worker.handlers.pop("clusterai_run", None)
        worker.handlers.pop("clusterai_ping", None)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.inflight += len(items)
        try:
            loop = asyncio.get_running_loop()
            name = str(self.worker.name)
            return await loop.run_in_executor(self.pool, run_batch, items, name)
        finally:
            self.inflight -= len(items)
            self.completed += len(items)

    async def ping(self) -> dict[str, Any]:
        return {
            "name": str(self.worker.name),
            "pid": os.getpid(),
            "inflight": self.inflight,
            "completed": self.completed,
            "tasks": known_tasks(),
            "time": time.time(),
        }


def _ignore_terminal_interrupts() -> None:
    """Ctrl-C reaches every process of the terminal's group; the process that owns the cluster
    stops the workers in order, so a worker must not die of that SIGINT on its own."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
