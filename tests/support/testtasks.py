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


@task("test.stage", retries=3, backoff=0.05, max_backoff=0.2)
def stage(path: str, key: str, value: int = 0, prefix: str = "", sleep: float = 0.0, flag: str | None = None,
          refuse: bool | None = None) -> dict:
    """A pipeline stage: logs each execution as `prefix+key` (as test.record does), fails while the
    file `flag` exists, refuses for good when `refuse`; passes key and value on."""
    record(path, prefix + key, sleep)
    if refuse:
        raise NonRetryableError(f"{key} refused")
    if flag and os.path.exists(flag):
        raise RuntimeError(f"{key}: {flag} exists")
    return {"key": key, "value": value}


@task("test.total", retries=1, backoff=0.05)
def total(path: str, values: list) -> dict:
    """A fan-in: logs its execution, sums the values it got (None for the items that failed)."""
    record(path, "total")
    return {"total": sum(v for v in values if v is not None), "missing": sum(v is None for v in values)}


@task("test.listing", retries=0)
def listing(n: int) -> dict:
    """The list a dynamic fan-out runs over."""
    return {"items": [{"key": f"d{i}", "value": i} for i in range(n)]}


@task("test.cv2_threads", retries=0)
def cv2_threads() -> int:
    """OpenCV's thread pool in the worker that runs it."""
    import cv2

    return int(cv2.getNumThreads())


@task("test.train_steps", retries=3, backoff=0.05, max_backoff=0.2)
def train_steps(path: str, x: float, steps: int = 8, checkpoint_every: int = 2, pace: float = 0.2) -> dict:
    """A stand-in trainer whose score is known, -(x - 0.3)^2, that logs every step it really
    computes ("x step attempt" per line) so tests can count the work a killed attempt lost."""
    from clusterai import trial

    state = trial.restore()
    start = int(state["step"]) if state else 0
    job = current_job()
    for step in range(start, steps):
        time.sleep(pace)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job.job_id if job else 0} {step + 1} {job.attempt if job else 0}\n".encode())
        finally:
            os.close(fd)
        score = -((x - 0.3) ** 2) * (steps / (step + 1))  # rises to the final score
        trial.report(step + 1, score=score)
        if (step + 1) % checkpoint_every == 0:
            trial.checkpoint({"step": step + 1}, step=step + 1)
    return {"score": -((x - 0.3) ** 2), "steps": steps, "resumed_from": start}


def steps_done(log: str | Path) -> list[tuple[int, int, int]]:
    """(job, step, attempt) for every step test.train_steps really computed."""
    path = Path(log)
    if not path.exists():
        return []
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in path.read_text().splitlines())]
