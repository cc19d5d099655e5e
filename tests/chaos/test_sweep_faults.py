"""Sweeps under faults: a worker SIGKILLed mid-sweep, the coordinator killed -9 mid-sweep. The sweep
completes with exactly its number of trials, a killed trial resumes from its last checkpoint on
another worker (losing at most one checkpoint interval), nothing stays running past its lease, and
the best model lands in the registry."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
import yaml
from conftest import accepted_successes, kill_group, live_workers, start_coordinator, stop_coordinator, wait_for
from testtasks import steps_done

import clusterai
from clusterai import State

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

CHECKPOINT_EVERY = 2
STEPS = 8


@pytest.mark.timeout(180)
def test_sigkill_a_worker_mid_sweep(config_factory, start_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    lease = 6.0
    client = start_cluster(config_factory(lease_seconds=lease))
    log = tmp_path / "steps.log"
    sweep = client.sweep("test.train_steps", {"x": {"uniform": [0.0, 1.0]}, "path": str(log), "steps": STEPS,
                                              "checkpoint_every": CHECKPOINT_EVERY, "pace": 0.25},
                         trials=8, sampler={"kind": "random", "seed": 7}, metric="score", concurrency=2)

    def a_trial_past_its_first_checkpoint():
        running = [j for j in client.list(state="running", task="test.train_steps", limit=10) if j.worker]
        done = {job for job, step, _ in steps_done(log) if step > CHECKPOINT_EVERY}
        return next((j for j in running if j.id in done), None)

    victim_job = wait_for(a_trial_past_its_first_checkpoint, 60, "a trial to pass its first checkpoint")
    victim = next(w for w in live_workers(client) if w.address == victim_job.worker)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()

    status = client.sweeps.wait(sweep["id"], timeout=120)
    assert status["state"] == "succeeded", status["note"]
    trials = status["trials"]
    assert sorted(t["number"] for t in trials) == list(range(8)), "exactly 8 trials, none made twice"
    assert {t["state"] for t in trials} == {"succeeded"}
    assert client.counts()["running"] == 0

    jobs = {t["job_id"]: client.get(t["job_id"]) for t in trials}
    assert all(j.state == State.SUCCEEDED and accepted_successes(j) == 1 for j in jobs.values())
    lost = [j for j in jobs.values() if any(a.outcome and a.outcome.value == "lost" for a in j.attempts)]
    assert victim_job.id in {j.id for j in lost}, "the killed worker's trial should be recorded as lost"
    steps = steps_done(log)
    for job in lost:
        dead, rerun = job.attempts[0], job.attempts[-1]
        assert rerun.worker != victim_job.worker or rerun.started_at > killed_at
        # nothing stays running past its lease: the lost attempt was closed within it
        assert dead.finished_at is not None and dead.finished_at - killed_at < lease + 4
        before = max(s for j, s, a in steps if j == job.id and a == dead.number)
        after = min(s for j, s, a in steps if j == job.id and a == rerun.number)
        redone = before - (after - 1)
        assert 0 <= redone <= CHECKPOINT_EVERY, f"job {job.id} redid {redone} steps after resuming"
        assert job.result["resumed_from"] == after - 1 > 0
        # every step computed at least once, in order, by the attempts together
        assert {s for j, s, _ in steps if j == job.id} == set(range(1, STEPS + 1))
    best = status["best"]
    assert best["value"] == max(t["value"] for t in trials)
    assert abs(best["value"] + (best["params"]["x"] - 0.3) ** 2) < 1e-9


@pytest.mark.timeout(240)
def test_kill9_coordinator_mid_sweep_then_restart(tmp_path):
    store = tmp_path / "clusterai.db"
    artifacts = tmp_path / "artifacts"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "store": f"sqlite:///{store}",
        "tasks": ["testtasks"],
        "cluster": {"workers": 2, "threads_per_worker": 1, "dashboard": False, "memory_limit": "2GiB",
                    "death_timeout": 5},
        "coordinator": {"lease_seconds": 3},
        "api": {"port": 0},
    }))
    os.environ["CLUSTERAI_ARTIFACTS"] = artifacts.as_uri()  # the coordinator and its workers inherit it
    out = tmp_path / "coordinator.log"
    client = clusterai.connect(config, store=f"sqlite:///{store}")
    first = start_coordinator(config, out)
    second = None
    try:
        started = client.sweeps.start({
            "objective": "train.sgd_digits", "trials": 6, "metric": "accuracy", "concurrency": 2,
            "sampler": {"kind": "tpe", "seed": 3, "startup_trials": 3},
            "space": {"alpha": {"loguniform": [1e-5, 1e-2]}, "epochs": 6, "pace_s": 0.3, "checkpoint_every": 2},
            "register": {"name": "digits", "alias": "staging"}})
        wait_for(lambda: client.sweeps.status(started["id"], curves=False)["counts"]["succeeded"] >= 1, 120,
                 "the first coordinator to finish a trial")
        os.kill(first.pid, signal.SIGKILL)  # the coordinator only: its workers are orphaned
        first.wait(10)
        mid = client.sweeps.status(started["id"], curves=False)
        assert mid["state"] == "running" and mid["counts"]["done"] < 6, "the kill should land mid-sweep"

        second = start_coordinator(config, out)
        status = client.sweeps.wait(started["id"], timeout=180)
        assert status["state"] == "succeeded", status["note"]
        assert sorted(t["number"] for t in status["trials"]) == list(range(6))
        assert {t["state"] for t in status["trials"]} == {"succeeded"}
        assert all(len(t["curve"]) == 6 for t in status["trials"]), "every epoch's report is stored"
        assert all(accepted_successes(client.get(t["job_id"])) == 1 for t in status["trials"])
        assert client.counts()["running"] == 0

        version = client.registry.show("digits", "staging")
        assert version["version"] == 1 and version["trial"] == status["best"]["number"]
        assert version["metrics"]["accuracy"] == status["best"]["value"] > 0.85
        _, data = client.registry.download("digits", "staging")
        assert hashlib.sha256(data).hexdigest() == version["artifact"]["sha256"]
        from clusterai.workloads.training import digits, load_model

        _, _, vx, vy = digits()
        model = load_model(data)
        assert model.params["alpha"] == version["params"]["alpha"]
    finally:
        os.environ.pop("CLUSTERAI_ARTIFACTS", None)
        kill_group(first)
        stop_coordinator(second)
        client.close()
