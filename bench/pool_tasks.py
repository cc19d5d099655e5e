"""The job of the heterogeneous-pool benchmark (bench/placement_pool.py), for all three systems.

One job is `units` units of work. A worker of speed S does a unit in 1/S of the time a speed-1
worker needs: with `mode="cpu"` it runs 1/S of the sha256 rounds (real CPU work, so workers that
share cores slow each other down, as on a real machine), with `mode="sleep"` it sleeps 1/S of
the time (no contention: placement alone decides the makespan).

Where the speed comes from differs by system, so that each reads it the way it would in practice:
clusterai from the worker's profile label `speed` (cluster.worker_profiles), plain Dask from the
worker's name (0, 1, 2), Celery from $SPEED in the worker process's environment.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

from pydantic import Field

import clusterai

SPEEDS = (1, 2, 4)  # the pool: worker i runs at SPEEDS[i]
Mode = Literal["cpu", "sleep"]


def sha256_rounds(rounds: int) -> bytes:
    """Chained, so that no round can be skipped or cached; small input, so the GIL is never let go."""
    digest = b"clusterai"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


def work(units: int, speed: float, mode: Mode, unit_rounds: int, unit_seconds: float) -> dict[str, Any]:
    """Do `units` units at `speed`; what the benchmark needs to know about the job, as JSON."""
    started_wall, started, started_cpu = time.time(), time.perf_counter(), time.thread_time()
    if mode == "cpu":
        sha256_rounds(round(units * unit_rounds / speed))
    else:
        time.sleep(units * unit_seconds / speed)
    return {"units": units, "speed": speed, "start": started_wall, "end": time.time(),
            "busy_s": time.perf_counter() - started, "cpu_s": time.thread_time() - started_cpu}


# -- clusterai --------------------------------------------------------------------------------


def _clusterai_speed() -> float:
    from distributed import Worker, get_worker

    try:
        worker = get_worker()
    except ValueError:
        # clusterai runs batches on its plugin's own thread pool (loop.run_in_executor, which does
        # not carry Dask's context), where get_worker() finds nothing; a worker process holds one
        # Worker, so take that one
        worker = next(iter(Worker._instances))
    plugin: Any = worker.plugins["clusterai"]  # clusterai's ClusterAIWorkerPlugin
    return float(plugin.profile["labels"]["speed"])


@clusterai.task("bench.units", retries=0)
def units(
    units: int = Field(..., ge=1, le=10_000),
    mode: Mode = "cpu",
    unit_rounds: int = Field(0, ge=0),
    unit_seconds: float = Field(0.0, ge=0),
) -> dict[str, Any]:
    return work(units, _clusterai_speed(), mode, unit_rounds, unit_seconds)


# -- plain Dask -------------------------------------------------------------------------------


def dask_units(units: int, mode: Mode, unit_rounds: int, unit_seconds: float) -> dict[str, Any]:
    """Importable by reference on the workers; a LocalCluster names its workers 0, 1, 2..."""
    from distributed import get_worker

    return work(units, SPEEDS[int(get_worker().name)], mode, unit_rounds, unit_seconds)
