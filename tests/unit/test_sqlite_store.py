"""clusterai.jobs.sqlite (and open_store): the SQLite job store against the JobStore contract."""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from clusterai.errors import (
    ConfigError,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    StoreUnavailable,
)
from clusterai.jobs import sqlite as sqlite_module
from clusterai.jobs.migrations import SQLITE_MIGRATIONS
from clusterai.jobs.model import (
    Finish,
    JobSpec,
    Outcome,
    Priority,
    RetryPolicy,
    State,
    WorkerRecord,
    decide,
)
from clusterai.jobs.sqlite import SQLiteStore
from clusterai.jobs.store import open_store

T0 = 1_000.0


def spec(task: str = "unit.job", payload: dict | None = None, **options) -> JobSpec:
    return JobSpec(task=task, payload=payload if payload is not None else {}, **options)


def submit(store: SQLiteStore, *specs: JobSpec, now: float = T0) -> list[int]:
    return [job.id for job in store.submit_many(specs or [spec()], now)]


def row_count(path: Path, table: str = "jobs") -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def start(store: SQLiteStore, job_id: int, worker: str = "w1", now: float = T0, lease: float = 30.0):
    (job,) = store.start_attempts([(job_id, worker)], now, now + lease)
    return job


def worker_record(name: str, address: str, **changes) -> WorkerRecord:
    fields = dict(name=name, address=address, status="running", nthreads=2, memory_limit=1 << 30,
                  inflight=1, completed=5, failed=0, last_seen=T0)
    fields.update(changes)
    return WorkerRecord(**fields)


# -- submission -------------------------------------------------------------------------------


def test_submit_stores_the_spec(store: SQLiteStore):
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


def test_get_unknown_job_raises(store: SQLiteStore):
    with pytest.raises(JobNotFound, match="no job with id 12345"):
        store.get(12345)


