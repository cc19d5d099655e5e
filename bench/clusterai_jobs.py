"""clusterai: no-op throughput (submit_many -> every result committed to SQLite) and latency."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import clusterai
from bench.common import (
    WARMUP_JOBS,
    WARMUP_ROUND_TRIPS,
    WORKERS,
    log,
    measure_latency,
    measure_throughput,
    sized,
)
from clusterai.config import ClusterConfig

THROUGHPUT_JOBS = sized(20_000)


def config(store_dir: str | Path, **overrides: Any) -> ClusterConfig:
    """The embedded cluster every clusterai benchmark uses: 2 worker processes, 1 thread each."""
    return ClusterConfig().with_overrides(
        store=f"sqlite:///{Path(store_dir).resolve()}/clusterai.db",
        **{"cluster.workers": WORKERS, "cluster.threads_per_worker": 1, "cluster.dashboard": False},
        **overrides,
    )


def run_batch(c: clusterai.Client, n: int) -> None:
    jobs = c.submit_many("bench.noop", [{}] * n)
    c.wait(jobs, timeout=600)


def round_trip(c: clusterai.Client) -> None:
    c.result(c.submit("bench.noop"), timeout=30)


def warm_up(c: clusterai.Client) -> None:
    run_batch(c, WARMUP_JOBS)
    for _ in range(WARMUP_ROUND_TRIPS):
        round_trip(c)


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterai-bench-") as tmp, clusterai.connect(config(tmp)) as c:
        warm_up(c)
        log(f"clusterai: throughput, {THROUGHPUT_JOBS} no-op jobs")
        throughput = measure_throughput(lambda n: run_batch(c, n), THROUGHPUT_JOBS)
        log("clusterai: latency")
        latency = measure_latency(lambda: round_trip(c))
        counts = c.counts()
    if counts["succeeded"] != sum(counts.values()):
        raise RuntimeError(f"clusterai: not every job succeeded: {counts}")
    return {"throughput": throughput, "latency": latency, "jobs_succeeded": counts["succeeded"]}
