"""Plain Dask: the same no-ops as futures on a LocalCluster of 2 worker processes.

Nothing here is durable: results live in worker memory until gathered, and a lost scheduler
loses them all. That is the floor clusterai's store adds its cost to.
"""

from __future__ import annotations

from typing import Any

from distributed import Client, LocalCluster

from bench.common import (
    WARMUP_JOBS,
    WARMUP_ROUND_TRIPS,
    WORKERS,
    log,
    measure_latency,
    measure_throughput,
    sized,
)

THROUGHPUT_JOBS = sized(20_000)


def noop(i: int) -> None:
    """Importable on the workers by reference (bench is on their path), so nothing is pickled by value."""
    return None


def run_batch(client: Client, n: int) -> None:
    client.gather(client.map(noop, range(n), pure=False))


def round_trip(client: Client) -> None:
    client.submit(noop, 0, pure=False).result(timeout=30)


def run() -> dict[str, Any]:
    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                           dashboard_address=None, worker_dashboard_address=None)
    try:
        with Client(cluster) as client:
            run_batch(client, WARMUP_JOBS)
            for _ in range(WARMUP_ROUND_TRIPS):
                round_trip(client)
            log(f"dask: throughput, {THROUGHPUT_JOBS} no-op futures")
            throughput = measure_throughput(lambda n: run_batch(client, n), THROUGHPUT_JOBS)
            log("dask: latency")
            latency = measure_latency(lambda: round_trip(client))
    finally:
        cluster.close()
    return {"throughput": throughput, "latency": latency}