def test_submit_many_returns_jobs_in_order_with_increasing_ids(store: SQLiteStore):
    jobs = store.submit_many([spec(payload={"i": i}) for i in range(5)], T0)
    assert [j.payload["i"] for j in jobs] == list(range(5))
    ids = [j.id for j in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [store.get(i).payload for i in ids] == [{"i": i} for i in range(5)]


def test_submit_many_is_all_or_nothing(store: SQLiteStore, db_path: Path):
    submit(store, spec(payload={"v": 1}, idempotency_key="k"))
    before = row_count(db_path)
    batch = [spec(payload={"i": 1}), spec(payload={"i": 2}), spec(payload={"v": 2}, idempotency_key="k")]
    with pytest.raises(IdempotencyConflict):
        store.submit_many(batch, T0)
    assert row_count(db_path) == before == 1
    # the store is still usable after the rollback
    assert len(submit(store, spec(), spec())) == 2
    assert row_count(db_path) == 3


def test_future_run_at_is_pending_until_promoted(store: SQLiteStore):
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


def test_fetch_ready_orders_by_priority_then_fifo(store: SQLiteStore):
    levels = ["normal", "low", "critical", "high", "normal", "critical", "low", "high", "critical"]
    ids = [submit(store, spec(payload={"n": n}, priority=Priority.parse(p)))[0]
           for n, p in enumerate(levels)]
    submit(store, spec(priority=Priority.CRITICAL, run_at=T0 + 60))  # pending: not ready
    expected = [ids[n] for n in (2, 5, 8, 3, 7, 0, 4, 1, 6)]
    assert [j.id for j in store.fetch_ready(100)] == expected
    assert [j.id for j in store.fetch_ready(4)] == expected[:4]


def test_fetch_ready_skips_started_jobs(store: SQLiteStore):
    a, b = submit(store, spec(priority=Priority.HIGH), spec())
    start(store, a)
    assert [j.id for j in store.fetch_ready(10)] == [b]


# -- idempotency ------------------------------------------------------------------------------


def test_same_key_same_payload_returns_the_same_job(store: SQLiteStore, db_path: Path):
    (first,) = submit(store, spec(payload={"a": 1, "b": [1, 2]}, idempotency_key="once"))
    (again,) = submit(store, spec(payload={"b": [1, 2], "a": 1}, idempotency_key="once"), now=T0 + 5)
    assert again == first
    assert row_count(db_path) == 1
    assert store.get(first).created_at == T0


def test_same_key_twice_in_one_batch_stores_one_job(store: SQLiteStore, db_path: Path):
    ids = submit(store, spec(idempotency_key="k"), spec(idempotency_key="k"))
    assert ids[0] == ids[1]
    assert row_count(db_path) == 1


def test_same_key_returns_existing_job_in_its_current_state(store: SQLiteStore):
    (job_id,) = submit(store, spec(idempotency_key="k"))
    start(store, job_id)
    (again,) = store.submit_many([spec(idempotency_key="k")], T0 + 1)
    assert again.id == job_id
    assert again.state is State.RUNNING


@pytest.mark.parametrize("other", [spec(payload={"a": 2}), spec(task="unit.other", payload={"a": 1})])
def test_same_key_other_payload_or_task_conflicts(store: SQLiteStore, db_path: Path, other: JobSpec):
    (job_id,) = submit(store, spec(payload={"a": 1}, idempotency_key="k"))
    conflicting = JobSpec(task=other.task, payload=other.payload, idempotency_key="k")
    with pytest.raises(IdempotencyConflict) as info:
        submit(store, spec(payload={"fresh": True}), conflicting)
    assert info.value.job_id == job_id
    assert info.value.key == "k"
    assert f"already names job {job_id}" in str(info.value)
    assert row_count(db_path) == 1


def test_jobs_without_key_never_deduplicate(store: SQLiteStore):
    ids = submit(store, spec(payload={"a": 1}), spec(payload={"a": 1}))
    assert ids[0] != ids[1]


@pytest.mark.timeout(60)
def test_concurrent_submits_with_one_key_from_separate_connections(db_path: Path):
    SQLiteStore(db_path).close()  # create the schema once
    stores = [SQLiteStore(db_path) for _ in range(50)]
    barrier = threading.Barrier(len(stores))
    ids: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def go(s: SQLiteStore) -> None:
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
    assert row_count(db_path) == 1


def _submit_from_process(path: str, index: int, count: int, barrier, results) -> None:
    """Runs in a spawned process: its own store object, `count` one-job transactions."""
    errors: list[str] = []
    ids: list[int] = []
    store = None
    try:
        store = SQLiteStore(path)
        barrier.wait(timeout=60)
        for n in range(count):
            try:
                (job,) = store.submit_many([JobSpec(task="unit.proc", payload={"p": index, "n": n})], T0)
                ids.append(job.id)
            except Exception as exc:  # noqa: BLE001 - sent back to the test
                errors.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - sent back to the test
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if store is not None:
            store.close()
        results.put((index, ids, errors))


@pytest.mark.timeout(120)
def test_concurrent_submits_from_several_processes(db_path: Path):
    SQLiteStore(db_path).close()
    ctx = multiprocessing.get_context("spawn")
    procs, per_proc = 4, 200
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_submit_from_process, args=(str(db_path), i, per_proc, barrier, results))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    try:
        answers = [results.get(timeout=90) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * procs
    errors = [e for _, _, errs in answers for e in errs]
    assert errors == [], errors[:3]
    ids = [i for _, got, _ in answers for i in got]
    assert len(ids) == len(set(ids)) == procs * per_proc
    assert row_count(db_path) == procs * per_proc
    with sqlite3.connect(db_path) as db:
        per = dict(db.execute("SELECT json_extract(payload, '$.p'), COUNT(*) FROM jobs GROUP BY 1"))
    assert per == {i: per_proc for i in range(procs)}


# -- attempts and fencing ---------------------------------------------------------------------


def test_start_attempts_starts_only_queued_jobs(store: SQLiteStore):
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


def test_finish_current_attempt_succeeds(store: SQLiteStore):
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


def test_finish_with_stale_attempt_is_fenced_off(store: SQLiteStore):
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


def test_finish_after_job_left_running_is_refused(store: SQLiteStore):
    (job_id,) = submit(store)
    job = start(store, job_id)
    store.cancel(job_id, T0 + 1)
    ok = store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0 + 2, result_json="1")], T0 + 2)
    assert ok == [False]
    after = store.get(job_id)
    assert after.state is State.CANCELLED
    assert after.result is None
    assert "succeeded" in after.attempts[0].late


