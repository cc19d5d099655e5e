"""Tasks only the benchmarks use; workers import this module (tasks=["bench.tasks"])."""

from __future__ import annotations

import time

from pydantic import Field

import clusterai


@clusterai.task("bench.sleep", retries=0)
def sleep(seconds: float = Field(2.0, ge=0, le=60)) -> dict:
    """Holds a worker for a while, so that it can be killed in the middle of a job."""
    time.sleep(seconds)
    return {"slept": seconds}
