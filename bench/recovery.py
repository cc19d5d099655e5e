"""Recovery: SIGKILL the worker process running a job; how long until the job runs elsewhere.

Each round runs one 2-second job while the other worker is idle, so what is timed is the
platform noticing the loss, requeueing the job and placing it again, not a wait for capacity.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import time
from typing import Any

import psutil

import clusterai
from bench.clusterai_jobs import config
from bench.common import WORKERS, log, wait_until
from clusterai.core.model import Attempt, State

ROUNDS = 3
JOB_SECONDS = 2.0


def worker_pid(address: str) -> int:
    """The pid of the Dask worker listening at tcp://host:port (a grandchild, under its nanny)."""
    port = int(address.rsplit(":", 1)[1])
    for child in psutil.Process().children(recursive=True):
        try:
            listening = child.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == port for conn in listening):
            return child.pid
    raise LookupError(f"no child process listens at {address}")


def _ready_workers(c: clusterai.Client) -> int:
    return sum(1 for w in c.workers() if w.status == "ready")


def _attempt(c: clusterai.Client, job_id: int, number: int) -> Attempt | None:
    return next((a for a in c.get(job_id).attempts if a.number == number), None)


def one_round(c: clusterai.Client) -> dict[str, Any]:
    # the killed worker's nanny starts a replacement: wait for it, so each round starts alike
    wait_until(lambda: _ready_workers(c) >= WORKERS, 60, "both workers ready")
    job = c.submit("bench.sleep", {"seconds": JOB_SECONDS})
    wait_until(lambda: c.get(job).state is State.RUNNING, 30, "job running", pause=0.005)
    victim = c.get(job).worker
    assert victim is not None
    pid = worker_pid(victim)
    time.sleep(0.2)  # well inside the job, not at its start
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _attempt(c, job.id, 2) is not None, 30, "second attempt", pause=0.005)
    lost, again = _attempt(c, job.id, 1), _attempt(c, job.id, 2)
    assert lost is not None and again is not None
    if again.worker == victim:
        raise RuntimeError(f"job {job.id} started again on the killed worker {victim}")
    c.result(job, timeout=30)
    return {
        "killed_worker": victim,
        "restarted_on": again.worker,
        "first_attempt_outcome": lost.outcome.value if lost.outcome else None,
        "detected_s": round((lost.finished_at or 0) - killed_at, 4),
        "running_elsewhere_s": round(again.started_at - killed_at, 4),
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clusterai-recovery-") as tmp, \
            clusterai.connect(config(tmp), tasks=["bench.tasks"]) as c:
        rounds = []
        for number in range(1, ROUNDS + 1):
            log(f"recovery: round {number} of {ROUNDS}")
            rounds.append(one_round(c))
    elsewhere = [r["running_elsewhere_s"] for r in rounds]
    return {
        "job_seconds": JOB_SECONDS,
        "rounds": rounds,
        "running_elsewhere_median_s": round(statistics.median(elsewhere), 4),
        "running_elsewhere_max_s": round(max(elsewhere), 4),
    }