def test_finish_attempts_batch_answers_each(store: SQLiteStore):
    a, b = submit(store, spec(), spec())
    ja, jb = store.start_attempts([(a, "w1"), (b, "w1")], T0, T0 + 30)
    wrong = Finish(b, jb.attempt + 1, Outcome.SUCCEEDED, State.SUCCEEDED)
    assert store.finish_attempts([decide(ja, Outcome.SUCCEEDED, now=T0), wrong], T0) == [True, False]
    assert store.states_of([a, b]) == {a: State.SUCCEEDED, b: State.RUNNING}


def test_record_late(store: SQLiteStore):
    (job_id,) = submit(store)
    start(store, job_id)
    store.record_late(job_id, 1, "answered after restart")
    assert store.get(job_id).attempts[0].late == "answered after restart"


SCHEDULE = (0.5, 1.0, 2.0, 4.0, 4.0, 4.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_retry_schedule_through_the_store(store: SQLiteStore, seed: int):
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
def test_cancel_waiting_job(store: SQLiteStore, make_pending: bool):
    (job_id,) = submit(store, spec(run_at=T0 + 50 if make_pending else None))
    job = store.cancel(job_id, T0 + 1)
    assert job.state is State.CANCELLED
    assert (job.finished_at, job.error) == (T0 + 1, "cancelled")
    assert store.fetch_ready(10) == []
    assert store.promote_due(T0 + 100) == 0


def test_cancel_running_job_closes_its_attempt(store: SQLiteStore):
    (job_id,) = submit(store)
    start(store, job_id)
    job = store.cancel(job_id, T0 + 3)
    assert job.state is State.CANCELLED
    assert job.attempts[0].outcome is Outcome.CANCELLED
    assert job.attempts[0].finished_at == T0 + 3
    assert store.running_jobs() == []
    assert store.expired_leases(T0 + 1000) == []


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.FAILED])
def test_cancel_finished_job_is_refused(store: SQLiteStore, outcome: Outcome):
    (job_id,) = submit(store, spec(retry=RetryPolicy(retries=0)))
    job = start(store, job_id)
    store.finish_attempts([decide(job, outcome, now=T0 + 1)], T0 + 1)
    state = store.get(job_id).state
    assert state.terminal
    with pytest.raises(InvalidTransition, match=f"a {state.value} job cannot become cancelled"):
        store.cancel(job_id, T0 + 2)
    assert store.get(job_id).state is state


def test_cancel_twice_is_refused(store: SQLiteStore):
    (job_id,) = submit(store)
    store.cancel(job_id, T0)
    with pytest.raises(InvalidTransition):
        store.cancel(job_id, T0)


def test_cancel_and_requeue_unknown_job(store: SQLiteStore):
    with pytest.raises(JobNotFound):
        store.cancel(99, T0)
    with pytest.raises(JobNotFound):
        store.requeue(99, T0)


def test_requeue_dead_job_resets_failures(store: SQLiteStore):
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


def test_requeue_succeeded_and_cancelled_jobs(store: SQLiteStore):
    done, cancelled = submit(store, spec(), spec())
    job = start(store, done)
    store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0, result_json="5")], T0)
    store.cancel(cancelled, T0)
    assert store.requeue(done, T0 + 1).result is None
    assert store.requeue(cancelled, T0 + 1).state is State.QUEUED
    assert store.counts()["queued"] == 2


