"""Sweeps on a real embedded cluster: pruning stops poor trials on their reports (the worker hears it
and the trial ends as pruned, not failed), a cancelled sweep resumes from its trials' checkpoints,
and the PyTorch trainer runs as a sweep's objective."""

from __future__ import annotations

import time

import pytest
from conftest import wait_for
from testtasks import steps_done

pytestmark = [pytest.mark.cluster]


@pytest.mark.timeout(150)
def test_median_pruning_stops_poor_trials_on_the_workers(config_factory, start_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    client = start_cluster(config_factory())
    log = tmp_path / "steps.log"
    # x from a grid in an order that makes later trials worse: the median of the earlier ones prunes them
    status = client.sweep("test.train_steps", {"x": [0.3, 0.35, 0.4, 0.9, 1.0, 1.1], "path": str(log), "steps": 10,
                                               "checkpoint_every": 5, "pace": 0.05},
                          trials=6, sampler="grid", metric="score", concurrency=1,
                          pruner={"kind": "median", "warmup_steps": 2, "min_trials": 3}, wait=True, timeout=120)
    assert status["state"] == "succeeded"
    by_number = {t["number"]: t for t in status["trials"]}
    assert [by_number[n]["state"] for n in range(3)] == ["succeeded"] * 3
    pruned = [t for t in status["trials"] if t["state"] == "pruned"]
    assert len(pruned) == 3 and all("median stopping" in t["note"] for t in pruned)
    for t in pruned:  # stopped early on the worker, not run to the end
        assert t["steps"] < 10
        job = client.get(t["job_id"])
        assert job.state.value == "succeeded" and job.result["stopped"].startswith("median stopping")
        assert max(s for j, s, _ in steps_done(log) if j == t["job_id"]) < 10
    assert status["best"]["params"]["x"] == 0.3


@pytest.mark.timeout(180)
def test_a_cancelled_sweep_resumes_from_its_checkpoints(config_factory, start_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    client = start_cluster(config_factory())
    log = tmp_path / "steps.log"
    started = client.sweep("test.train_steps", {"x": {"uniform": [0, 1]}, "path": str(log), "steps": 10,
                                                "checkpoint_every": 2, "pace": 0.2},
                           trials=4, sampler={"kind": "random", "seed": 5}, metric="score", concurrency=2)
    wait_for(lambda: sum(1 for _, s, _ in steps_done(log) if s >= 4) >= 2, 60, "two trials past step 4")
    cancelled = client.sweeps.cancel(started["id"])
    assert cancelled["state"] == "cancelled"
    stopped = [t for t in cancelled["trials"] if t["state"] == "cancelled"]
    assert stopped, "the running trials are cancelled with the sweep"
    time.sleep(1.0)
    checkpointed = {t["job_id"]: max(s for j, s, _ in steps_done(log) if j == t["job_id"]) // 2 * 2 for t in stopped}

    resumed = client.sweeps.resume(started["id"])
    assert resumed["state"] == "running"
    status = client.sweeps.wait(started["id"], timeout=120)
    assert status["state"] == "succeeded"
    assert sorted(t["number"] for t in status["trials"]) == [0, 1, 2, 3]
    assert {t["state"] for t in status["trials"]} == {"succeeded"}
    for t in stopped:
        job = client.get(t["job_id"])
        # it went on from a checkpoint, not from the start: at most the last interval was redone
        assert job.result["resumed_from"] >= checkpointed[t["job_id"]] - 2 > 0


@pytest.mark.timeout(240)
def test_the_pytorch_trainer_as_a_sweeps_objective(config_factory, start_cluster, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("CLUSTERAI_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    client = start_cluster(config_factory())
    status = client.sweep("train.torch_digits", {"lr": {"loguniform": [1e-3, 3e-2]}, "hidden": [32, 64],
                                                 "epochs": 4},
                          trials=2, sampler={"kind": "random", "seed": 0}, metric="accuracy",
                          register={"name": "mlp", "alias": "staging"}, wait=True, timeout=200)
    assert status["state"] == "succeeded", status["note"]
    assert all(t["state"] == "succeeded" and len(t["curve"]) == 4 for t in status["trials"])
    version, data = client.registry.download("mlp", "staging")
    from clusterai.workloads.training import load_model, validation_digits

    x, y = validation_digits()
    accuracy = float((load_model(data).predict(x) == y).mean())
    assert accuracy == pytest.approx(version["metrics"]["accuracy"], abs=2e-3) and accuracy > 0.85
