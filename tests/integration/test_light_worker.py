"""A light worker: only clusterai's core, Dask and psutil (the `server` extra's libraries cannot be
imported there). It joins a head, runs pure-Python tasks, is never given a task it lacks, and its
idle memory is measured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from clusterai.core.model import JobSpec, State
from clusterai.store.open import open_store

pytestmark = pytest.mark.cluster

SUPPORT = Path(__file__).parents[1] / "support"
CLI = [sys.executable, "-m", "clusterai.cli.entry"]


def _spawn(args: list[str], cwd: Path, pythonpath: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": pythonpath, "COLUMNS": "200"}
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _line_with(proc: subprocess.Popen, text: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return line
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no line with {text!r}:\n" + "".join(seen[-40:]))


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _rss_mib(root_pid: int, worker_pid: int) -> tuple[float, float]:
    """(the Dask worker process alone, the whole `clusterai worker` tree: supervisor with its nanny,
    the worker, and multiprocessing's helper)."""
    root = psutil.Process(root_pid)
    tree = [root, *root.children(recursive=True)]
    assert worker_pid in {p.pid for p in tree}
    return psutil.Process(worker_pid).memory_info().rss / 2**20, sum(p.memory_info().rss for p in tree) / 2**20


def test_light_worker_runs_pure_python_tasks_and_gets_nothing_it_lacks(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    head = _spawn(["--store", url, "--tasks", "testtasks", "scheduler", "--port", "0", "--no-api"], tmp_path,
                  str(SUPPORT))
    light = None
    try:
        address = "tcp://" + _line_with(head, "scheduler tcp://").split("tcp://")[1].split()[0]
        token = subprocess.run([*CLI, "--store", url, "token", "create", "edge-box", "--role", "worker"],
                               cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()[0]
        light = _spawn(["worker", address, "--token", token, "--name", "light", "--nthreads", "1"], tmp_path,
                       f"{SUPPORT / 'light'}{os.pathsep}{SUPPORT}")
        _line_with(light, "joined")
        (record,) = wait_for(lambda: [w for w in store.list_workers() if w.name == "light" and w.status == "ready"],
                             60, "the light worker to be ready")

        (probe,) = store.submit_many([JobSpec(task="test.heavy_modules", payload={})], time.time())
        # a built-in task that needs numpy: the light worker does not have it, so it must not get it
        (numeric,) = store.submit_many([JobSpec(task="primes.count", payload={"limit": 1000})], time.time())
        done = wait_for(lambda: (j := store.get(probe.id)).state.terminal and j, 60, "the probe job")
        assert done.state is State.SUCCEEDED, done.error
        assert done.result == [], f"a light worker loaded {done.result}"

        waiting = wait_for(lambda: (j := store.get(numeric.id)).waiting and j, 30, "a reason to wait")
        assert waiting.state is State.QUEUED
        assert "does not have task 'primes.count'" in waiting.waiting

        time.sleep(3)  # idle: no job running, heartbeats only
        worker_mib, tree_mib = _rss_mib(light.pid, record.pid)
        print(f"\nidle light worker: worker process {worker_mib:.0f} MiB, "
              f"whole `clusterai worker` (supervisor + nanny + worker) {tree_mib:.0f} MiB")
        assert worker_mib < 200
    finally:
        _stop(*(p for p in (light, head) if p is not None))
        store.close()