@pytest.mark.parametrize("state", [State.RUNNING, State.QUEUED, State.PENDING])
def test_requeue_of_live_job_is_refused(store: SQLiteStore, state: State):
    (job_id,) = submit(store, spec(run_at=T0 + 100 if state is State.PENDING else None))
    if state is State.RUNNING:
        start(store, job_id)
    with pytest.raises(InvalidTransition, match=f"job {job_id} is {state.value}"):
        store.requeue(job_id, T0 + 1)
    assert store.get(job_id).state is state


# -- leases -----------------------------------------------------------------------------------


def test_renew_and_expire_leases(store: SQLiteStore):
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


def test_renew_leases_ignores_finished_jobs(store: SQLiteStore):
    (job_id,) = submit(store)
    job = start(store, job_id, "w1")
    store.finish_attempts([decide(job, Outcome.SUCCEEDED, now=T0)], T0)
    assert store.renew_leases("w1", T0 + 500) == 0
    assert store.expired_leases(T0 + 1000) == []


# -- reads ------------------------------------------------------------------------------------


def test_counts_lists_every_state(store: SQLiteStore):
    assert store.counts() == {s.value: 0 for s in State}
    a, b, _ = submit(store, spec(), spec(), spec(run_at=T0 + 9))
    start(store, a)
    store.cancel(b, T0)
    assert store.counts() == {"pending": 1, "queued": 0, "running": 1, "succeeded": 0, "dead": 0,
                              "cancelled": 1}


def test_states_of(store: SQLiteStore):
    ids = [j.id for j in store.submit_many([spec() for _ in range(1200)], T0)]
    store.cancel(ids[700], T0)
    states = store.states_of([*ids, 999_999])
    assert len(states) == 1200  # more than one 500-id chunk; the unknown id is left out
    assert states[ids[700]] is State.CANCELLED
    assert states[ids[0]] is State.QUEUED
    assert store.states_of([]) == {}


def test_list_jobs_filters(store: SQLiteStore):
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


def test_list_jobs_pages_with_after_id(store: SQLiteStore):
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


def test_list_jobs_omits_attempt_history_get_includes_it(store: SQLiteStore):
    (job_id,) = submit(store)
    start(store, job_id)
    assert store.list_jobs()[0].attempts == ()
    assert len(store.get(job_id).attempts) == 1
    assert store.get(job_id, attempts=False).attempts == ()


def test_changed_sees_commits_of_other_connections(db_path: Path, store: SQLiteStore):
    other = SQLiteStore(db_path)
    try:
        store.changed()
        assert store.changed() is False
        submit(other)
        assert store.changed() is True
        assert store.changed() is False
    finally:
        other.close()


@pytest.mark.timeout(30)
def test_write_blocked_past_busy_timeout_is_store_unavailable(db_path: Path):
    s = SQLiteStore(db_path, busy_timeout=0.2)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        submit(s)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="is unavailable: database is locked"):
            submit(s)
        assert s.counts()["queued"] == 1  # WAL: reads go on while another connection writes
        blocker.execute("ROLLBACK")
        submit(s)  # usable again once the lock is gone
        assert s.counts()["queued"] == 2
    finally:
        blocker.close()
        s.close()


def test_stats_and_per_worker(store: SQLiteStore):
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


def test_upsert_workers_marks_absent_workers_gone(store: SQLiteStore):
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


def test_upsert_workers_revives_a_returning_worker(store: SQLiteStore):
    store.upsert_workers([worker_record("zeta", "tcp://z:1")], T0)
    store.upsert_workers([], T0 + 1)
    store.upsert_workers([worker_record("zeta", "tcp://z:1", status="running")], T0 + 2)
    (w,) = store.list_workers()
    assert (w.status, w.last_seen) == ("running", T0)


# -- schema -----------------------------------------------------------------------------------


def test_schema_version_recorded(store: SQLiteStore):
    assert store.schema_version() == len(SQLITE_MIGRATIONS)


