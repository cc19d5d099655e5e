"""The clusterai WorkerPlugin: every Dask worker loads it.

It adds three comm handlers, `clusterai_run` (run a batch of attempts in the plugin's own thread
pool), `clusterai_ping` (liveness and a snapshot of the worker) and `clusterai_stop` (the head asks
a running attempt to stop: a pruned trial), all over Dask's own comms as
plain msgpack (no pickle): the coordinator reaches the worker without a scheduler round trip per
job. It also publishes the same snapshot with every Dask heartbeat (`metrics["clusterai"]`):
labels, resources, models, the queues it accepts, and live load and latency per task.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from clusterai.core import logline, media_policy
from clusterai.core.smoothing import DURATION_ALPHA, ewma
from clusterai.core.tasks import import_task_modules, known_tasks
from clusterai.worker.execute import request_stop, run_batch, set_event_sink

PLUGIN_NAME = "clusterai"
# A worker started outside cluster.yaml (e.g. `clusterai worker --label region=eu`) gets its
# profile from these variables, as JSON.
PROFILE_ENV = "CLUSTERAI_WORKER_PROFILE"


def library_threads(nthreads: int) -> dict[str, str]:
    """Environment for a worker process: OpenCV's thread pool as wide as the worker's threads, as
    Dask does for OpenMP/MKL/OpenBLAS (one each), unless set already. By default OpenCV takes every
    core in every worker: N workers on one machine would run N x cores threads."""
    return {"OPENCV_FOR_THREADS_NUM": os.environ.get("OPENCV_FOR_THREADS_NUM", str(max(1, nthreads)))}


class ClusterAIWorkerPlugin(WorkerPlugin):
    name = PLUGIN_NAME

    def __init__(self, task_modules: list[str] | tuple[str, ...] = (),
                 profiles: dict[str, dict[str, Any]] | None = None, *,
                 media: list[str] | tuple[str, ...] | None = None, loglines: str | None = None):
        self.task_modules = list(task_modules)
        self.profiles = dict(profiles or {})
        # the head's media.sources and logline.dir, as plain data: every worker, also one that joins
        # later from another machine, checks sources and writes log lines by the head's rules
        self.media = list(media) if media is not None else None
        self.loglines = loglines

    def setup(self, worker: Any) -> None:
        _ignore_terminal_interrupts()
        if self.media is not None:
            media_policy.set_policy(media_policy.SourcePolicy.parse(self.media))
        if self.loglines is not None:
            logline.set_log_dir(self.loglines)
        import_task_modules(self.task_modules)
        self.worker = worker
        self.inflight = 0
        self.completed = 0
        self.latency: dict[str, float] = {}
        self.profile = self._profile_for(str(worker.name))
        self.pool = ThreadPoolExecutor(max(1, worker.state.nthreads), thread_name_prefix="clusterai-task")
        worker.handlers["clusterai_run"] = self.run
        # tasks run in threads; Dask's batched stream belongs to the worker's event loop
        set_event_sink(lambda topic, msg: worker.loop.add_callback(worker.log_event, topic, msg))
        worker.handlers["clusterai_ping"] = self.ping
        worker.handlers["clusterai_stop"] = self.stop_attempt
        worker.metrics[PLUGIN_NAME] = lambda _worker: self.snapshot()

    def teardown(self, worker: Any) -> None:
        worker.handlers.pop("clusterai_run", None)
        set_event_sink(None)
        worker.handlers.pop("clusterai_ping", None)
        worker.handlers.pop("clusterai_stop", None)
        worker.metrics.pop(PLUGIN_NAME, None)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _profile_for(self, name: str) -> dict[str, Any]:
        profile = dict(self.profiles.get(name) or {})
        if not profile and os.environ.get(PROFILE_ENV):
            profile = json.loads(os.environ[PROFILE_ENV])
        resources = {"CPU": float(self.worker.state.nthreads),
                     "MEMORY": float(self.worker.memory_manager.memory_limit or 0), **gpu_resources()}
        resources.update(profile.get("resources") or {})
        profile["resources"] = resources
        return profile

    async def run(self, items: list[dict[str, Any]], stop_after: int | None = None) -> list[dict[str, Any]]:
        self.inflight += len(items)
        try:
            loop = asyncio.get_running_loop()
            replies = await loop.run_in_executor(self.pool, run_batch, items, str(self.worker.name), stop_after)
        finally:
            self.inflight -= len(items)
        for item, reply in zip(items, replies):
            if reply["outcome"] != "abandoned":
                self._observe(item["task"], reply.get("duration", 0.0))
        self.completed += len(items)
        return replies

    def _observe(self, task: str, seconds: float) -> None:
        self.latency[task] = ewma(self.latency.get(task), seconds, DURATION_ALPHA)

    async def stop_attempt(self, job_id: int, attempt: int, reason: str) -> str:
        """The task sees it at its next `trial.report` (worker/trial.py)."""
        request_stop(int(job_id), int(attempt), str(reason)[:500])
        return "ok"

    async def ping(self) -> dict[str, Any]:
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """What the coordinator's registry needs: identity, capabilities, load and speed."""
        memory_limit = self.worker.memory_manager.memory_limit or 0
        rss = float(self.worker.monitor.proc.memory_info().rss)
        return {
            "name": str(self.worker.name),
            "pid": os.getpid(),
            "time": time.time(),
            "labels": dict(self.profile.get("labels") or {}),
            "resources": dict(self.profile["resources"]),
            "models": list(self.profile.get("models") or []),
            "model_server": self.profile.get("model_server"),  # {"url", "token"}: kept in memory by the head
            "datasets": list(self.profile.get("datasets") or []),
            "accepts": list(self.profile.get("accepts") or []),
            "tasks": known_tasks(),
            "slots": int(self.profile.get("slots") or 0),
            "inflight": self.inflight,
            "completed": self.completed,
            "latency": dict(self.latency),
            "cpu": float(self.worker.monitor.recent().get("cpu", 0.0)),
            "memory": rss,
            "memory_percent": 100.0 * rss / memory_limit if memory_limit else 0.0,
            **gpu_usage(),
        }


def gpu_resources() -> dict[str, float]:
    """GPU count and memory through NVML, when a GPU and pynvml are present; else nothing."""
    nvml = _nvml()
    if nvml is None:
        return {}
    count = nvml.nvmlDeviceGetCount()
    total = sum(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).total for i in range(count))
    return {"GPU": float(count), "GPU_MEMORY": float(total)} if count else {}


def gpu_usage() -> dict[str, float]:
    nvml = _nvml()
    if nvml is None:
        return {}
    count = nvml.nvmlDeviceGetCount()
    if not count:
        return {}
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    used = sum(nvml.nvmlDeviceGetMemoryInfo(h).used for h in handles)
    util = sum(nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles) / count
    return {"gpu_percent": float(util), "gpu_memory": float(used)}


_nvml_module: Any = None
_nvml_tried = False


def _nvml() -> Any:
    global _nvml_module, _nvml_tried
    if not _nvml_tried:
        _nvml_tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_module = pynvml
        except Exception:  # noqa: BLE001 - no NVML library, no driver, or no GPU: no GPU metrics
            _nvml_module = None
    return _nvml_module


def _ignore_terminal_interrupts() -> None:
    """Ctrl-C reaches every process of the terminal's group; the process that owns the cluster
    stops the workers in order, so a worker must not die of that SIGINT on its own."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
