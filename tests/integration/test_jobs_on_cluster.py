"""The job plane end to end on a real LocalCluster of worker processes."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import accepted_successes, read_executions, wait_for

from clusterai import JobFailed, State

pytestmark = pytest.mark.cluster


@pytest.fixture
def client(config_factory, start_cluster):
    return start_cluster(config_factory())


@pytest.mark.timeout(180)
def test_thousand_jobs_each_complete_exactly_once(client, tmp_path):
    log = tmp_path / "executions.log"
    jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}"} for i in range(1000)])
    client.wait(jobs, timeout=120)

    finished = [client.get(j.id) for j in jobs]
    assert {j.state for j in finished} == {State.SUCCEEDED}
    assert all(accepted_successes(j) == 1 and len(j.attempts) == 1 for j in finished)
    executions = read_executions(log)
    assert len(executions) == 1000 and set(executions.values()) == {1}
    workers = {j.worker for j in finished}
    assert len(workers) == 2, f"both worker processes should take part, got {workers}"
    assert {j.result["key"] for j in finished} == {f"k{i}" for i in range(1000)}


@pytest.mark.timeout(60)
def test_failing_job_retries_then_dead_letters_and_can_be_requeued(client):
    job = client.submit("test.fail", {"message": "boom"})
    with pytest.raises(JobFailed, match="boom"):
        client.result(job, timeout=30)
    dead = client.get(job)
    assert dead.state is State.DEAD
    assert [a.outcome.value for a in dead.attempts] == ["failed"] * 3  # retries=2
    assert all("RuntimeError: boom" in (a.error or "") for a in dead.attempts)
    assert [d.id for d in client.dead_letters()] == [job.id]

    client.retry(job)
    with pytest.raises(JobFailed):
        client.result(job, timeout=30)
    assert len(client.get(job).attempts) == 6


@pytest.mark.timeout(60)
def test_flaky_job_succeeds_on_retry(client):
    job = client.submit("demo.flaky", {"fail_attempts": 2})
    assert client.result(job, timeout=30) == {"succeeded_on_attempt": 3}
    outcomes = [a.outcome.value for a in client.get(job).attempts]
    assert outcomes == ["failed", "failed", "succeeded"]


@pytest.mark.timeout(60)
def test_non_retryable_error_goes_dead_at_once(client):
    job = client.submit("test.refuse", {"message": "bad document"})
    with pytest.raises(JobFailed, match="bad document"):
        client.result(job, timeout=30)
    assert len(client.get(job).attempts) == 1


@pytest.mark.timeout(60)
def test_timeout_interrupts_a_python_loop(client):
    job = client.submit("test.spin", {"seconds": 30}, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(JobFailed, match="JobTimeout"):
        client.result(job, timeout=30)
    assert time.monotonic() - started < 10
    assert client.get(job).attempts[0].outcome.value == "timeout"


@pytest.mark.timeout(60)
def test_delayed_job_waits_for_run_at(client):
    job = client.submit("test.pid", delay=1.5)
    assert client.get(job).state is State.PENDING
    time.sleep(0.5)
    assert client.get(job).state is State.PENDING
    client.result(job, timeout=30)
    done = client.get(job)
    assert done.attempts[0].started_at >= done.run_at


@pytest.mark.timeout(60)
def test_cancel_queued_and_running_jobs(client):
    waiting = client.submit("test.pid", delay=60)
    assert client.cancel(waiting).state is State.CANCELLED

    running = client.submit("test.sleep", {"seconds": 1.5})
    wait_for(lambda: client.get(running).state is State.RUNNING, 20, "the job to start")
    assert client.cancel(running).state is State.CANCELLED
    # the worker finishes anyway; its answer is recorded as late and ignored
    wait_for(lambda: client.get(running).attempts[0].late, 20, "the late answer to be recorded")
    job = client.get(running)
    assert job.state is State.CANCELLED and job.result is None
    assert job.attempts[0].outcome.value == "cancelled"
    with pytest.raises(JobFailed, match="cancelled"):
        client.result(running, timeout=5)


@pytest.mark.timeout(60)
def test_priority_order_on_one_busy_worker(config_factory, start_cluster, tmp_path):
    config = config_factory().with_overrides(**{"cluster.workers": 1})
    client = start_cluster(config)
    log = tmp_path / "order.log"
    blocker = client.submit("test.sleep", {"seconds": 1.0})
    wait_for(lambda: client.get(blocker).state is State.RUNNING, 20, "the blocker to start")
    jobs = [client.submit("test.record", {"path": str(log), "key": name}, priority=name)
            for name in ("low", "normal", "critical", "high", "normal", "low")]
    client.wait([blocker, *jobs], timeout=30)
    executed = [line.split()[0] for line in log.read_text().splitlines()]
    assert executed == ["critical", "high", "normal", "normal", "low", "low"]


@pytest.mark.timeout(60)
def test_result_comes_with_the_coordinators_report_and_matches_the_store(client, tmp_path, monkeypatch):
    log = tmp_path / "results.log"
    reads: list[int] = []  # the test's own reads: the coordinator shares the store object
    read = client.store.get

    def spy(job_id, **kw):
        if threading.current_thread() is threading.main_thread():
            reads.append(job_id)
        return read(job_id, **kw)

    monkeypatch.setattr(client.store, "get", spy)
    # sleeping a little: result() is surely waiting before the outcome is stored
    job = client.submit("test.record", {"path": str(log), "key": "reported", "sleep": 0.2})
    value = client.result(job, timeout=30)
    assert reads == [], "the coordinator's report should have carried the result"
    assert value == read(job.id).result == {"key": "reported", "pid": value["pid"]}

    # finished before anyone waited: read from the store
    earlier = client.submit("test.record", {"path": str(log), "key": "earlier"})
    client.wait([earlier], timeout=30)
    assert client.result(earlier, timeout=5)["key"] == "earlier"
    assert reads == [earlier.id]


@pytest.mark.timeout(60)
def test_queued_jobs_start_as_soon_as_the_one_ahead_ends(config_factory, start_cluster):
    # one worker, one thread: each job waits for the one ahead of it. The coordinator looks at the
    # queue again when a batch ends only if it left work behind; a missed look costs up to a second
    client = start_cluster(config_factory().with_overrides(**{"cluster.workers": 1}))
    jobs = client.submit_many("test.sleep", [{"seconds": 0.1}] * 6)
    client.wait(jobs, timeout=30)
    attempts = sorted((a for j in jobs for a in client.get(j.id).attempts), key=lambda a: a.started_at)
    gaps = [b.started_at - a.finished_at for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) == 6 and max(gaps) < 0.3, gaps


@pytest.mark.timeout(60)
def test_result_of_a_job_just_submitted_waits_without_reading_the_store(config_factory, start_cluster, tmp_path,
                                                                        monkeypatch):
    from clusterai.store.open import open_store

    client = start_cluster(config_factory().with_overrides(**{"cluster.workers": 1}))
    reads: list[str] = []  # the test's own reads: the coordinator shares the store object
    for name in ("states_of", "get"):
        real = getattr(client.store, name)

        def spy(*a, _real=real, _name=name, **kw):
            if threading.current_thread() is threading.main_thread():
                reads.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(client.store, name, spy)
    job = client.submit("test.sleep", {"seconds": 0.2})
    assert client.result(job, timeout=30)["slept"] == 0.2
    assert reads == [], "a job submitted here and reported by our coordinator needs no read"

    # the same key again: the finished job comes back, and result() does not wait for a report
    key = {"idempotency_key": "once"}
    first = client.submit("test.sleep", {"seconds": 0.0}, **key)
    client.result(first, timeout=30)
    again = client.submit("test.sleep", {"seconds": 0.0}, **key)
    assert again.id == first.id and again.state is State.SUCCEEDED
    began = time.monotonic()
    client.result(again, timeout=30)
    assert time.monotonic() - began < 1.0

    # cancelled here, behind a running job: known at once
    blocker = client.submit("test.sleep", {"seconds": 3.0})
    queued = client.submit("test.sleep", {"seconds": 0.0})
    client.cancel(queued)
    began = time.monotonic()
    with pytest.raises(JobFailed, match="cancelled"):
        client.result(queued, timeout=30)
    assert time.monotonic() - began < 1.0

    # cancelled by another process (its own store connection): the wait's re-check finds it
    other = open_store(client.config.store)
    try:
        elsewhere = client.submit("test.sleep", {"seconds": 0.0})
        other.cancel(elsewhere.id, time.time())
        with pytest.raises(JobFailed, match="cancelled"):
            client.result(elsewhere, timeout=30)
    finally:
        other.close()
    client.result(blocker, timeout=30)
