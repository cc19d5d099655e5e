"""Placement on a real cluster of differently labelled workers: constraints, geography, breakers,
drain."""

from __future__ import annotations

import time

import pytest
from conftest import make_config, wait_for

from clusterai import State
from clusterai.errors import BadInput

pytestmark = pytest.mark.cluster

PROFILES = [
    {"labels": {"region": "eu", "zone": "eu-1"}},
    {"labels": {"region": "us", "zone": "us-1"}, "resources": {"GPU": 1}},
]


@pytest.fixture
def client(tmp_path, start_cluster):
    def build(**placement):
        config = make_config(tmp_path)
        data = config.model_dump()
        data["cluster"]["worker_profiles"] = PROFILES
        data["placement"].update(placement)
        return start_cluster(type(config).model_validate(data))

    return build


def ran_on(client, jobs) -> set[str]:
    client.wait(jobs, timeout=60)
    done = client.get_many(jobs)
    assert {j.state for j in done} == {State.SUCCEEDED}, [j.error for j in done if j.error]
    return {j.result for j in done}


@pytest.mark.timeout(120)
def test_capability_routing_follows_resources_and_labels(client):
    c = client(strategy="capability")
    assert ran_on(c, c.submit_many("test.where", [{}] * 20, requires={"GPU": 1})) == {"1"}
    assert ran_on(c, c.submit_many("test.where", [{}] * 20, labels={"region": "eu"})) == {"0"}
    # best fit: CPU-only work stays off the GPU box while the other worker is free
    assert {c.result(c.submit("test.where"), timeout=30) for _ in range(3)} == {"0"}
    workers = {w.name: w for w in c.workers()}
    assert workers["1"].resources["GPU"] == 1 and workers["0"].labels["zone"] == "eu-1"


@pytest.mark.timeout(120)
def test_job_no_worker_could_ever_run_is_refused_at_submit(client):
    c = client()
    with pytest.raises(BadInput, match="no worker of this cluster can run this job: .*GPU=0, job needs 4"):
        c.submit("test.where", requires={"GPU": 4})
    with pytest.raises(BadInput, match="region"):
        c.submit("test.where", labels={"region": "mars"})
    assert sum(c.counts().values()) == 0


@pytest.mark.timeout(120)
def test_geographic_prefers_the_job_region(client):
    c = client(strategy="geographic")
    for region, worker in (("us", "1"), ("eu", "0"), ("us", "1")):
        job = c.submit("test.where", prefers={"region": region})
        assert c.result(job, timeout=30) == worker


@pytest.mark.timeout(120)
def test_job_no_current_worker_matches_waits_and_says_why(client):
    c = client()
    assert c.command_worker("1", "drain", wait=10) .startswith("draining")
    job = c.submit("test.where", requires={"GPU": 1})
    wait_for(lambda: c.get(job).waiting, 20, "a waiting reason")
    assert c.get(job).state is State.QUEUED
    assert "draining" in c.get(job).waiting
    assert c.command_worker("1", "undrain", wait=10) == "ready again"
    assert c.result(job, timeout=30) == "1"
    assert c.get(job).waiting is None


@pytest.mark.timeout(120)
def test_failing_worker_trips_its_breaker_then_recovers(client, tmp_path):
    cooldown = 3.0
    # round robin keeps sending the broken worker its share until its breaker opens
    c = client(strategy="round_robin", breaker={"failures": 3, "cooldown": cooldown})
    flag = tmp_path / "broken"
    flag.write_text("0")
    jobs = c.submit_many("test.fragile", [{"flag": str(flag)}] * 400)  # several batches
    c.wait(jobs, timeout=60)
    done = [c.get(j.id) for j in jobs]
    dead = [j for j in done if j.state is State.DEAD]
    assert len(dead) >= 3 and {j.worker for j in dead} == {dead[0].worker}
    assert all(j.result == "1" for j in done if j.state is State.SUCCEEDED)
    broken = dead[0].worker
    # from the third failure on, the broken worker gets nothing until the cooldown ends
    failed_at = sorted(a.finished_at for j in dead for a in j.attempts if a.outcome.value == "failed")
    opened = failed_at[2]
    started_on_broken = [a.started_at for j in done for a in j.attempts if a.worker == broken]
    assert not [t for t in started_on_broken if opened + 0.2 < t < opened + cooldown - 0.2]
    wait_for(lambda: {w.name: w.breaker for w in c.workers()}["0"] == "open", 10, "the breaker to show")
    metrics = c.runtime.runtime.coordinator.metrics.render().decode()
    assert 'worker_breaker_state{worker="0"} 2.0' in metrics
    assert 'worker_task_breaker_state{task="test.fragile",worker="0"} 2.0' in metrics
    assert 'worker_breaker_state{worker="1"} 0.0' in metrics
    assert 'cluster_failed_tasks_total{task="test.fragile"}' in metrics

    flag.unlink()  # the machine is repaired
    time.sleep(cooldown + 0.5)  # past the cooldown: half-open, one trial job
    later = [c.submit("test.fragile", {"flag": str(flag)}, labels={"region": "eu"}) for _ in range(5)]
    assert ran_on(c, later) == {"0"}
    wait_for(lambda: {w.name: w.breaker for w in c.workers()}["0"] == "closed", 10, "the breaker to close")


@pytest.mark.timeout(120)
def test_drain_lets_running_jobs_finish_and_sends_new_ones_elsewhere(client):
    c = client()
    long = c.submit("test.where", {"sleep": 2.0}, labels={"region": "eu"})
    wait_for(lambda: c.get(long).state is State.RUNNING, 20, "the job to start")
    assert "1 jobs in flight finish" in c.command_worker("0", "drain", wait=10)
    assert ran_on(c, [c.submit("test.where") for _ in range(5)]) == {"1"}
    assert c.result(long, timeout=30) == "0", "the drained worker finishes what it was running"
    assert {w.name: w.status for w in c.workers()}["0"] == "draining"


@pytest.mark.timeout(120)
def test_restart_and_remove_workers(client):
    c = client()
    before = {w.name: w.pid for w in c.workers() if w.status != "gone"}
    assert c.command_worker("0", "restart", wait=60) == "restarted through its nanny"
    wait_for(lambda: {w.name: w.pid for w in c.workers() if w.status == "ready" and w.pid}.get("0")
             not in (None, before["0"]), 60, "worker 0 to come back with a new process")
    assert "removed" in (c.command_worker("1", "remove", wait=60) or "")
    wait_for(lambda: "1" not in {w.name for w in c.workers() if w.status != "gone"}, 30, "worker 1 to leave")
    assert ran_on(c, c.submit_many("test.where", [{}] * 10)) == {"0"}


@pytest.mark.timeout(120)
def test_dask_strategy_lets_dask_place_the_work(client):
    c = client(strategy="dask")
    jobs = c.submit_many("test.where", [{"sleep": 0.01}] * 40)
    assert ran_on(c, jobs) <= {"0", "1"}
    assert all(j.attempts[0].outcome.value == "succeeded" for j in (c.get(j.id) for j in jobs))
