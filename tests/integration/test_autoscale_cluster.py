"""The autoscaler on a real embedded cluster: it grows from min on a backlog, shrinks back to min when
idle, drains busy workers instead of stopping them, and a worker killed -9 mid-drain loses nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import accepted_successes, read_executions, wait_for

import clusterai
from clusterai import State
from clusterai.config import parse_config

pytestmark = [pytest.mark.cluster]


def autoscaled_config(tmp: Path, autoscale: dict[str, Any]) -> Any:
    return parse_config({
        "store": f"sqlite:///{tmp / 'clusterai.db'}",
        "tasks": ["testtasks"],
        # no cluster.workers: every worker is the autoscaler's
        "cluster": {"threads_per_worker": 1, "dashboard": False, "memory_limit": "1GiB", "death_timeout": 10},
        "coordinator": {"lease_seconds": 6},
        "autoscale": autoscale,
    }, source="test")


def managed(client: clusterai.Client) -> list[Any]:
    return [w for w in client.workers() if w.status != "gone" and w.name.startswith("as-default-")]


def ready(client: clusterai.Client) -> list[Any]:
    return [w for w in managed(client) if w.status == "ready" and w.pid]


def state(client: clusterai.Client) -> dict[str, Any]:
    found = client.store.get_autoscale("state")
    return found[0] if found else {}


@pytest.mark.timeout(180)
def test_grows_from_min_on_a_backlog_and_shrinks_back_when_idle(tmp_path):
    config = autoscaled_config(tmp_path, {
        "min": 1, "max": 3, "interval_s": 0.5, "up_cooldown_s": 0, "down_cooldown_s": 2,
        "policies": [{"kind": "target_tracking", "target_duration_s": 2}],
    })
    client = clusterai.connect(config)
    try:
        wait_for(lambda: len(ready(client)) == 1, 60, "the autoscaler to bring the cluster to min (1)")
        log = tmp_path / "executions.log"
        jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.15}
                                                  for i in range(150)])
        wait_for(lambda: len(ready(client)) == 3, 60, "the cluster to grow to max (3) on the backlog")
        client.wait(jobs, timeout=120)
        finished = [client.get(j) for j in jobs]
        assert {j.state for j in finished} == {State.SUCCEEDED}
        assert all(accepted_successes(j) == 1 for j in finished)
        assert not [a for j in finished for a in j.attempts if a.outcome and a.outcome.value != "succeeded"]
        assert set(read_executions(log).values()) == {1}, "every job ran exactly once"

        wait_for(lambda: len(managed(client)) == 1, 60, "the idle cluster to shrink back to min (1)")
        log_rows = client.store.list_scale_decisions(limit=50)
        ups = [r for r in log_rows if r["to"] > r["from"]]
        downs = [r for r in log_rows if r["to"] < r["from"]]
        assert ups and downs
        assert max(r["to"] for r in ups) == 3 and min(r["to"] for r in downs) == 1
        assert all(r["reason"] and "current" in r["inputs"] for r in log_rows)
        wait_for(lambda: state(client)["profiles"][0]["current"] == 1, 10, "the report to show 1 worker")
        report = state(client)
        (profile,) = report["profiles"]
        assert (profile["name"], profile["min"], profile["max"], profile["current"]) == ("default", 1, 3, 1)
        assert report["samples"] and report["enabled"] is True
    finally:
        client.close()


@pytest.mark.timeout(180)
def test_a_worker_killed_during_its_drain_loses_nothing(tmp_path):
    config = autoscaled_config(tmp_path, {
        "min": 1, "max": 3, "interval_s": 0.5, "up_cooldown_s": 0, "down_cooldown_s": 0,
        "policies": [{"kind": "target_tracking", "target_duration_s": 60}],
    })
    client = clusterai.connect(config)
    try:
        # the operator pins the size to 3 (bounds are met at once, cooldowns or not)
        client.store.put_autoscale("override", {"enabled": True, "profiles": {"default": {"min": 3, "max": 3}}},
                                   time.time())
        wait_for(lambda: len(ready(client)) == 3, 60, "three workers")
        log = tmp_path / "executions.log"
        jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 3.0}
                                                  for i in range(6)])
        wait_for(lambda: sum(w.inflight for w in ready(client)) == 3, 30, "every worker busy")

        # down to 1: two busy workers are drained, not stopped
        client.store.put_autoscale("override", {"enabled": True, "profiles": {"default": {"min": 1, "max": 1}}},
                                   time.time())
        wait_for(lambda: [w for w in managed(client) if w.status == "draining"], 15, "a worker draining")
        victim = next(w for w in managed(client) if w.status == "draining")
        assert victim.inflight >= 1, "a draining worker keeps its running job"
        os.kill(victim.pid, signal.SIGKILL)

        client.wait(jobs, timeout=120)
        finished = [client.get(j) for j in jobs]
        assert {j.state for j in finished} == {State.SUCCEEDED}
        assert all(accepted_successes(j) == 1 for j in finished)
        lost = [j for j in finished if any(a.outcome and a.outcome.value == "lost" for a in j.attempts)]
        assert lost, "the killed worker's attempt is recorded as lost and run again"
        assert set(read_executions(log)) == {f"k{i}" for i in range(6)}
        wait_for(lambda: len(managed(client)) == 1, 60, "the cluster to settle at 1")
        # a drained worker is stopped only once idle: no attempt ended because its worker was retired
        retired = [a for j in finished for a in j.attempts
                   if a.outcome and a.outcome.value == "lost" and a.worker != victim.address]
        assert not retired
    finally:
        client.close()
