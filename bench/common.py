"""Shared helpers: the workload sizes, timing, percentiles, RSS sampling, result files, and server
processes in sessions of their own."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# `--quick` (a smoke run of the harness) shrinks every workload tenfold; figures from it mean nothing.
_QUICK = os.environ.get("BENCH_QUICK") == "1"


def sized(n: int) -> int:
    return max(10, n // 10) if _QUICK else n


WORKERS = 2  # worker processes for every system, one thread (or pool process) each
WARMUP_JOBS = sized(500)  # lets clusterai learn task durations (batch sizes) and peers fill caches
WARMUP_ROUND_TRIPS = 20
LATENCY_ROUNDS = sized(300)
THROUGHPUT_REPEATS = 3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation between two."""
    ordered = sorted(samples)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "rounds": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def measure_latency(round_trip: Callable[[], object], rounds: int = LATENCY_ROUNDS) -> dict[str, float]:
    """`rounds` sequential submit -> result round trips, each timed on its own."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - started)
    return latency_stats(samples)


def measure_throughput(
    run_batch: Callable[[int], object], jobs: int, repeats: int = THROUGHPUT_REPEATS
) -> dict[str, Any]:
    """Jobs per second from the first submit to the last result collected; median of `repeats`."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_batch(jobs)
        rates.append(jobs / (time.perf_counter() - started))
    return {
        "jobs": jobs,
        "repeats": repeats,
        "jobs_per_s": round(statistics.median(rates), 1),
        "runs_jobs_per_s": [round(r, 1) for r in rates],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, pause: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(pause)


class RssSampler:
    """Samples this process's resident memory on a thread; `peak` is the largest sample seen."""

    def __init__(self, period: float = 0.2):
        self.period = period
        self.process = psutil.Process()
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-rss", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            if self._stop.wait(self.period):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A server process in a session of its own (so that stop_group reaches its children), its
    output appended to `log_path`; the repository on its path unless `env` says otherwise."""
    return subprocess.Popen(args, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=env or {**os.environ, "PYTHONPATH": str(ROOT)}, cwd=cwd)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM to the process's session, SIGKILL after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
