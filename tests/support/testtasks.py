"""Tasks used by the integration and chaos tests; imported by the test process and every worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clusterai import NonRetryableError, current_job, task


@task("test.record", retries=3, backoff=0.05, max_backoff=0.2)
def record(path: str, key: str, sleep: float = 0.0) -> dict:
    """Sleep, then append one line per execution, so tests can count how often a job really ran."""
    if sleep:
        time.sleep(sleep)
    job = current_job()
    line = f"{key} {os.getpid()} {job.attempt if job else 0}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"key": key, "pid": os.getpid()}


@task("test.sleep", retries=0)
def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


@task("test.spin", retries=0)
def spin(seconds: float) -> int:
    """Pure-Python busy loop: interruptible by the job timeout."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@task("test.suicide", retries=5)
def suicide() -> None:
    """Kills the worker process that runs it: a poison job."""
    os._exit(17)


@task("test.fail", retries=2, backoff=0.05)
def fail(message: str) -> None:
    raise RuntimeError(message)


@task("test.refuse", retries=5)
def refuse(message: str) -> None:
    raise NonRetryableError(message)


@task("test.pid", retries=0)
def pid() -> int:
    return os.getpid()


@task("test.where", retries=0)
def where(sleep: float = 0.0) -> str:
    """The name of the worker that ran it."""
    if sleep:
        time.sleep(sleep)
    job = current_job()
    return job.worker if job else ""


@task("test.fragile", retries=0)
def fragile(flag: str) -> str:
    """Fails on the worker named in the file `flag` while that file exists: a broken machine."""
    job = current_job()
    name = job.worker if job else ""
    if os.path.exists(flag) and Path(flag).read_text().strip() == name:
        raise RuntimeError(f"worker {name} is broken")
    return name


@task("test.heavy_modules", retries=0)
def heavy_modules() -> list[str]:
    """Which libraries of the `server` extra the worker running it has loaded (a light one: none)."""
    import sys

    return sorted(m for m in ("pydantic", "numpy", "fastapi", "psycopg", "prometheus_client") if m in sys.modules)