def test_reopening_keeps_data_and_does_not_rerun_migrations(db_path: Path, monkeypatch):
    probe = ["CREATE TABLE IF NOT EXISTS probe (n INTEGER)", "INSERT INTO probe VALUES (1)"]
    extra = [*SQLITE_MIGRATIONS, probe]
    monkeypatch.setattr(sqlite_module, "SQLITE_MIGRATIONS", extra)
    first = SQLiteStore(db_path)
    (job_id,) = submit(first)
    assert first.schema_version() == len(extra)
    first.close()
    for _ in range(2):
        again = SQLiteStore(db_path)
        assert again.schema_version() == len(extra)
        assert again.get(job_id).state is State.QUEUED
        again.close()
    assert row_count(db_path, "probe") == 1  # migration 2 ran exactly once


def test_older_store_is_upgraded(db_path: Path, monkeypatch):
    SQLiteStore(db_path).close()  # at the current version
    extra = [*SQLITE_MIGRATIONS, ["CREATE TABLE added_later (x TEXT)"]]
    monkeypatch.setattr(sqlite_module, "SQLITE_MIGRATIONS", extra)
    upgraded = SQLiteStore(db_path)
    try:
        assert upgraded.schema_version() == len(SQLITE_MIGRATIONS) + 1
        assert row_count(db_path, "added_later") == 0
    finally:
        upgraded.close()


def test_store_with_newer_schema_is_refused(db_path: Path):
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(len(SQLITE_MIGRATIONS) + 1),))
    with pytest.raises(StoreUnavailable, match="newer than this clusterai"):
        SQLiteStore(db_path)


def test_unopenable_file_is_store_unavailable(tmp_path: Path):
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="cannot open SQLite store"):
        SQLiteStore(not_a_db)


# -- open_store -------------------------------------------------------------------------------


def _open(url) -> SQLiteStore:
    s = open_store(url)
    assert isinstance(s, SQLiteStore)
    return s


def test_open_store_relative_url(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _open("sqlite:///sub/rel.db")
    s.close()
    assert s.path == "sub/rel.db"
    assert (tmp_path / "sub" / "rel.db").is_file()
    assert s.url == "sqlite:///sub/rel.db"


def test_open_store_absolute_url(tmp_path: Path):
    target = tmp_path / "abs" / "x.db"
    url = f"sqlite:///{target}"  # tmp_path is absolute: sqlite:////tmp/...
    assert url.startswith("sqlite:////")
    s = _open(url)
    s.close()
    assert s.path == str(target)
    assert target.is_file()
    assert s.url == url  # the URL round-trips


def test_open_store_plain_path(tmp_path: Path):
    s = _open(tmp_path / "plain.db")
    s.close()
    assert s.path == str(tmp_path / "plain.db")
    assert (tmp_path / "plain.db").is_file()


def test_open_store_in_memory():
    s = _open("sqlite://:memory:")
    try:
        assert s.path == ":memory:"
        assert s.schema_version() == len(SQLITE_MIGRATIONS)
    finally:
        s.close()


@pytest.mark.parametrize("url", ["mysql://host/db", "redis://localhost:6379/0", "http://x/y.db"])
def test_open_store_unknown_scheme(url: str):
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_store(url)


@pytest.mark.parametrize("url", ["postgresql://user@host/db", "postgres://host/db"])
def test_open_store_postgres_not_yet(url: str):
    with pytest.raises(ConfigError, match="PostgreSQL backend is not part of this build"):
        open_store(url)


def test_get_many_keeps_the_order_asked_and_refuses_unknown_ids(store):
    ids = submit(store, *[spec(payload={"n": i}) for i in range(1203)])
    wanted = list(reversed(ids))
    assert [j.id for j in store.get_many(wanted)] == wanted
    assert store.get_many(wanted)[0].payload == {"n": 1202}
    with pytest.raises(JobNotFound):
        store.get_many([ids[0], 999_999])


def test_event_log_records_each_change_in_commit_order_and_prunes_by_age_and_count(tmp_path):
    store = open_store(tmp_path / "events.db")
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
