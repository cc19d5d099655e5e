"""Pipelines on a real cluster of worker processes: fan-out, per-item chains and fan-in; a failed
stage retried alone; re-runs reusing finished stages; cancel and retry; PostgreSQL as the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import make_config, read_executions, wait_for

from clusterai.config import parse_config
from clusterai.core.pipelines import Pipeline
from clusterai.errors import BadInput, RunNotFound

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {"stages": [
    {"name": "first", "task": "test.stage", "each": "input.items",
     "inputs": {"path": "input.log", "key": "item.key", "value": "item.value", "flag": "item.flag?",
                "refuse": "item.refuse?"},
     "params": {"prefix": "first-"}},
    {"name": "second", "task": "test.stage",
     "inputs": {"path": "input.log", "key": "first.key", "value": "first.value"}, "params": {"prefix": "second-"}},
    {"name": "total", "task": "test.total", "gather": True, "inputs": {"path": "input.log", "values": "second.value"}},
]}
PIPELINE = Pipeline.from_dict("sums", SPEC)


def items(*values: int, **extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": f"k{v}", "value": v, **extra.get(f"k{v}", {})} for v in values]


def stage_of(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["stages"] if s["name"] == name)


def test_fan_out_chain_fan_in_and_reuse(tmp_path: Path, start_cluster):
    client = start_cluster(make_config(tmp_path))
    log, flag = tmp_path / "executions.log", tmp_path / "flaky"
    flag.write_text("x")
    run_input = {"log": str(log), "items": items(1, 2, 3, k3={"flag": str(flag)})}

    started = client.pipelines.run(PIPELINE, run_input)
    assert started["state"] == "running" and stage_of(started, "first")["total"] == 3
    # the third item's first stage fails while the flag file exists: it retries, alone
    wait_for(lambda: read_executions(log).get("first-k3", 0) >= 2, 60, "k3's first stage to fail and retry")
    flag.unlink()
    done = client.pipelines.wait(started["id"], timeout=90)
    assert done["state"] == "succeeded", done
    assert client.pipelines.outputs(done["id"])[0]["result"] == {"total": 6, "missing": 0}
    runs = read_executions(log)
    assert runs["first-k1"] == runs["first-k2"] == 1 and runs["first-k3"] >= 2
    assert runs["second-k1"] == runs["second-k2"] == runs["second-k3"] == runs["total"] == 1
    assert [s["done"] for s in done["stages"]] == [3, 3, 1]

    # the same input again: every stage is reused, nothing runs
    again = client.pipelines.wait(client.pipelines.run(PIPELINE, run_input)["id"], timeout=30)
    assert again["state"] == "succeeded" and read_executions(log) == runs
    assert [s["reused"] for s in again["stages"]] == [3, 3, 1]

    # one more item: only its chain and the fan-in run
    grown = {**run_input, "items": [*run_input["items"], *items(4)]}
    more = client.pipelines.wait(client.pipelines.run(PIPELINE, grown)["id"], timeout=60)
    assert client.pipelines.outputs(more["id"])[0]["result"] == {"total": 10, "missing": 0}
    now = read_executions(log)
    assert {k: now[k] - runs.get(k, 0) for k in now if now[k] != runs.get(k, 0)} == {
        "first-k4": 1, "second-k4": 1, "total": 1}

    # fresh: everything again
    fresh = client.pipelines.wait(client.pipelines.run(PIPELINE, run_input, fresh=True)["id"], timeout=60)
    assert fresh["state"] == "succeeded" and [s["reused"] for s in fresh["stages"]] == [0, 0, 0]
    assert read_executions(log)["second-k1"] == 2


def test_a_failing_item_blocks_its_chain_its_siblings_finish_and_retry_reruns_it_alone(tmp_path: Path,
                                                                                        start_cluster):
    client = start_cluster(make_config(tmp_path))
    log, flag = tmp_path / "executions.log", tmp_path / "broken"
    flag.write_text("x")
    run_input = {"log": str(log), "items": items(1, 2, 5, k2={"flag": str(flag)}, k5={"refuse": True})}
    run = client.pipelines.wait(client.pipelines.run(PIPELINE, run_input)["id"], timeout=90)
    assert run["state"] == "failed"
    assert stage_of(run, "first")["counts"] == {"succeeded": 1, "dead": 2}
    assert stage_of(run, "second")["counts"] == {"succeeded": 1, "blocked": 2}
    assert client.pipelines.outputs(run["id"])[0]["result"] == {"total": 1, "missing": 2}
    dead = [j for j in run["jobs"] if j["state"] == "dead"]
    assert {j["item"] for j in dead} == {1, 2} and any("k5 refused" in j["error"] for j in dead)
    before = read_executions(log)
    assert before["first-k2"] == 4  # 1 + 3 retries
    assert before["first-k5"] == 1  # refused for good: not retried

    flag.unlink()
    client.pipelines.retry(run["id"])
    retried = client.pipelines.wait(run["id"], timeout=90)
    after = read_executions(log)
    assert after["first-k1"] == after["second-k1"] == 1  # what had succeeded did not run again
    assert after["first-k2"] == 5 and after["second-k2"] == 1
    assert retried["state"] == "failed"  # k5 still refuses
    assert client.pipelines.outputs(run["id"])[0]["result"] == {"total": 3, "missing": 1}
    assert after["total"] == 2


def test_dynamic_fan_out_cancel_config_pipelines_and_bad_input(tmp_path: Path, start_cluster):
    config = make_config(tmp_path).model_dump()
    config["pipelines"] = {"dynamic": {"args": "unused", "stages": [
        {"name": "list", "task": "test.listing", "inputs": {"n": "input.n"}},
        {"name": "work", "task": "test.stage", "each": "list.items",
         "inputs": {"path": "input.log", "key": "item.key", "value": "item.value", "sleep": "input.sleep"}},
        {"name": "total", "task": "test.total", "gather": True,
         "inputs": {"path": "input.log", "values": "work.value"}},
    ]}}
    client = start_cluster(parse_config(config, source="test"))
    log = tmp_path / "executions.log"
    assert "dynamic" in {p["name"] for p in client.pipelines.list()}
    run = client.pipelines.wait(client.pipelines.run("dynamic", {"n": 4, "log": str(log), "sleep": 0})["id"],
                                timeout=60)
    assert run["state"] == "succeeded" and stage_of(run, "work")["total"] == 4
    assert client.pipelines.outputs(run["id"])[0]["result"]["total"] == 0 + 1 + 2 + 3

    slow = client.pipelines.run("dynamic", {"n": 6, "log": str(log), "sleep": 3})
    wait_for(lambda: client.pipelines.status(slow["id"])["stages"][1]["total"] is not None, 60, "the fan-out")
    cancelled = client.pipelines.cancel(slow["id"])
    assert cancelled["state"] == "cancelled"
    assert {j["state"] for j in cancelled["jobs"] if j["stage"] == "work"} <= {"cancelled", "succeeded"}
    with pytest.raises(BadInput, match="only a running run can be cancelled"):
        client.pipelines.cancel(slow["id"])

    with pytest.raises(BadInput, match="no pipeline named 'nope'; known: dynamic"):
        client.pipelines.run("nope", {})
    with pytest.raises(BadInput, match="input.n: not found"):
        client.pipelines.run("dynamic", {"log": "x"})
    with pytest.raises(BadInput, match="unknown task 'test.missing'"):
        client.pipelines.run(Pipeline.from_dict("x", {"stages": [{"name": "a", "task": "test.missing"}]}), {})
    with pytest.raises(BadInput, match="must be a JSON object"):
        client.pipelines.run("dynamic", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(RunNotFound):
        client.pipelines.status(10_000)
    before = client.counts()
    with pytest.raises(BadInput, match="fans out over input.items, which must be a list"):
        client.pipelines.run(PIPELINE, {"log": "x", "items": {"a": 1}})
    assert client.counts() == before  # refused before anything was stored


def test_a_payload_the_task_refuses_is_a_problem_of_that_item(tmp_path: Path, start_cluster):
    client = start_cluster(make_config(tmp_path))
    log = tmp_path / "executions.log"
    run_input = {"log": str(log), "items": [{"key": "k1", "value": 1}, {"key": "k2", "value": "not a number"}]}
    run = client.pipelines.wait(client.pipelines.run(PIPELINE, run_input)["id"], timeout=60)
    assert run["state"] == "failed"
    assert "first/1" in run["problems"] and "value" in run["problems"]["first/1"]
    assert client.pipelines.outputs(run["id"])[0]["result"] == {"total": 1, "missing": 1}


def test_a_pipeline_on_postgresql(tmp_path: Path, start_cluster, pg_url: str):
    config = make_config(tmp_path).model_dump()
    config["store"] = pg_url
    client = start_cluster(parse_config(config, source="test"))
    log = tmp_path / "executions.log"
    run_input = {"log": str(log), "items": items(1, 2, 3, 4)}
    run = client.pipelines.wait(client.pipelines.run(PIPELINE, run_input)["id"], timeout=90)
    assert run["state"] == "succeeded"
    assert client.pipelines.outputs(run["id"])[0]["result"] == {"total": 10, "missing": 0}
    again = client.pipelines.wait(client.pipelines.run(PIPELINE, run_input)["id"], timeout=30)
    assert [s["reused"] for s in again["stages"]] == [4, 4, 1]
    assert read_executions(log)["total"] == 1
