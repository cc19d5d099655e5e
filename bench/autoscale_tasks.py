"""The autoscale benchmark's one task; clusterai's workers import this module (tasks=["bench.autoscale_tasks"])
and plain Dask's workers call the same function by reference (bench is on their PYTHONPATH)."""

from __future__ import annotations

import os
import time

import clusterai


@clusterai.task("bench.autoscale.sleep")
def sleep(key: str, seconds: float, log_path: str) -> dict:
    """Sleep, then append one line per execution (so a job run twice is seen), and answer when the
    body started: the queue wait is measured from the same clock for both systems."""
    started = time.time()
    time.sleep(seconds)
    ended = time.time()
    line = f"{key} {os.getpid()} {started:.6f}\n"
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"key": key, "started": started, "ended": ended, "pid": os.getpid()}
