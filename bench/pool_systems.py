"""The systems of the heterogeneous-pool benchmark: clusterai (one run per placement strategy),
Celery + Redis with its default prefetching, and plain Dask.

Each run starts a pool of 3 single-slot workers at speeds 1, 2 and 4 (bench.pool_tasks.SPEEDS),
times calibration jobs on each worker while the others are idle, then times the whole
workload from the first submit until the last result is stored (clusterai: committed to SQLite;
Celery: in the Redis backend and collected; Dask: gathered). It returns the raw job records;
bench/placement_pool.py turns them into figures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, ROOT, log, wait_until
from bench.pool_tasks import SPEEDS

CALIBRATION_UNITS = 8
CALIBRATION_REPEATS = 4
RESULT_TIMEOUT = 600


@dataclass(frozen=True)
class Spec:
    """What every system runs: the same job sizes, in the same order, with the same unit."""

    mode: str  # "cpu" or "sleep" (see bench.pool_tasks)
    sizes: list[int]
    unit_rounds: int  # sha256 rounds per unit at speed 1 (cpu mode)
    unit_seconds: float  # seconds per unit at speed 1 (sleep mode)

    def payload(self, units: int) -> dict[str, Any]:
        return {"units": units, "mode": self.mode, "unit_rounds": self.unit_rounds,
                "unit_seconds": self.unit_seconds}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tree_cpu_seconds() -> float:
    """CPU time of this process and everything it started: client, scheduler, coordinator,
    workers, nannies, Celery's parent processes, redis-server."""
    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU-seconds the whole machine has spent busy, and those the hypervisor stole."""
    t = psutil.cpu_times()
    # named one by one: Linux's guest times are already inside user and nice
    busy = t.user + t.system + sum(getattr(t, name, 0.0) for name in ("nice", "irq", "softirq"))
    return busy, getattr(t, "steal", 0.0)


def timed(submit_and_collect: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """The records of one timed run, with its start (wall clock, as the workers' records), its
    makespan (monotonic), the CPU-seconds the run's process tree spent meanwhile, and those the
    rest of the machine spent (other work running beside the benchmark)."""
    tree_before, (machine_before, steal_before) = tree_cpu_seconds(), machine_cpu_seconds()
    t0, started = time.time(), time.perf_counter()
    records = submit_and_collect()
    makespan = time.perf_counter() - started
    tree = tree_cpu_seconds() - tree_before
    machine, steal = machine_cpu_seconds()
    return {"t0": t0, "makespan_s": makespan, "records": records, "tree_cpu_s": tree,
            "outside_cpu_s": machine - machine_before - tree, "steal_cpu_s": steal - steal_before}


def calibrate(run_alone: Callable[[int], dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds per unit of each worker, timed inside the job (no dispatch overhead) while the
    other workers are idle; `run_alone(speed)` runs one calibration job on that worker. The
    workers take turns, so that a slow spell of the machine (this VM has them: the same job can
    take 1.6x as long for a second) does not fall on every sample of one worker."""
    samples: dict[str, list[float]] = {str(speed): [] for speed in SPEEDS}
    for _ in range(CALIBRATION_REPEATS):
        for speed in SPEEDS:
            record = run_alone(speed)
            if record["speed"] != speed:
                raise RuntimeError(f"a calibration job for the {speed}x worker ran elsewhere: {record}")
            samples[str(speed)].append(record["busy_s"] / record["units"])
    return samples


def calibrated(samples: dict[str, list[float]]) -> dict[str, Any]:
    """The fastest sample counts: a worker alone is as fast as it gets."""
    return {"calibration_s_per_unit": {speed: min(times) for speed, times in samples.items()},
            "calibration_samples": samples}


# -- clusterai ----------------------------------------------------------------------------------


# Calibration jobs go to a queue of their own, placed by least_loaded whatever the strategy under
# test: they are pinned to a worker by a hard label, which the `dask` strategy does not honour, and
# the `priority` reserve holds back a normal job that only one single-slot worker can take.
CALIBRATION_QUEUE = "calibration"


def clusterai_config(store_dir: str | Path, strategy: str, reserve: int | None = None) -> Any:
    from clusterai.config import ClusterConfig

    return ClusterConfig().with_overrides(
        store=f"sqlite:///{Path(store_dir).resolve()}/clusterai.db",
        tasks=["bench.pool_tasks"],
        **{"cluster.workers": len(SPEEDS), "cluster.threads_per_worker": 1, "cluster.dashboard": False,
           "cluster.worker_profiles": [{"labels": {"speed": str(s)}} for s in SPEEDS],
           "placement.strategy": strategy, "placement.queues": {CALIBRATION_QUEUE: "least_loaded"},
           "placement.reserve": reserve},
    )


def run_clusterai(strategy: str, spec: Spec, reserve: int | None = None) -> dict[str, Any]:
    import clusterai

    with tempfile.TemporaryDirectory(prefix="clusterai-pool-") as tmp, \
            clusterai.connect(clusterai_config(tmp, strategy, reserve)) as c:
        # all workers up first: one still starting would take CPU from the one calibrated
        wait_until(lambda: sum(w.status == "ready" for w in c.workers()) >= len(SPEEDS), 60, "workers ready")

        def run_alone(speed: int) -> dict[str, Any]:
            job = c.submit("bench.units", spec.payload(CALIBRATION_UNITS), labels={"speed": str(speed)},
                           queue=CALIBRATION_QUEUE)
            return c.result(job, timeout=RESULT_TIMEOUT)

        samples = calibrate(run_alone)

        def submit_and_collect() -> list[dict[str, Any]]:
            jobs = c.submit_many("bench.units", [spec.payload(u) for u in spec.sizes])
            c.wait(jobs, timeout=RESULT_TIMEOUT)
            return [j.result for j in c.get_many(jobs)]

        run = timed(submit_and_collect)
        counts = c.counts()
    if counts.get("succeeded") != sum(counts.values()):
        raise RuntimeError(f"clusterai/{strategy}: not every job succeeded: {counts}")
    return {**run, **calibrated(samples)}


# -- plain Dask ---------------------------------------------------------------------------------


def run_dask(spec: Spec) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from bench.pool_tasks import dask_units

    cluster = LocalCluster(n_workers=len(SPEEDS), threads_per_worker=1, processes=True,
                           dashboard_address=None, worker_dashboard_address=None)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(len(SPEEDS))
            address_of = {SPEEDS[int(w["name"])]: address
                          for address, w in client.scheduler_info()["workers"].items()}

            def run_alone(speed: int) -> dict[str, Any]:
                return client.submit(dask_units, **spec.payload(CALIBRATION_UNITS), workers=[address_of[speed]],
                                     pure=False).result(RESULT_TIMEOUT)

            samples = calibrate(run_alone)

            def submit_and_collect() -> list[dict[str, Any]]:
                rest = {k: v for k, v in spec.payload(0).items() if k != "units"}
                return client.gather(client.map(dask_units, spec.sizes, pure=False, **rest))

            run = timed(submit_and_collect)
    finally:
        cluster.close()
    return {**run, **calibrated(samples)}


# -- Celery + Redis -----------------------------------------------------------------------------


@contextmanager
def celery_worker(url: str, speed: int) -> Iterator[None]:
    """One `celery worker --concurrency 1` process at `speed`; it also listens on a queue of its
    own (speedN), which only the calibration job uses."""
    env = {**os.environ, "BENCH_REDIS_URL": url, "SPEED": str(speed),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"pool-celery-worker-{speed}.log", "wb") as logfile:
        # its own session, so that stopping it stops its pool process too
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.pool_celery_app", "worker", "--pool", "prefork",
             "--concurrency", "1", "-n", f"speed{speed}@%h", "-Q", f"celery,speed{speed}",
             "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def run_celery(spec: Spec) -> dict[str, Any]:
    from bench.peers_celery import redis_server

    with redis_server() as url, ExitStack() as workers:
        os.environ["BENCH_REDIS_URL"] = url  # read by bench.pool_celery_app when first imported
        from celery.result import ResultSet

        from bench.pool_celery_app import app, units

        for speed in SPEEDS:
            workers.enter_context(celery_worker(url, speed))
        wait_until(lambda: len(app.control.ping(timeout=0.5)) >= len(SPEEDS), 60, "celery workers start")

        def run_alone(speed: int) -> dict[str, Any]:
            return units.apply_async(kwargs=spec.payload(CALIBRATION_UNITS), queue=f"speed{speed}").get(
                timeout=RESULT_TIMEOUT)

        samples = calibrate(run_alone)

        def submit_and_collect() -> list[dict[str, Any]]:
            # one delay() per job, as the job-plane benchmark found it the faster way to publish
            results = ResultSet([units.delay(**spec.payload(u)) for u in spec.sizes])
            return results.join_native(timeout=RESULT_TIMEOUT)

        run = timed(submit_and_collect)
        app.close()
    return {**run, **calibrated(samples)}


def run_system(system: str, spec: Spec) -> dict[str, Any]:
    """`celery`, `dask`, `clusterai:STRATEGY` or `clusterai:STRATEGY:reserve=N`."""
    log(f"pool: {system}, {spec.mode} work, {len(spec.sizes)} jobs")
    if system == "celery":
        return run_celery(spec)
    if system == "dask":
        return run_dask(spec)
    kind, strategy, *options = system.split(":")
    reserve = next((int(o.removeprefix("reserve=")) for o in options if o.startswith("reserve=")), None)
    if kind != "clusterai" or not strategy:
        raise ValueError(f"unknown system {system!r}")
    return run_clusterai(strategy, spec, reserve)
