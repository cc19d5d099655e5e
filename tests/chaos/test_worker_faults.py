"""Workers die, hang or get stuck mid-run: no job is lost, and each has exactly one accepted result."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import accepted_successes, live_workers, read_executions, wait_for

from clusterai import JobFailed, State

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]


def _worker_pid(client, address: str) -> int:
    return next(w.pid for w in client.workers() if w.address == address)


@pytest.mark.timeout(120)
def test_sigkill_worker_mid_run_loses_nothing(config_factory, start_cluster, tmp_path):
    client = start_cluster(config_factory())
    log = tmp_path / "executions.log"
    jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.03}
                                              for i in range(200)])
    wait_for(lambda: client.counts()["succeeded"] >= 40, 60, "some jobs to finish")
    running = [j for j in client.list(state="running", limit=10)]
    assert running, "jobs should be running when the worker is killed"
    victim = running[0].worker
    os.kill(_worker_pid(client, victim), signal.SIGKILL)
    killed_at = time.time()

    client.wait(jobs, timeout=90)
    finished = [client.get(j.id) for j in jobs]
    assert {j.state for j in finished} == {State.SUCCEEDED}
    assert all(accepted_successes(j) == 1 for j in finished)
    lost = [j for j in finished if any(a.outcome.value == "lost" for a in j.attempts)]
    assert lost, "the killed worker's attempts should be recorded as lost"
    for job in lost:
        rerun = next(a for a in job.attempts if a.number > 1)
        assert rerun.worker != victim
        assert rerun.started_at - killed_at < 5, "a lost job must be rerun promptly"
    executions = read_executions(log)
    assert set(executions) == {f"k{i}" for i in range(200)}


@pytest.mark.timeout(120)
def test_poison_job_goes_dead_and_others_finish(config_factory, start_cluster, tmp_path):
    client = start_cluster(config_factory(poison_threshold=3))
    log = tmp_path / "executions.log"
    poison = client.submit("test.suicide")
    others = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.02}
                                                for i in range(40)])
    with pytest.raises(JobFailed, match="poison"):
        client.result(poison, timeout=90)
    dead = client.get(poison)
    assert dead.state is State.DEAD
    assert [a.outcome.value for a in dead.attempts] == ["lost"] * 3
    client.wait(others, timeout=60)
    assert all(client.get(j).state is State.SUCCEEDED for j in others)
    # the nanny brings the killed workers back
    wait_for(lambda: len(live_workers(client)) == 2, 60, "the workers to come back")


@pytest.mark.timeout(120)
def test_paused_worker_loses_its_lease_and_its_late_answer_is_fenced(
    config_factory, start_cluster, tmp_path
):
    client = start_cluster(config_factory(lease_seconds=1.5))
    log = tmp_path / "executions.log"
    job = client.submit("test.record", {"path": str(log), "key": "slow", "sleep": 2.0})
    wait_for(lambda: client.get(job).state is State.RUNNING, 30, "the job to start")
    first = client.get(job)
    pid = _worker_pid(client, first.worker)
    os.kill(pid, signal.SIGSTOP)
    try:
        client.wait([job], timeout=60)
        rerun = client.get(job)
        assert rerun.state is State.SUCCEEDED
        assert rerun.attempts[0].outcome.value == "expired"
        assert rerun.attempts[-1].worker != first.worker
    finally:
        os.kill(pid, signal.SIGCONT)
    # the paused worker wakes up, finishes the old attempt and answers: refused by the fence
    wait_for(lambda: client.get(job).attempts[0].late, 30, "the late answer to be recorded")
    final = client.get(job)
    assert final.state is State.SUCCEEDED and accepted_successes(final) == 1
    assert "ignored" in final.attempts[0].late
    assert read_executions(log)["slow"] == 2  # ran twice, accepted once


@pytest.mark.timeout(120)
def test_job_stuck_past_hard_limit_restarts_its_worker(config_factory, start_cluster):
    client = start_cluster(config_factory(hard_timeout_grace=1.0))
    pids_before = {w.pid for w in live_workers(client)}
    # time.sleep is one C call: the in-thread timeout cannot interrupt it, the nanny restart can
    job = client.submit("test.sleep", {"seconds": 60}, timeout=1.0)
    with pytest.raises(JobFailed, match="restarted"):
        client.result(job, timeout=60)
    assert client.get(job).attempts[0].outcome.value == "timeout"
    wait_for(lambda: len(live_workers(client)) == 2
             and {w.pid for w in live_workers(client)} != pids_before, 60, "the worker restart")
    assert client.result(client.submit("test.pid"), timeout=30) in {w.pid for w in live_workers(client)}
