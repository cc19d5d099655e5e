"""Pipelines and long camera jobs under faults: a worker SIGKILLed mid-pipeline, the coordinator
killed with -9 mid-pipeline, a counting job's worker killed mid-stream. Runs complete, finished
stages are not run again, and a resumed count neither loses nor double-counts a crossing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    accepted_successes,
    kill_group,
    live_workers,
    make_config,
    read_executions,
    start_coordinator,
    stop_coordinator,
    wait_for,
)

import clusterai
from clusterai.workloads.synth import make_clip

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

CHAIN: dict[str, Any] = {"stages": [
    {"name": "first", "task": "test.stage", "each": "input.items",
     "inputs": {"path": "input.log", "key": "item.key", "value": "item.value", "sleep": "input.sleep"},
     "params": {"prefix": "first-"}},
    {"name": "second", "task": "test.stage",
     "inputs": {"path": "input.log", "key": "first.key", "value": "first.value", "sleep": "input.sleep"},
     "params": {"prefix": "second-"}},
    {"name": "total", "task": "test.total", "gather": True, "inputs": {"path": "input.log", "values": "second.value"}},
]}
PIPELINE = clusterai.Pipeline.from_dict("chain", CHAIN)


def chain_input(log: Path, n: int, sleep: float) -> dict[str, Any]:
    return {"log": str(log), "sleep": sleep, "items": [{"key": f"k{i}", "value": i} for i in range(n)]}


def assert_no_finished_stage_ran_again(client: Any, status: dict[str, Any], log: Path) -> None:
    """Every stage job has one accepted success, its last attempt; it ran at most once per attempt
    (a lost attempt may have died before starting), and exactly once if it was never lost."""
    executions = read_executions(log)
    prefixes = {"first": "first-", "second": "second-"}
    for entry in status["jobs"]:
        job = client.get(entry["job"])
        assert accepted_successes(job) == 1 and job.attempts[-1].outcome.value == "succeeded", job
        if entry["stage"] in prefixes:
            key = prefixes[entry["stage"]] + job.payload["key"]
            assert 1 <= executions[key] <= len(job.attempts), (key, [a.outcome for a in job.attempts])
            if len(job.attempts) == 1:
                assert executions[key] == 1, key


@pytest.mark.timeout(180)
def test_worker_killed_mid_pipeline(tmp_path: Path, start_cluster):
    client = start_cluster(make_config(tmp_path, lease_seconds=3))
    log = tmp_path / "executions.log"
    run = client.pipelines.run(PIPELINE, chain_input(log, 16, 0.4))
    wait_for(lambda: read_executions(log).get("second-k0") or read_executions(log).get("second-k1"), 60,
             "a second stage to start")
    running = client.list(state="running", limit=10)
    assert running, "stage jobs should be running when the worker is killed"
    victim = next(w for w in live_workers(client) if w.address == running[0].worker)
    finished_before = {k for k, n in read_executions(log).items() if n}
    os.kill(victim.pid, signal.SIGKILL)

    done = client.pipelines.wait(run["id"], timeout=120)
    assert done["state"] == "succeeded", done
    assert client.pipelines.outputs(done["id"])[0]["result"] == {"total": sum(range(16)), "missing": 0}
    lost = [client.get(j["job"]) for j in done["jobs"]]
    assert any(any(a.outcome and a.outcome.value == "lost" for a in job.attempts) for job in lost), \
        "the killed worker's attempt should be recorded as lost"
    assert_no_finished_stage_ran_again(client, done, log)
    assert finished_before  # the kill landed after some stages had finished, and those ran once


@pytest.mark.timeout(180)
def test_coordinator_killed_mid_pipeline_then_restarted(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'clusterai.db'}"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "store": store, "tasks": ["testtasks"], "api": {"port": 0},
        "cluster": {"workers": 2, "dashboard": False, "memory_limit": "2GiB", "death_timeout": 5},
        "coordinator": {"lease_seconds": 3},
    }))
    log, out = tmp_path / "executions.log", tmp_path / "up.log"
    client = clusterai.connect(config, store=store)
    first = start_coordinator(config, out)
    second = None
    try:
        run = client.pipelines.run(PIPELINE, chain_input(log, 12, 0.3))  # advanced by the running coordinator
        wait_for(lambda: read_executions(log).get("second-k0"), 90, "the pipeline to reach its second stage")
        os.kill(first.pid, signal.SIGKILL)  # the coordinator only; its workers are orphaned and exit
        first.wait(10)
        assert client.pipelines.status(run["id"])["state"] == "running"
        second = start_coordinator(config, out)
        done = client.pipelines.wait(run["id"], timeout=120)
        assert done["state"] == "succeeded", done
        assert client.pipelines.outputs(done["id"])[0]["result"] == {"total": sum(range(12)), "missing": 0}
        assert_no_finished_stage_ran_again(client, done, log)
        assert read_executions(log)["total"] == 1
    finally:
        kill_group(first)
        stop_coordinator(second)
        client.close()


@pytest.mark.timeout(180)
def test_counting_job_resumes_from_its_checkpoint_after_its_worker_is_killed(tmp_path: Path, monkeypatch,
                                                                             start_cluster):
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", str(tmp_path / "artifacts"))  # before the workers start
    truth = make_clip(tmp_path / "media" / "street.avi", seconds=60, fps=15, size=(640, 480), crossings=12, seed=7)
    client = start_cluster(make_config(tmp_path, lease_seconds=3).with_overrides(
        **{"media.sources": [str(tmp_path / "media")]}))
    job = client.submit("camera.count", {"source": truth.path, "checkpoint_every": 2.0, "camera": "street"})
    wait_for(lambda: client.camera_counts(job=job.id)["points"], 60, "the first checkpoint")
    running = client.get(job)
    victim = next(w for w in live_workers(client) if w.address == running.worker)
    os.kill(victim.pid, signal.SIGKILL)

    result = client.result(job, timeout=120)
    finished = client.get(job)
    assert [a.outcome.value for a in finished.attempts if a.outcome] == ["lost", "succeeded"]
    assert result["resumed_from_frame"] and result["resumed_from_frame"] > 0
    assert result["total"] == truth.crossings == 12  # nothing lost, nothing counted twice
    assert (result["left_to_right"], result["right_to_left"]) == (truth.left_to_right, truth.right_to_left)
    points = client.camera_counts(job=job.id, limit=10_000)["points"]
    frames = [p["frame"] for p in points]
    assert frames == sorted(set(frames)), "one point per checkpoint frame, in order"
    totals = [p["total"] for p in points]
    assert totals == sorted(totals) and totals[-1] == 12 and all(p["camera"] == "street" for p in points)
