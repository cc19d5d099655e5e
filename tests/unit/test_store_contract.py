"""The JobStore contract, run against every backend: SQLite (a file) and PostgreSQL (a fresh database
on the session's throwaway server). Backend-specific behaviour lives in test_sqlite_store.py and
test_postgres_store.py."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusterai.core.model import (
    Attempt,
    Finish,
    Job,
    JobSpec,
    Outcome,
    Priority,
    RetryPolicy,
    State,
    WorkerRecord,
    decide,
)
from clusterai.errors import IdempotencyConflict, InvalidTransition, JobNotFound, RunNotFound
from clusterai.store.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore
from clusterai.store.sqlite import SQLiteStore

T0 = 1_000.0


@dataclass
class Backend:
    """Where a test's store lives: open more store objects on it (each with its own connections),
    and count rows from outside the store."""

    name: str
    url: str  # the SQLite file, or the PostgreSQL URL with its password

    def open(self, **options: Any) -> JobStore:
        if self.name == "sqlite":
            return SQLiteStore(self.url, **options)  # type: ignore[arg-type]
        return open_store(self.url, **options)

    def count(self, table: str = "jobs", where: str = "") -> int:
        """Rows committed in a table, read on a connection of its own (not the store's)."""
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        if self.name == "sqlite":
            with closing(sqlite3.connect(self.url)) as db:
                return int(db.execute(sql).fetchone()[0])
        import psycopg

        with psycopg.connect(self.url) as conn:
            row = conn.execute(sql).fetchone()
            assert row is not None
            return int(row[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "jobs.db"))
    # only here, so that a run of the SQLite cases alone never starts PostgreSQL
    return Backend("postgresql", request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[JobStore]:
    s = backend.open()
    try:
        yield s
    finally:
        s.close()


def spec(task: str = "unit.job", payload: dict | None = None, **options) -> JobSpec:
    return JobSpec(task=task, payload=payload if payload is not None else {}, **options)


def submit(store: JobStore, *specs: JobSpec, now: float = T0) -> list[int]:
    return [job.id for job in store.submit_many(specs or [spec()], now)]


def start(store: JobStore, job_id: int, worker: str = "w1", now: float = T0, lease: float = 30.0):
    (job,) = store.start_attempts([(job_id, worker)], now, now + lease)
    return job


def worker_record(name: str, address: str, **changes) -> WorkerRecord:
    fields = dict(name=name, address=address, status="running", nthreads=2, memory_limit=1 << 30,
                  inflight=1, completed=5, failed=0, last_seen=T0)
    fields.update(changes)
    return WorkerRecord(**fields)


def wait_until(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def run_threads(targets: list[Callable[[], None]], timeout: float = 90) -> list[BaseException]:
    """Run each target in a thread of its own; the exceptions they raised."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertion
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def all_events(store: JobStore) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while page := store.events_after(events[-1]["id"] if events else 0, 500):
        events += page
    return events


# -- submission -------------------------------------------------------------------------------


def test_submit_stores_the_spec(store: JobStore):
    s = spec(payload={"n": 1}, queue="q1", priority=Priority.HIGH, timeout=9.5,
             retry=RetryPolicy(retries=4, backoff=0.25, max_backoff=8.0, jitter=0.2),
             resources={"gpu": 1.0}, labels={"team": "vision"})
    (job_id,) = submit(store, s)
    job = store.get(job_id)
    assert job.state is State.QUEUED
    assert (job.task, job.queue, job.priority, job.payload) == ("unit.job", "q1", Priority.HIGH, {"n": 1})
    assert job.retry == s.retry
    assert (job.timeout, job.resources, job.labels) == (9.5, {"gpu": 1.0}, {"team": "vision"})
    assert (job.created_at, job.run_at, job.attempt, job.failures) == (T0, T0, 0, 0)
    assert job.attempts == ()


def test_get_unknown_job_raises(store: JobStore):
    with pytest.raises(JobNotFound, match="no job with id 12345"):
        store.get(12345)


def test_submit_many_returns_jobs_in_order_with_increasing_ids(store: JobStore):
    jobs = store.submit_many([spec(payload={"i": i}) for i in range(5)], T0)
    assert [j.payload["i"] for j in jobs] == list(range(5))
    ids = [j.id for j in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [store.get(i).payload for i in ids] == [{"i": i} for i in range(5)]


def test_submit_many_is_all_or_nothing(store: JobStore, backend: Backend):
    submit(store, spec(payload={"v": 1}, idempotency_key="k"))
    before = backend.count()
    batch = [spec(payload={"i": 1}), spec(payload={"i": 2}), spec(payload={"v": 2}, idempotency_key="k")]
    with pytest.raises(IdempotencyConflict):
        store.submit_many(batch, T0)
    assert backend.count() == before == 1
    # the store is still usable after the rollback
    assert len(submit(store, spec(), spec())) == 2
    assert backend.count() == 3


def test_future_run_at_is_pending_until_promoted(store: JobStore):
    (due_later,) = submit(store, spec(run_at=T0 + 10))
    (due_now,) = submit(store, spec(run_at=T0))
    assert store.get(due_later).state is State.PENDING
    assert store.get(due_now).state is State.QUEUED
    assert store.next_due_at() == T0 + 10
    assert [j.id for j in store.fetch_ready(10)] == [due_now]

    assert store.promote_due(T0 + 9.99) == 0
    assert store.get(due_later).state is State.PENDING
    assert store.promote_due(T0 + 10) == 1
    assert store.get(due_later).state is State.QUEUED
    assert store.next_due_at() is None
    assert store.promote_due(T0 + 20) == 0  # only once


# -- priority ---------------------------------------------------------------------------------


def test_fetch_ready_orders_by_priority_then_fifo(store: JobStore):
    levels = ["normal", "low", "critical", "high", "normal", "critical", "low", "high", "critical"]
    ids = [submit(store, spec(payload={"n": n}, priority=Priority.parse(p)))[0]
           for n, p in enumerate(levels)]
    submit(store, spec(priority=Priority.CRITICAL, run_at=T0 + 60))  # pending: not ready
    expected = [ids[n] for n in (2, 5, 8, 3, 7, 0, 4, 1, 6)]
    assert [j.id for j in store.fetch_ready(100)] == expected
    assert [j.id for j in store.fetch_ready(4)] == expected[:4]


def test_fetch_ready_skips_started_jobs(store: JobStore):
    a, b = submit(store, spec(priority=Priority.HIGH), spec())
    start(store, a)
    assert [j.id for j in store.fetch_ready(10)] == [b]


# -- idempotency ------------------------------------------------------------------------------


def test_same_key_same_payload_returns_the_same_job(store: JobStore, backend: Backend):
    (first,) = submit(store, spec(payload={"a": 1, "b": [1, 2]}, idempotency_key="once"))
    (again,) = submit(store, spec(payload={"b": [1, 2], "a": 1}, idempotency_key="once"), now=T0 + 5)
    assert again == first
    assert backend.count() == 1
    assert store.get(first).created_at == T0


def test_same_key_twice_in_one_batch_stores_one_job(store: JobStore, backend: Backend):
    ids = submit(store, spec(idempotency_key="k"), spec(idempotency_key="k"))
    assert ids[0] == ids[1]
    assert backend.count() == 1


def test_same_key_returns_existing_job_in_its_current_state(store: JobStore):
    (job_id,) = submit(store, spec(idempotency_key="k"))
    start(store, job_id)
    (again,) = store.submit_many([spec(idempotency_key="k")], T0 + 1)
    assert again.id == job_id
    assert again.state is State.RUNNING


@pytest.mark.parametrize("other", [spec(payload={"a": 2}), spec(task="unit.other", payload={"a": 1})])
def test_same_key_other_payload_or_task_conflicts(store: JobStore, backend: Backend, other: JobSpec):
    (job_id,) = submit(store, spec(payload={"a": 1}, idempotency_key="k"))
    conflicting = JobSpec(task=other.task, payload=other.payload, idempotency_key="k")
    with pytest.raises(IdempotencyConflict) as info:
        submit(store, spec(payload={"fresh": True}), conflicting)
    assert info.value.job_id == job_id
    assert info.value.key == "k"
    assert f"already names job {job_id}" in str(info.value)
    assert backend.count() == 1


def test_jobs_without_key_never_deduplicate(store: JobStore):
    ids = submit(store, spec(payload={"a": 1}), spec(payload={"a": 1}))
    assert ids[0] != ids[1]


@pytest.mark.timeout(60)
def test_concurrent_submits_with_one_key_from_separate_connections(backend: Backend):
    backend.open().close()  # create the schema once
    stores = [backend.open() for _ in range(50)]
    barrier = threading.Barrier(len(stores))
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def go(s: JobStore) -> None:
        try:
            barrier.wait(timeout=30)
            (job,) = s.submit_many([spec(payload={"same": True}, idempotency_key="shared")], T0)
            with lock:
                ids.append(job.id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    for s in stores:
        s.close()
    assert errors == []
    assert len(ids) == 50
    assert len(set(ids)) == 1
    assert backend.count() == 1


@pytest.mark.timeout(60)
def test_concurrent_submits_with_one_key_from_threads_sharing_a_store(store: JobStore, backend: Backend):
    barrier = threading.Barrier(8)
    ids: list[int] = []

    def go() -> None:
        barrier.wait(timeout=30)
        (job,) = store.submit_many([spec(payload={"same": True}, idempotency_key="shared")], T0)
        ids.append(job.id)

    assert run_threads([go] * 8) == []
    assert len(ids) == 8 and len(set(ids)) == 1
    assert backend.count() == 1


@pytest.mark.timeout(60)
def test_concurrent_submits_with_one_key_and_different_payloads_conflict(backend: Backend):
    backend.open().close()
    stores = [backend.open() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    won: list[int] = []
    conflicts: list[IdempotencyConflict] = []
    lock = threading.Lock()

    def go(i: int) -> Callable[[], None]:
        def submit_mine() -> None:
            barrier.wait(timeout=30)
            try:
                (job,) = stores[i].submit_many([spec(payload={"i": i}, idempotency_key="shared")], T0)
                with lock:
                    won.append(job.id)
            except IdempotencyConflict as exc:
                with lock:
                    conflicts.append(exc)
        return submit_mine

    try:
        assert run_threads([go(i) for i in range(len(stores))]) == []
    finally:
        for s in stores:
            s.close()
    assert len(won) == 1  # one fingerprint is stored; every other one conflicts with it
    assert len(conflicts) == len(stores) - 1
    assert {(c.key, c.job_id) for c in conflicts} == {("shared", won[0])}
    assert backend.count() == 1


# -- attempts and fencing ---------------------------------------------------------------------


def test_start_attempts_starts_only_queued_jobs(store: JobStore):
    queued, cancelled, pending = submit(store, spec(), spec(), spec(run_at=T0 + 100))
    store.cancel(cancelled, T0)
    started = store.start_attempts([(queued, "w1"), (cancelled, "w1"), (pending, "w2")], T0 + 1, T0 + 31)
    assert [j.id for j in started] == [queued]
    job = started[0]
    assert (job.state, job.worker, job.attempt) == (State.RUNNING, "w1", 1)
    assert store.get(cancelled).state is State.CANCELLED
    assert store.get(pending).state is State.PENDING
    (attempt,) = store.get(queued).attempts
    assert (attempt.number, attempt.worker, attempt.started_at) == (1, "w1", T0 + 1)
    assert attempt.finished_at is attempt.outcome is None
    assert store.get(cancelled).attempts == ()
    # a second start of the same job is refused: it is no longer queued
    assert store.start_attempts([(queued, "w2")], T0 + 2, T0 + 32) == []
    assert store.get(queued).worker == "w1"


def test_finish_current_attempt_succeeds(store: JobStore):
    (job_id,) = submit(store)
    job = start(store, job_id)
    f = decide(job, Outcome.SUCCEEDED, now=T0 + 2, result_json='{"answer": 42}')
    assert store.finish_attempts([f], T0 + 2) == [True]
    done = store.get(job_id)
    assert done.state is State.SUCCEEDED
    assert done.result == {"answer": 42}
    assert done.finished_at == T0 + 2
    assert done.attempts[0].outcome is Outcome.SUCCEEDED
    assert done.attempts[0].finished_at == T0 + 2
    assert store.running_jobs() == []


def test_finish_with_stale_attempt_is_fenced_off(store: JobStore):
    (job_id,) = submit(store)
    first = start(store, job_id, "w1")
    # the lease expires; the job is requeued and started again elsewhere
    assert store.finish_attempts([decide(first, Outcome.EXPIRED, now=T0 + 40)], T0 + 40) == [True]
    second = start(store, job_id, "w2", now=T0 + 41)
    assert second.attempt == 2

    stale = Finish(job_id, 1, Outcome.FAILED, State.PENDING, error="ValueError: late", run_at=T0 + 99,
                   failures=1)
    current = decide(second, Outcome.SUCCEEDED, now=T0 + 42, result_json="1")
    assert store.finish_attempts([stale], T0 + 42) == [False]
    job = store.get(job_id)
    assert (job.state, job.attempt, job.worker, job.failures) == (State.RUNNING, 2, "w2", 0)
    late = job.attempts[0].late
    assert late is not None
    assert "failed" in late and "after the lease was lost; ignored" in late and "ValueError: late" in late
    assert job.attempts[0].outcome is Outcome.EXPIRED  # the recorded outcome is not overwritten
    assert job.attempts[1].late is None

    assert store.finish_attempts([current], T0 + 43) == [True]
    assert store.get(job_id).state is State.SUCCEEDED


def test_finish_after_job_left_running_is_refused(store: JobStore):
    (job_id,) = submit(store)
    job = start(store, job_id)
    store.cancel(job_id, T0 + 1)
    ok = store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0 + 2, result_json="1")], T0 + 2)
    assert ok == [False]
    after = store.get(job_id)
    assert after.state is State.CANCELLED
    assert after.result is None
    assert "succeeded" in after.attempts[0].late


def test_finish_attempts_batch_answers_each(store: JobStore):
    a, b = submit(store, spec(), spec())
    ja, jb = store.start_attempts([(a, "w1"), (b, "w1")], T0, T0 + 30)
    wrong = Finish(b, jb.attempt + 1, Outcome.SUCCEEDED, State.SUCCEEDED)
    assert store.finish_attempts([decide(ja, Outcome.SUCCEEDED, now=T0), wrong], T0) == [True, False]
    assert store.states_of([a, b]) == {a: State.SUCCEEDED, b: State.RUNNING}


def test_record_late(store: JobStore):
    (job_id,) = submit(store)
    start(store, job_id)
    store.record_late(job_id, 1, "answered after restart")
    assert store.get(job_id).attempts[0].late == "answered after restart"


SCHEDULE = (0.5, 1.0, 2.0, 4.0, 4.0, 4.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_retry_schedule_through_the_store(store: JobStore, seed: int):
    rng = random.Random(seed)
    policy = RetryPolicy(retries=6, backoff=0.5, max_backoff=4, jitter=0.1)
    (job_id,) = submit(store, spec(retry=policy))
    now = T0
    for n, expected in enumerate(SCHEDULE, start=1):
        assert store.promote_due(now) == (0 if n == 1 else 1)
        job = start(store, job_id, now=now)
        assert job.attempt == n
        f = decide(job, Outcome.FAILED, now=now, error=f"fail {n}", rng=rng)
        assert store.finish_attempts([f], now) == [True]
        stored = store.get(job_id)
        assert stored.state is State.PENDING
        assert stored.failures == n
        delay = stored.run_at - now
        assert 0.8 * expected <= delay <= 1.2 * expected, (n, delay)
        assert delay <= policy.max_backoff
        assert store.promote_due(stored.run_at - 0.01) == 0  # not due before its backoff ends
        now = stored.run_at
    # the seventh failure exhausts retries=6
    store.promote_due(now)
    job = start(store, job_id, now=now)
    assert store.finish_attempts([decide(job, Outcome.FAILED, now=now, rng=rng)], now) == [True]
    dead = store.get(job_id)
    assert (dead.state, dead.failures, len(dead.attempts)) == (State.DEAD, 7, 7)
    assert dead.finished_at == now


# -- operator actions -------------------------------------------------------------------------


@pytest.mark.parametrize("make_pending", [False, True])
def test_cancel_waiting_job(store: JobStore, make_pending: bool):
    (job_id,) = submit(store, spec(run_at=T0 + 50 if make_pending else None))
    job = store.cancel(job_id, T0 + 1)
    assert job.state is State.CANCELLED
    assert (job.finished_at, job.error) == (T0 + 1, "cancelled")
    assert store.fetch_ready(10) == []
    assert store.promote_due(T0 + 100) == 0


def test_cancel_running_job_closes_its_attempt(store: JobStore):
    (job_id,) = submit(store)
    start(store, job_id)
    job = store.cancel(job_id, T0 + 3)
    assert job.state is State.CANCELLED
    assert job.attempts[0].outcome is Outcome.CANCELLED
    assert job.attempts[0].finished_at == T0 + 3
    assert store.running_jobs() == []
    assert store.expired_leases(T0 + 1000) == []


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.FAILED])
def test_cancel_finished_job_is_refused(store: JobStore, outcome: Outcome):
    (job_id,) = submit(store, spec(retry=RetryPolicy(retries=0)))
    job = start(store, job_id)
    store.finish_attempts([decide(job, outcome, now=T0 + 1)], T0 + 1)
    state = store.get(job_id).state
    assert state.terminal
    with pytest.raises(InvalidTransition, match=f"a {state.value} job cannot become cancelled"):
        store.cancel(job_id, T0 + 2)
    assert store.get(job_id).state is state


def test_cancel_twice_is_refused(store: JobStore):
    (job_id,) = submit(store)
    store.cancel(job_id, T0)
    with pytest.raises(InvalidTransition):
        store.cancel(job_id, T0)


def test_cancel_and_requeue_unknown_job(store: JobStore):
    with pytest.raises(JobNotFound):
        store.cancel(99, T0)
    with pytest.raises(JobNotFound):
        store.requeue(99, T0)


def test_requeue_dead_job_resets_failures(store: JobStore):
    (job_id,) = submit(store, spec(retry=RetryPolicy(retries=0)))
    job = start(store, job_id)
    store.finish_attempts([decide(job, Outcome.FAILED, now=T0 + 1, error="boom")], T0 + 1)
    dead = store.get(job_id)
    assert (dead.state, dead.failures, dead.error) == (State.DEAD, 1, "boom")

    again = store.requeue(job_id, T0 + 10)
    assert again.state is State.QUEUED
    assert (again.failures, again.lost_count, again.error, again.finished_at) == (0, 0, None, None)
    assert again.run_at == T0 + 10
    assert [j.id for j in store.fetch_ready(10)] == [job_id]
    # the fencing token keeps counting: the rerun is attempt 2
    assert start(store, job_id, now=T0 + 11).attempt == 2


def test_requeue_succeeded_and_cancelled_jobs(store: JobStore):
    done, cancelled = submit(store, spec(), spec())
    job = start(store, done)
    store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0, result_json="5")], T0)
    store.cancel(cancelled, T0)
    assert store.requeue(done, T0 + 1).result is None
    assert store.requeue(cancelled, T0 + 1).state is State.QUEUED
    assert store.job_counts()["queued"] == 2


@pytest.mark.parametrize("state", [State.RUNNING, State.QUEUED, State.PENDING])
def test_requeue_of_live_job_is_refused(store: JobStore, state: State):
    (job_id,) = submit(store, spec(run_at=T0 + 100 if state is State.PENDING else None))
    if state is State.RUNNING:
        start(store, job_id)
    with pytest.raises(InvalidTransition, match=f"job {job_id} is {state.value}"):
        store.requeue(job_id, T0 + 1)
    assert store.get(job_id).state is state


# -- leases -----------------------------------------------------------------------------------


def test_renew_and_expire_leases(store: JobStore):
    a, b, c, d = submit(store, spec(), spec(), spec(), spec())
    store.start_attempts([(a, "w1"), (b, "w1")], T0, T0 + 100)
    store.start_attempts([(c, "w2")], T0, T0 + 100)
    assert store.expired_leases(T0 + 100) == []  # strictly past the lease
    assert store.renew_leases("w1", T0 + 200) == 2
    assert store.renew_leases("nobody", T0 + 200) == 0
    assert [j.id for j in store.expired_leases(T0 + 150)] == [c]
    assert sorted(j.id for j in store.expired_leases(T0 + 201)) == [a, b, c]
    assert sorted(j.id for j in store.running_jobs()) == [a, b, c]
    assert store.get(d).state is State.QUEUED


def test_renew_leases_ignores_finished_jobs(store: JobStore):
    (job_id,) = submit(store)
    job = start(store, job_id, "w1")
    store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0)], T0)
    assert store.renew_leases("w1", T0 + 500) == 0
    assert store.expired_leases(T0 + 1000) == []


# -- reads ------------------------------------------------------------------------------------


def test_counts_lists_every_state(store: JobStore):
    assert store.job_counts() == {s.value: 0 for s in State}
    a, b, _ = submit(store, spec(), spec(), spec(run_at=T0 + 9))
    start(store, a)
    store.cancel(b, T0)
    assert store.job_counts() == {"pending": 1, "queued": 0, "running": 1, "succeeded": 0, "dead": 0,
                              "cancelled": 1}


def test_states_of(store: JobStore):
    ids = [j.id for j in store.submit_many([spec() for _ in range(1200)], T0)]
    store.cancel(ids[700], T0)
    states = store.states_of([*ids, 999_999])
    assert len(states) == 1200  # more than one 500-id chunk; the unknown id is left out
    assert states[ids[700]] is State.CANCELLED
    assert states[ids[0]] is State.QUEUED
    assert store.states_of([]) == {}


def test_list_jobs_filters(store: JobStore):
    a, b, c, d = submit(store, spec(task="t1", queue="q1"), spec(task="t2", queue="q1"),
                        spec(task="t1", queue="q2"), spec(task="t1", queue="q1"))
    start(store, a, "w1")
    start(store, c, "w2")

    def ids(**filters):
        return [j.id for j in store.list_jobs(**filters)]

    assert ids() == [a, b, c, d]
    assert ids(task="t1") == [a, c, d]
    assert ids(queue="q1") == [a, b, d]
    assert ids(state=State.RUNNING) == [a, c]
    assert ids(worker="w2") == [c]
    assert ids(task="t1", queue="q1", state=State.QUEUED) == [d]
    assert ids(task="nope") == []
    assert ids(limit=2) == [a, b]


def test_list_jobs_pages_with_after_id(store: JobStore):
    all_ids = submit(store, *[spec(payload={"i": i}) for i in range(10)])
    seen, after = [], None
    while True:
        page = store.list_jobs(after_id=after, limit=3)
        if not page:
            break
        assert len(page) <= 3
        seen.extend(j.id for j in page)
        after = page[-1].id
    assert seen == all_ids
    assert [j.id for j in store.list_jobs(after_id=all_ids[7])] == all_ids[8:]


def test_list_jobs_omits_attempt_history_get_includes_it(store: JobStore):
    (job_id,) = submit(store)
    start(store, job_id)
    assert store.list_jobs()[0].attempts == ()
    assert len(store.get(job_id).attempts) == 1
    assert store.get(job_id, attempts=False).attempts == ()

def test_changed_sees_commits_of_other_connections(backend: Backend, store: JobStore):
    other = backend.open()
    try:
        # the first report may come late (PostgreSQL hears of changes on a listening connection,
        # which reports once when it connects: anything may have happened before); SQLite's is at once
        assert wait_until(store.changed, 5)
        time.sleep(0.1)
        assert store.changed() is False
        submit(other)
        if backend.name == "sqlite":
            assert store.changed() is True  # at once: it reads the file's data version
        else:
            assert wait_until(store.changed, 2)  # a notification, delivered by a background thread
        assert store.changed() is False
    finally:
        other.close()


def test_stats_and_per_worker(store: JobStore):
    ok1, ok2, bad, lost = submit(store, spec(), spec(), spec(retry=RetryPolicy(retries=0)), spec())
    store.upsert_workers([worker_record("alpha", "tcp://a:1")], T0)
    jobs = store.start_attempts([(ok1, "tcp://a:1"), (ok2, "tcp://b:1"), (bad, "tcp://a:1"),
                                 (lost, "tcp://b:1")], T0, T0 + 30)
    outcomes = [Outcome.SUCCEEDED, Outcome.SUCCEEDED, Outcome.FAILED, Outcome.LOST]
    finishes = [decide(job, outcome, now=T0 + 1) for job, outcome in zip(jobs, outcomes)]
    assert store.finish_attempts(finishes, T0 + 2) == [True] * 4
    stats = store.stats(since=T0)
    assert stats["succeeded"] == 2
    assert stats["first_finished"] == stats["last_finished"] == T0 + 2
    assert (stats["failed_attempts"], stats["retries"], stats["lost_attempts"]) == (2, 1, 1)
    assert store.stats(since=T0 + 3)["succeeded"] == 0
    assert store.per_worker() == {"alpha (tcp://a:1)": 1, "tcp://b:1": 1}


# -- worker registry --------------------------------------------------------------------------


def test_upsert_workers_marks_absent_workers_gone(store: JobStore):
    store.upsert_workers([worker_record("alpha", "tcp://a:1"), worker_record("beta", "tcp://b:1")], T0)
    assert {w.name: w.status for w in store.list_workers()} == {"alpha": "running", "beta": "running"}

    store.upsert_workers([worker_record("alpha", "tcp://a:1", inflight=7, labels={"gpu": "a100"},
                                        metrics={"cpu": 0.5})], T0 + 1)
    workers = {w.name: w for w in store.list_workers()}
    assert workers["beta"].status == "gone"
    assert workers["beta"].inflight == 0
    assert workers["alpha"].status == "running"
    assert (workers["alpha"].inflight, workers["alpha"].labels) == (7, {"gpu": "a100"})
    assert workers["alpha"].metrics == {"cpu": 0.5}
    assert [w.name for w in store.list_workers()] == ["alpha", "beta"]  # live ones first

    store.upsert_workers([], T0 + 2)
    assert {w.status for w in store.list_workers()} == {"gone"}


def test_upsert_workers_revives_a_returning_worker(store: JobStore):
    store.upsert_workers([worker_record("zeta", "tcp://z:1")], T0)
    store.upsert_workers([], T0 + 1)
    store.upsert_workers([worker_record("zeta", "tcp://z:1", status="running")], T0 + 2)
    (w,) = store.list_workers()
    assert (w.status, w.last_seen) == ("running", T0)

# -- schema ---------------------------------------------------------------------------------------


def test_schema_version_recorded(store: JobStore):
    assert len(SQLITE_MIGRATIONS) == len(POSTGRES_MIGRATIONS)  # a version means the same on both
    assert store.schema_version() == len(SQLITE_MIGRATIONS)  # type: ignore[attr-defined]


def test_get_many_keeps_the_order_asked_and_refuses_unknown_ids(store):
    ids = submit(store, *[spec(payload={"n": i}) for i in range(1203)])
    wanted = list(reversed(ids))
    assert [j.id for j in store.get_many(wanted)] == wanted
    assert store.get_many(wanted)[0].payload == {"n": 1202}
    with pytest.raises(JobNotFound):
        store.get_many([ids[0], 999_999])


def test_event_log_records_each_change_in_commit_order_and_prunes_by_age_and_count(store: JobStore):
    for t in range(10):
        store.submit_many([JobSpec(task="x", payload={"n": t})], 1000.0 + t)
    job = store.fetch_ready(1)[0]
    store.start_attempts([(job.id, "w1")], 1011.0, 1041.0)
    store.cancel(job.id, 1012.0)
    events = store.events_after(0, 100)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert [(e["job"], e["state"]) for e in events[-3:]] == [(10, "queued"), (1, "running"), (1, "cancelled")]
    assert events[-2]["worker"] == "w1" and events[-1]["task"] == "x"
    assert store.prune_events(1003.0, 1_000_000) == 3  # the events written before t=1003
    assert store.event_bounds() == (4, 12)
    assert store.prune_events(0.0, 5) == 4  # only the newest five are kept
    assert store.event_bounds() == (8, 12)
    store.submit_many([JobSpec(task="x", payload={})], 2000.0)
    assert store.event_bounds()[1] == 13  # ids are never reused after a prune


# -- claim: fetch and start in one atomic step ----------------------------------------------------


def test_claim_takes_ready_jobs_in_priority_order_up_to_the_limit(store: JobStore, backend: Backend):
    levels = ["normal", "low", "critical", "high", "normal", "critical", "low", "high", "critical"]
    ids = [submit(store, spec(payload={"n": n}, priority=Priority.parse(p)))[0]
           for n, p in enumerate(levels)]
    (pending,) = submit(store, spec(priority=Priority.CRITICAL, run_at=T0 + 60))  # not ready
    expected = [ids[n] for n in (2, 5, 8, 3, 7, 0, 4, 1, 6)]

    first = store.claim("w1", 4, T0 + 1, T0 + 31)
    assert [j.id for j in first] == expected[:4]
    second = store.claim("w2", 100, T0 + 2, T0 + 32)
    assert [j.id for j in second] == expected[4:]
    assert store.claim("w3", 100, T0 + 3, T0 + 33) == []
    assert store.get(pending).state is State.PENDING
    assert store.get(pending).attempts == ()
    assert store.job_counts()["running"] == len(levels)
    assert backend.count("attempts") == len(levels)


def test_claim_starts_an_attempt_with_worker_and_lease(store: JobStore):
    a, b, c = submit(store, spec(payload={"a": 1}), spec(), spec())
    store.set_waiting({a: "no worker has a GPU"})
    claimed = store.claim("w1", 2, T0 + 1, T0 + 31)
    assert [j.id for j in claimed] == [a, b]
    for job in claimed:
        assert (job.state, job.attempt, job.worker, job.updated_at, job.waiting) == (
            State.RUNNING, 1, "w1", T0 + 1, None)
        stored = store.get(job.id)
        assert (stored.state, stored.attempt, stored.worker, stored.waiting) == (State.RUNNING, 1, "w1", None)
        assert stored.attempts == (Attempt(1, "w1", T0 + 1, None, None, None, None),)
    assert claimed[0].payload == {"a": 1}
    assert store.get(c).state is State.QUEUED
    assert sorted(j.id for j in store.running_jobs()) == [a, b]
    # the lease runs to lease_until, and renews like any other
    assert store.expired_leases(T0 + 31) == []
    assert [j.id for j in store.expired_leases(T0 + 31.5)] == [a, b]
    assert store.renew_leases("w1", T0 + 90) == 2
    assert store.expired_leases(T0 + 60) == []
    # the claimed attempt is fenced like a started one
    f = decide(claimed[0], Outcome.SUCCEEDED, now=T0 + 2, result_json="7")
    assert store.finish_attempts([f, Finish(b, 2, Outcome.SUCCEEDED, State.SUCCEEDED)], T0 + 2) == [True, False]
    assert store.get(a).result == 7


def test_claim_writes_one_running_event_per_job(store: JobStore):
    a, b = submit(store, spec(), spec(priority=Priority.HIGH))
    _, high = store.event_bounds()
    store.claim("w7", 10, T0 + 1, T0 + 31)
    events = store.events_after(high)
    assert [(e["job"], e["state"], e["worker"], e["detail"], e["at"]) for e in events] == [
        (b, "running", "w7", "attempt 1", T0 + 1), (a, "running", "w7", "attempt 1", T0 + 1)]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


def test_claim_on_an_empty_store_takes_nothing_and_writes_nothing(store: JobStore, backend: Backend):
    bounds = store.event_bounds()
    assert store.claim("w1", 10, T0, T0 + 30) == []
    assert store.event_bounds() == bounds
    assert backend.count("attempts") == 0


def test_claim_skips_cancelled_pending_and_running_jobs(store: JobStore):
    cancelled, running, pending, ready = submit(store, spec(priority=Priority.CRITICAL), spec(priority=Priority.HIGH),
                                                spec(priority=Priority.CRITICAL, run_at=T0 + 100), spec())
    store.cancel(cancelled, T0)
    start(store, running, "w0")
    assert [j.id for j in store.claim("w1", 10, T0 + 1, T0 + 31)] == [ready]
    assert store.claim("w2", 10, T0 + 2, T0 + 32) == []
    assert store.get(cancelled).state is State.CANCELLED
    assert store.get(cancelled).attempts == ()
    assert (store.get(running).worker, len(store.get(running).attempts)) == ("w0", 1)
    assert store.get(pending).state is State.PENDING
    # a requeued job is claimable again, as its next attempt
    store.cancel(ready, T0 + 3)
    store.requeue(ready, T0 + 4)
    (again,) = store.claim("w3", 10, T0 + 5, T0 + 35)
    assert (again.id, again.attempt, again.worker) == (ready, 2, "w3")


@pytest.mark.timeout(120)
def test_concurrent_claimers_take_every_job_exactly_once(backend: Backend):
    jobs, claimers, batch = 10_000, 8, 50
    setup = backend.open()
    stores: list[JobStore] = []
    try:
        ids: list[int] = []
        for first in range(0, jobs, 1000):
            ids += [j.id for j in setup.submit_many([spec(payload={"n": n}) for n in range(first, first + 1000)], T0)]
        stores = [backend.open() for _ in range(claimers)]  # each claimer has connections of its own
        barrier = threading.Barrier(claimers)
        taken: list[list[Job]] = [[] for _ in range(claimers)]

        def claimer(i: int) -> Callable[[], None]:
            def loop() -> None:
                barrier.wait(timeout=30)
                while got := stores[i].claim(f"c{i}", batch, T0 + 1, T0 + 600):
                    assert len(got) <= batch
                    taken[i].extend(got)
            return loop

        began = time.monotonic()
        assert run_threads([claimer(i) for i in range(claimers)], timeout=100) == []
        elapsed = time.monotonic() - began

        claimed = [j.id for got in taken for j in got]
        assert len(claimed) == len(set(claimed)), "a job was claimed twice"
        assert sorted(claimed) == sorted(ids), "a job was left behind"
        owner = {j.id: f"c{i}" for i, got in enumerate(taken) for j in got}
        assert all(j.state is State.RUNNING and j.attempt == 1 and j.worker == owner[j.id]
                   for got in taken for j in got)
        assert setup.job_counts() == {**{s.value: 0 for s in State}, "running": jobs}
        assert all(j.state is State.RUNNING and j.attempt == 1 and j.worker == owner[j.id]
                   for j in setup.get_many(ids))
        # one attempt per job, by the claimer that got it
        assert backend.count("attempts") == jobs
        assert backend.count("attempts", "number = 1") == jobs
        for job_id in random.Random(7).sample(ids, 25):
            assert setup.get(job_id).attempts == (Attempt(1, owner[job_id], T0 + 1, None, None, None, None),)
        assert backend.count("events", "state = 'running'") == jobs
        assert elapsed < 60, f"{jobs} claims took {elapsed:.1f} s"
    finally:
        for s in [setup, *stores]:
            s.close()


# -- event ids follow commit order ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_event_ids_follow_commit_order_under_concurrent_writers(backend: Backend):
    """A reader that resumes from the last id it saw (as an SSE client does) misses nothing: no
    event becomes visible with an id below one already seen."""
    submitters, claimers, rounds = 3, 2, 120
    backend.open().close()
    stores = [backend.open() for _ in range(submitters + claimers + 1)]
    reader = stores[-1]
    lock = threading.Lock()
    active = {"submitters": submitters, "writers": submitters + claimers}
    writing = threading.Event()
    writing.set()
    seen: list[int] = []
    written = [0] * (submitters + claimers)  # events each writer caused

    def finished(*groups: str) -> None:
        with lock:
            for group in groups:
                active[group] -= 1
            if active["writers"] == 0:
                writing.clear()

    def submitter(i: int) -> Callable[[], None]:
        def loop() -> None:
            try:
                rng = random.Random(i)
                for n in range(rounds):
                    size = rng.randint(1, 3)
                    stores[i].submit_many([spec(payload={"s": i, "n": n, "k": k}) for k in range(size)], T0 + n)
                    written[i] += size
            finally:
                finished("submitters", "writers")
        return loop

    def claimer(i: int) -> Callable[[], None]:
        me = submitters + i

        def loop() -> None:
            try:
                while True:
                    more = active["submitters"] > 0
                    got = stores[me].claim(f"c{i}", 5, T0, T0 + 600)
                    # finish every other one: a second kind of write, with events of its own
                    done = [decide(j, Outcome.SUCCEEDED, now=T0 + 1, result_json="1") for j in got[::2]]
                    if done:
                        assert stores[me].finish_attempts(done, T0 + 1) == [True] * len(done)
                    written[me] += len(got) + len(done)
                    if not got:
                        if not more:
                            return
                        time.sleep(0.002)
            finally:
                finished("writers")
        return loop

    def read() -> None:
        last = 0
        while True:
            more = writing.is_set()
            page = reader.events_after(last, 200)
            ids = [e["id"] for e in page]
            assert ids == sorted(set(ids)) and (not ids or ids[0] > last)
            seen.extend(ids)
            if ids:
                last = ids[-1]
            elif not more:
                return

    try:
        writers = [submitter(i) for i in range(submitters)] + [claimer(i) for i in range(claimers)]
        assert run_threads([read, *writers], timeout=100) == []
        assert reader.job_counts()["queued"] == 0
        final = [e["id"] for e in all_events(reader)]
        assert len(final) == sum(written)  # every write's events are there
        missed = sorted(set(final) - set(seen))
        assert seen == final, f"the reader missed {len(missed)} events (first: {missed[:5]})"  # each once, in order
    finally:
        for s in stores:
            s.close()


# -- pipeline runs and camera counts ----------------------------------------------------------


def test_runs_round_trip_and_list_newest_first(store: JobStore):
    a = store.create_run("p", {"name": "p", "stages": []}, {"videos": [1]}, T0, owner="alice")
    b = store.create_run("q", {"name": "q", "stages": []}, {}, T0 + 1, fresh=True)
    run = store.get_run(a)
    assert (run.name, run.input, run.state, run.owner, run.fresh, run.problems) == (
        "p", {"videos": [1]}, "running", "alice", False, {})
    assert store.get_run(b).fresh
    assert [r.id for r in store.list_runs()] == [b, a]
    assert [r.id for r in store.list_runs(name="p")] == [a]
    assert store.active_runs() == [a, b]
    assert not store.update_run(a, "succeeded", {}, T0 + 4, expected="failed")  # it is running: no change
    assert store.update_run(a, "failed", {"s/1": "bad"}, T0 + 5, expected="running")
    assert store.active_runs() == [b]
    done = store.get_run(a)
    assert (done.state, done.problems, done.finished_at) == ("failed", {"s/1": "bad"}, T0 + 5)
    assert [r.id for r in store.list_runs(state="failed")] == [a]
    with pytest.raises(RunNotFound, match="no pipeline run with id 999"):
        store.get_run(999)


def test_run_jobs_are_shared_by_key_and_a_dead_one_is_queued_again(store: JobStore, backend: Backend):
    first = store.create_run("p", {}, {}, T0)
    entries = [("scan", i, spec(payload={"i": i}, idempotency_key=f"pipeline:{i}")) for i in range(3)]
    jobs = store.add_run_jobs(first, entries, T0)
    assert [j.state for j in jobs] == [State.QUEUED] * 3
    # the same entries again (two advancers at once): nothing new, the same links
    assert [j.id for j in store.add_run_jobs(first, entries, T0)] == [j.id for j in jobs]
    assert backend.count("pipeline_jobs") == 3 and backend.count() == 3
    start(store, jobs[0].id)
    store.finish_attempts([Finish(jobs[0].id, 1, Outcome.SUCCEEDED, State.SUCCEEDED, result_json='{"ok": 1}')], T0)
    start(store, jobs[1].id)
    store.finish_attempts([Finish(jobs[1].id, 1, Outcome.FAILED, State.DEAD, error="bad file")], T0)
    rows = {(stage, item): (job_id, state, error) for stage, item, job_id, state, error, _ in store.run_jobs(first)}
    assert rows[("scan", 0)] == (jobs[0].id, State.SUCCEEDED, None)
    assert rows[("scan", 1)] == (jobs[1].id, State.DEAD, "bad file")
    assert store.job_results([jobs[0].id, jobs[1].id]) == {jobs[0].id: {"ok": 1}, jobs[1].id: None}

    second = store.create_run("p", {}, {}, T0 + 10)
    again = store.add_run_jobs(second, entries, T0 + 10)
    assert [j.id for j in again] == [j.id for j in jobs]  # reused, not copied
    states = {item: state for _, item, _, state, _, _ in store.run_jobs(second)}
    assert states == {0: State.SUCCEEDED, 1: State.QUEUED, 2: State.QUEUED}  # the dead one runs again
    assert backend.count() == 3
    store.unlink_run_jobs(second, T0 + 11)
    assert store.run_jobs(second) == [] and len(store.run_jobs(first)) == 3 and backend.count() == 3


def test_runs_of_names_the_run_that_made_each_job(store: JobStore):
    # what video.logline's lines say about who asked: read by the head, never from a payload
    first = store.create_run("p", {}, {}, T0)
    second = store.create_run("p", {}, {}, T0 + 1)
    entries = [("scan", i, spec(payload={"i": i}, idempotency_key=f"runs-of:{i}")) for i in range(2)]
    made = store.add_run_jobs(first, entries, T0)
    reused = store.add_run_jobs(second, [*entries, ("scan", 2, spec(payload={"i": 2}))], T0 + 1)
    (alone,) = store.submit_many([spec()], T0)
    ids = [j.id for j in reused]
    assert store.runs_of([*ids, alone.id, 999_999]) == {made[0].id: first, made[1].id: first, ids[2]: second}
    assert store.runs_of([]) == {}


def test_counts_keep_the_first_report_of_a_frame(store: JobStore):
    from clusterai.core.model import CountPoint

    def point(job: int, frame: int, total: int, at: float, camera: str = "gate") -> CountPoint:
        return CountPoint(job, camera, frame, frame / 15, at, total, total, 0)

    store.add_count_points([point(1, 75, 2, T0), point(1, 150, 3, T0 + 5), point(2, 75, 9, T0 + 1, "door")])
    store.add_count_points([point(1, 150, 99, T0 + 9)])  # a resumed attempt reports its checkpoint again
    assert [(p.frame, p.total) for p in store.list_count_points(job_id=1)] == [(75, 2), (150, 3)]
    assert [p.job_id for p in store.list_count_points(camera="door")] == [2]
    assert [p.frame for p in store.list_count_points(job_id=1, since=T0 + 1)] == [150]
    assert [p.frame for p in store.list_count_points(until=T0 + 1)] == [75]
    assert len(store.list_count_points(limit=2)) == 2
    latest = {s["job_id"]: (s["total"], s["points"]) for s in store.count_series()}
    assert latest == {1: (3, 2), 2: (9, 1)}


# -- idempotency keys belong to their owner (issue 15) ------------------------------------------


def _raw(backend: Backend, sql: str, params: tuple[Any, ...] = ()) -> None:
    """A statement on a connection of its own, committed (as an older clusterai wrote rows)."""
    if backend.name == "sqlite":
        with closing(sqlite3.connect(backend.url)) as db, db:
            db.execute(sql, params)
        return
    import psycopg

    with psycopg.connect(backend.url) as conn:
        conn.execute(sql.replace("?", "%s"), params)


def test_one_key_of_two_owners_is_two_jobs(store: JobStore, backend: Backend):
    (a,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="k", owner="alice")], T0)
    (b,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="k", owner="bob")], T0)
    (local,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="k")], T0)
    assert len({a.id, b.id, local.id}) == 3 and backend.count() == 3
    assert [store.get(j).idempotency_key for j in (a.id, b.id, local.id)] == ["k", "k", "k"]
    assert {j.idempotency_key for j in store.list_jobs()} == {"k"}
    # each owner's key finds its own job only
    (again,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="k", owner="bob")], T0 + 1)
    assert again.id == b.id and again.idempotency_key == "k" and again.owner == "bob"
    with pytest.raises(IdempotencyConflict) as info:
        store.submit_many([spec(payload={"v": 2}, idempotency_key="k", owner="bob")], T0 + 1)
    assert info.value.job_id == b.id and info.value.key == "k"
    assert backend.count() == 3


def test_an_owners_key_stored_before_scoping_reads_back_and_still_finds_its_job(store: JobStore,
                                                                                backend: Backend):
    (old,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="old", owner="alice")], T0)
    _raw(backend, "UPDATE jobs SET idempotency_key=? WHERE id=?", ("old", old.id))  # the unscoped form
    assert store.get(old.id).idempotency_key == "old"
    (again,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="old", owner="alice")], T0 + 1)
    assert again.id == old.id
    with pytest.raises(IdempotencyConflict):
        store.submit_many([spec(payload={"v": 2}, idempotency_key="old", owner="alice")], T0 + 1)
    (other,) = store.submit_many([spec(payload={"v": 1}, idempotency_key="old", owner="bob")], T0 + 1)
    assert other.id != old.id and backend.count() == 2


def test_pipeline_stage_jobs_of_two_owners_are_not_shared(store: JobStore):
    entries = [("scan", 0, spec(payload={"i": 0}, idempotency_key="pipeline:0", owner=who)) for who in ("a", "b")]
    runs = [store.create_run("p", {"stages": []}, {}, T0, owner=who) for who in ("a", "b")]
    jobs = [store.add_run_jobs(run, [entry], T0)[0] for run, entry in zip(runs, entries)]
    assert jobs[0].id != jobs[1].id and [j.owner for j in jobs] == ["a", "b"]
    assert store.add_run_jobs(runs[0], [entries[0]], T0 + 1)[0].id == jobs[0].id


def test_unfinished_jobs_of_an_owner(store: JobStore):
    ids = [j.id for j in store.submit_many([spec(owner="alice") for _ in range(4)] + [spec(owner="bob")], T0)]
    store.submit_many([spec(owner="alice", run_at=T0 + 100)], T0)  # pending counts too
    start(store, ids[0])
    store.cancel(ids[1], T0)
    assert (store.unfinished_of("alice"), store.unfinished_of("bob"), store.unfinished_of("carol")) == (4, 1, 0)


def test_backlog_groups_queued_and_running_jobs_by_what_they_need(store: JobStore):
    ids = submit(store, spec(), spec(), spec(resources={"GPU": 1}), spec(labels={"region": "eu"}, queue="video"),
                 spec(run_at=T0 + 100))  # pending: not yet demand
    start(store, ids[0])
    rows = sorted(repr(row) for row in store.backlog())
    assert rows == sorted(repr(row) for row in [("default", "unit.job", {}, {}, "queued", 1),
                                                ("default", "unit.job", {}, {}, "running", 1),
                                                ("default", "unit.job", {"GPU": 1.0}, {}, "queued", 1),
                                                ("video", "unit.job", {}, {"region": "eu"}, "queued", 1)])


def test_scale_decisions_come_back_newest_first_and_only_the_newest_are_kept(store: JobStore):
    rows = [{"at": T0 + i, "profile": "gpu" if i % 2 else "cpu", "from": i, "to": i + 1, "reason": f"r{i}",
             "inputs": {"queued": i}} for i in range(6)]
    store.add_scale_decisions(rows[:3])
    store.add_scale_decisions(rows[3:], kept=4)
    got = store.list_scale_decisions(limit=10)
    assert [r["reason"] for r in got] == ["r5", "r4", "r3", "r2"]
    assert got[0] | {"id": 0} == {"id": 0, "at": T0 + 5, "profile": "gpu", "from": 5, "to": 6, "reason": "r5",
                                  "inputs": {"queued": 5}}
    assert [r["reason"] for r in store.list_scale_decisions(profile="cpu")] == ["r4", "r2"]
    assert [r["reason"] for r in store.list_scale_decisions(since=T0 + 4, limit=1)] == ["r5"]


def test_autoscale_documents_are_replaced_by_key(store: JobStore):
    assert store.get_autoscale("override") is None
    store.put_autoscale("override", {"enabled": True, "profiles": {"default": {"min": 1, "max": 4}}}, T0)
    store.put_autoscale("override", {"enabled": False}, T0 + 1)
    store.put_autoscale("state", {"profiles": {}}, T0 + 2)
    assert store.get_autoscale("override") == ({"enabled": False}, T0 + 1)
    assert store.get_autoscale("state") == ({"profiles": {}}, T0 + 2)


def test_job_history_gives_submit_times_and_run_seconds_of_finished_jobs(store: JobStore):
    ids = submit(store, spec(), spec(resources={"GPU": 1}), spec(), now=T0)
    for i, job_id in enumerate(ids[:2]):
        job = start(store, job_id, now=T0 + 10)
        store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0 + 10 + 5 * (i + 1), result_json="1")],
                              T0 + 10 + 5 * (i + 1))
    rows = store.job_history(T0, T0 + 100)
    assert rows == [(T0, 5.0, {}, {}), (T0, 10.0, {"GPU": 1.0}, {})]
    assert store.job_history(T0 + 16, T0 + 100) == [(T0, 10.0, {"GPU": 1.0}, {})]


def test_a_join_tokens_uses_are_spent_one_at_a_time_and_not_past_zero(store: JobStore):
    from clusterai.service.access import new_token

    _, join = new_token("join", "worker", created_by="test", uses=2, now=T0, expires_in=100)
    _, plain = new_token("plain", "worker", created_by="test", now=T0)
    store.add_token(join)
    store.add_token(plain)
    assert store.get_token(join.id).uses_left == 2 and store.get_token(plain.id).uses_left is None
    assert [store.use_token(join.id, T0 + 1) for _ in range(3)] == [True, True, False]
    assert store.get_token(join.id).uses_left == 0 and not store.get_token(join.id).usable(T0 + 1)
    assert store.use_token(plain.id, T0) is False, "a token that is not a join token has no uses to spend"
    _, late = new_token("late", "worker", created_by="test", uses=1, now=T0, expires_in=10)
    store.add_token(late)
    assert store.use_token(late.id, T0 + 11) is False, "an expired join token is not spent"
    store.revoke_token(late.id, T0 + 1)
    assert store.use_token(late.id, T0 + 2) is False


# -- pipeline runs at scale (issue 21, item 4) ----------------------------------------------------


def test_a_runs_head_moves_with_every_write_to_the_run_or_its_links(store: JobStore):
    run = store.create_run("p", {"stages": []}, {"items": list(range(100))}, T0)
    assert store.run_head(run) == ("running", T0, T0)
    store.add_run_jobs(run, [("scan", 0, spec(payload={"i": 0}, idempotency_key="head:0"))], T0 + 1)
    assert store.run_head(run) == ("running", T0, T0 + 1)
    store.unlink_run_jobs(run, T0 + 2)
    assert store.run_head(run) == ("running", T0, T0 + 2)
    store.update_run(run, "failed", {"scan/0": "bad"}, T0 + 3)
    assert store.run_head(run) == ("failed", T0, T0 + 3)
    with pytest.raises(RunNotFound):
        store.run_head(999)


def test_stage_jobs_found_again_together_keep_their_order_conflicts_and_old_keys(store: JobStore,
                                                                                 backend: Backend):
    first, second = (store.create_run("p", {"stages": []}, {}, T0, owner="alice") for _ in range(2))

    def entry(item: int, value: int, key: str) -> tuple[str, int, JobSpec]:
        return ("scan", item, spec(payload={"v": value}, idempotency_key=key, owner="alice"))

    made = store.add_run_jobs(first, [entry(0, 0, "k0"), entry(1, 1, "k1")], T0)
    _raw(backend, "UPDATE jobs SET idempotency_key=? WHERE id=?", ("k1", made[1].id))  # stored before scoping
    # new, found, the same new key twice in one batch, found through its old unscoped key
    jobs = store.add_run_jobs(second, [entry(0, 2, "k2"), entry(1, 0, "k0"), entry(2, 2, "k2"), entry(3, 1, "k1")],
                              T0 + 1)
    assert [j.id for j in jobs][1:] == [made[0].id, jobs[0].id, made[1].id] and jobs[0].id not in {m.id for m in made}
    assert [j.payload for j in jobs] == [{"v": 2}, {"v": 0}, {"v": 2}, {"v": 1}]
    assert backend.count() == 3 and backend.count("pipeline_jobs") == 6
    with pytest.raises(IdempotencyConflict) as info:  # a found key with another payload: nothing is written
        store.add_run_jobs(first, [entry(5, 9, "k9"), entry(6, 99, "k0")], T0 + 2)
    assert info.value.job_id == made[0].id
    assert backend.count() == 3 and backend.count("pipeline_jobs") == 6
