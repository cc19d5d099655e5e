"""kill -9 of the coordinator process mid-run, then a restart: the queue resumes, nothing is lost,
and nothing stays running past its lease."""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml
from conftest import accepted_successes, kill_group, read_executions, start_coordinator, stop_coordinator, wait_for

import clusterai
from clusterai import State

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]



@pytest.mark.timeout(180)
def test_kill9_coordinator_then_restart_loses_nothing(tmp_path):
    store = tmp_path / "clusterai.db"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "store": f"sqlite:///{store}",
        "tasks": ["testtasks"],
        "cluster": {"workers": 2, "dashboard": False, "memory_limit": "2GiB", "death_timeout": 5},
        "coordinator": {"lease_seconds": 3},
        "api": {"port": 0},
    }))
    executions = tmp_path / "executions.log"
    out = tmp_path / "coordinator.log"
    client = clusterai.connect(config, store=f"sqlite:///{store}")
    jobs = client.submit_many("test.record", [{"path": str(executions), "key": f"k{i}", "sleep": 0.02}
                                              for i in range(300)])
    first = start_coordinator(config, out)
    second = None
    try:
        wait_for(lambda: client.counts()["succeeded"] >= 60, 90, "the first coordinator to work")
        os.kill(first.pid, signal.SIGKILL)  # the coordinator only: its workers are orphaned
        first.wait(10)
        counts = client.counts()
        assert counts["succeeded"] < 300, "the kill should land mid-run"

        second = start_coordinator(config, out)
        client.wait(jobs, timeout=120)
        finished = [client.get(j.id) for j in jobs]
        assert {j.state for j in finished} == {State.SUCCEEDED}
        assert all(accepted_successes(j) == 1 for j in finished)
        assert client.counts()["running"] == 0
        assert set(read_executions(executions)) == {f"k{i}" for i in range(300)}
        given_back = [j for j in finished if any(a.outcome and a.outcome.value == "abandoned"
                                                 for a in j.attempts)]
        assert given_back or counts["running"] == 0
    finally:
        kill_group(first)
        stop_coordinator(second)
        client.close()


@pytest.mark.timeout(60)
def test_orphaned_workers_exit_after_the_coordinator_dies(tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "store": f"sqlite:///{tmp_path / 'clusterai.db'}",
        "cluster": {"workers": 2, "dashboard": False, "memory_limit": "2GiB", "death_timeout": 5},
    }))
    proc = start_coordinator(config, tmp_path / "coordinator.log")
    try:
        client = clusterai.connect(config, store=f"sqlite:///{tmp_path / 'clusterai.db'}")
        workers = wait_for(lambda: [w for w in client.workers() if w.pid], 60, "workers")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        def all_gone() -> bool:
            alive = []
            for w in workers:
                try:
                    os.kill(w.pid, 0)
                    alive.append(w.pid)
                except ProcessLookupError:
                    pass
            return not alive

        wait_for(all_gone, 40, "orphaned worker processes to exit")
        client.close()
    finally:
        kill_group(proc)
        time.sleep(0.1)
