"""Celery + Redis: a throwaway redis-server (no persistence) as broker and result backend, and a
`celery worker --pool prefork --concurrency 2` subprocess (2 pool processes) running the no-ops.

"Every result durable" means, for Celery, every result stored in the Redis backend and
collected from there by the client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import (
    RESULTS,
    ROOT,
    WARMUP_JOBS,
    WARMUP_ROUND_TRIPS,
    WORKERS,
    free_port,
    log,
    measure_latency,
    measure_throughput,
    sized,
    wait_until,
)

THROUGHPUT_JOBS = sized(5_000)


@contextmanager
def redis_server() -> Iterator[str]:
    import redis

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        ping = redis.Redis.from_url(url)

        def up() -> bool:
            try:
                return bool(ping.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 10, "redis-server start")
        ping.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def celery_worker(url: str) -> Iterator[None]:
    env = {**os.environ, "BENCH_REDIS_URL": url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "celery-worker.log", "wb") as logfile:
        # its own session, so that stopping it stops its pool processes too
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
             "--pool", "prefork", "--concurrency", str(WORKERS), "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def run_group(n: int) -> None:
    from celery import group

    from bench.celery_app import noop

    group(noop.s() for _ in range(n)).apply_async().get(timeout=600)


def run_delay_loop(n: int) -> None:
    from celery.result import ResultSet

    from bench.celery_app import noop

    ResultSet([noop.delay() for _ in range(n)]).join_native(timeout=600)


# Both idiomatic ways to submit many tasks and collect every result; the faster one counts.
# Both collect natively (join_native): results arrive as Redis pushes them over pub/sub,
# rather than by polling one key per task.
BATCH_METHODS = {"group": run_group, "delay_loop": run_delay_loop}


def round_trip() -> None:
    from bench.celery_app import noop

    noop.delay().get(timeout=30)


def run() -> dict[str, Any]:
    with redis_server() as url:
        os.environ["BENCH_REDIS_URL"] = url  # read by bench.celery_app when first imported
        from bench.celery_app import app

        with celery_worker(url):
            wait_until(lambda: bool(app.control.ping(timeout=0.5)), 60, "celery worker start")
            for method in BATCH_METHODS.values():
                method(WARMUP_JOBS)
            for _ in range(WARMUP_ROUND_TRIPS):
                round_trip()
            by_method = {}
            for name, method in BATCH_METHODS.items():
                log(f"celery: throughput, {THROUGHPUT_JOBS} no-op tasks, {name}")
                by_method[name] = measure_throughput(method, THROUGHPUT_JOBS)
            best = max(by_method, key=lambda name: by_method[name]["jobs_per_s"])
            throughput = {**by_method[best], "method": best, "by_method": by_method}
            log("celery: latency")
            latency = measure_latency(round_trip)
        app.close()
    return {"throughput": throughput, "latency": latency}
