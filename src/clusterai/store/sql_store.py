"""The job store's SQL, shared by the SQLite and PostgreSQL backends.

Statements are written once, with `?` placeholders and SQLite's `INDEXED BY` hints; the PostgreSQL
backend translates both (its planner has statistics and needs no hint). Each backend supplies the
connection plumbing (`_write`, `_read`) and the few spots where the dialects differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from clusterai.core.chunks import chunked
from clusterai.core.model import (
    Attempt,
    AuditEntry,
    Finish,
    Job,
    JobSpec,
    Outcome,
    Priority,
    RetryPolicy,
    State,
    check_transition,
    plain_key,
    scoped_key,
)
from clusterai.errors import IdempotencyConflict, InvalidTransition, JobNotFound, StoreUnavailable
from clusterai.store.sql_access import AccessTables
from clusterai.store.sql_autoscale import AutoscaleTables
from clusterai.store.sql_events import EventTables, job_events
from clusterai.store.sql_pipelines import PipelineTables
from clusterai.store.sql_sweeps import SweepTables
from clusterai.store.sql_workers import WorkerTables

_JOB_COLUMNS = (
    "id, task, queue, priority, state, payload, idempotency_key, run_at, created_at, updated_at,"
    " attempt, failures, lost_count, retries, backoff, max_backoff, jitter, timeout, resources,"
    " labels, worker, result, error, finished_at, prefers, waiting, owner"
)


def _row_to_job(row: Sequence[Any], attempts: tuple[Attempt, ...] = ()) -> Job:
    (id_, task, queue, priority, state, payload, key, run_at, created, updated, attempt,
     failures, lost, retries, backoff, max_backoff, jitter, timeout, resources, labels,
     worker, result, error, finished, prefers, waiting, owner) = row
    return Job(
        id=id_, task=task, queue=queue, priority=Priority(priority), state=State(state),
        payload=json.loads(payload), created_at=created, updated_at=updated, run_at=run_at,
        attempt=attempt, failures=failures, lost_count=lost,
        retry=RetryPolicy(retries=retries, backoff=backoff, max_backoff=max_backoff, jitter=jitter),
        timeout=timeout, idempotency_key=plain_key(owner, key),
        resources=json.loads(resources) if resources else {},
        labels=json.loads(labels) if labels else {},
        prefers=json.loads(prefers) if prefers else {}, waiting=waiting,
        worker=worker, result=json.loads(result) if result is not None else None,
        error=error, finished_at=finished, attempts=attempts, owner=owner,
    )


class SqlStore(WorkerTables, EventTables, AccessTables, PipelineTables, AutoscaleTables, SweepTables):
    """Everything but the connection plumbing; see the backends."""

    url: str
    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]
    # insert rows; the new ids in row order (none for a row skipped by ON CONFLICT); per backend
    _insert_ids: Callable[[Any, str, Sequence[tuple[Any, ...]]], list[int]]
    # how a claim skips rows another transaction holds (PostgreSQL); SQLite has one writer anyway
    _skip_locked = ""
    _one_writer = True  # a write transaction is the only writer: a key it found free stays free until it commits
    # the start of a row's minute, as an integer number of seconds
    _minute_of_finish = "CAST(finished_at / 60 AS INTEGER) * 60"

    def _apply_migrations(self, cur: Any, migrations: Sequence[Sequence[str]]) -> None:
        """Bring the schema up to date inside the caller's transaction; one version number per
        migration, the same on every backend."""
        cur.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = cur.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > len(migrations):
            raise StoreUnavailable(
                f"store {self.url} has schema {version}, newer than this clusterai ({len(migrations)}); "
                "upgrade clusterai"
            )
        for number, script in enumerate(migrations[version:], start=version + 1):
            for statement in script:
                cur.execute(statement)
            cur.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(number),),
            )

    def schema_version(self) -> int:
        return int(self._read("SELECT value FROM meta WHERE key='schema_version'")[0][0])

    # -- submission and reads -----------------------------------------------------------------

    def submit_many(self, specs: Sequence[JobSpec], now: float, audit: AuditEntry | None = None) -> list[Job]:
        """Store every job or none; with `audit`, the audit record commits in the same transaction."""
        return self.submit_groups([(specs, audit)], now)[0]

    def submit_groups(self, groups: Sequence[tuple[Sequence[JobSpec], AuditEntry | None]], now: float
                      ) -> list[list[Job]]:
        """Several submissions in one transaction (the API's group commit): all stored, or none."""
        out = []
        with self._write() as cur:
            for specs, audit in groups:
                jobs = self._insert_jobs(cur, specs, now)
                if audit is not None:
                    self._audit(cur, audit, now)
                out.append(jobs)
        return out

    def _insert_jobs(self, cur: Any, specs: Sequence[JobSpec], now: float) -> list[Job]:
        jobs: list[Job] = []
        plain: list[JobSpec] = []  # jobs without an idempotency key go in with one executemany
        legacy = self._unscoped_keys(cur, specs)
        for spec in specs:
            if spec.idempotency_key is None:
                plain.append(spec)
                continue
            jobs += self._insert_plain(cur, plain, now)
            plain = []
            existing = legacy.get((spec.owner, spec.idempotency_key))
            if existing is None:
                # ON CONFLICT rather than look-then-insert: two writers with one key (possible on
                # PostgreSQL) then agree on one job instead of one of them failing
                inserted = self._insert_plain(cur, [spec], now,
                                              on_conflict=" ON CONFLICT (idempotency_key) DO NOTHING")
                if inserted:
                    jobs += inserted
                    continue
                existing = cur.execute("SELECT id, fingerprint FROM jobs WHERE idempotency_key=?",
                                       (scoped_key(spec.owner, spec.idempotency_key),)).fetchone()
            if existing[1] != spec.fingerprint:
                raise IdempotencyConflict(spec.idempotency_key, existing[0])
            jobs.append(_row_to_job(cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?",
                                                (existing[0],)).fetchone()))
        return jobs + self._insert_plain(cur, plain, now)

    def _stored_by_key(self, cur: Any, specs: Sequence[JobSpec]) -> dict[str, Job]:
        """Stored key -> job, for the specs whose idempotency key already names a job (a pipeline
        run's stage jobs found again: one query per ID_CHUNK keys instead of three per job). Raises
        IdempotencyConflict, as submitting them would, where the stored job's payload differs."""
        wanted = {scoped_key(s.owner, s.idempotency_key): s for s in specs if s.idempotency_key is not None}
        found: dict[str, Job] = {}
        for chunk in chunked(sorted(k for k in wanted if k is not None)):
            rows = cur.execute(f"SELECT fingerprint, {_JOB_COLUMNS} FROM jobs WHERE idempotency_key IN"
                               f" ({','.join('?' * len(chunk))})", chunk).fetchall()
            for fingerprint, *row in rows:
                spec = wanted[row[6]]  # the column as stored: the scoped key
                if fingerprint != spec.fingerprint:
                    raise IdempotencyConflict(spec.idempotency_key or "", row[0])
                found[row[6]] = _row_to_job(row)
        return found

    def _unscoped_keys(self, cur: Any, specs: Sequence[JobSpec]) -> dict[tuple[str | None, str], tuple[int, str]]:
        """(owner, key) -> (id, fingerprint) of jobs stored with an owner before keys were scoped by
        owner (their column holds the plain key): their owner's same key still finds them. One
        query per ID_CHUNK keys, and none for a submission without keys."""
        wanted = sorted({s.idempotency_key for s in specs if s.idempotency_key is not None and s.owner is not None})
        found: dict[tuple[str | None, str], tuple[int, str]] = {}
        for chunk in chunked(wanted):
            rows = cur.execute(f"SELECT idempotency_key, owner, id, fingerprint FROM jobs WHERE idempotency_key IN"
                               f" ({','.join('?' * len(chunk))}) AND owner IS NOT NULL", chunk).fetchall()
            found.update({(owner, key): (id_, fingerprint) for key, owner, id_, fingerprint in rows})
        return found

    def _insert_plain(self, cur: Any, specs: Sequence[JobSpec], now: float, on_conflict: str = "") -> list[Job]:
        if not specs:
            return []
        rows = []
        for spec in specs:
            run_at = spec.run_at if spec.run_at is not None else now
            rows.append((spec.task, spec.queue, int(spec.priority),
                         State.PENDING.value if run_at > now else State.QUEUED.value, spec.payload_json,
                         spec.fingerprint if spec.idempotency_key else None,
                         scoped_key(spec.owner, spec.idempotency_key),
                         run_at, now, now, spec.retry.retries, spec.retry.backoff, spec.retry.max_backoff,
                         spec.retry.jitter, spec.timeout,
                         json.dumps(spec.resources) if spec.resources else None,
                         json.dumps(spec.labels) if spec.labels else None,
                         json.dumps(spec.prefers) if spec.prefers else None, spec.owner))
        ids = self._insert_ids(
            cur,
            "INSERT INTO jobs (task, queue, priority, state, payload, fingerprint, idempotency_key, run_at,"
            " created_at, updated_at, retries, backoff, max_backoff, jitter, timeout, resources, labels,"
            " prefers, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)" + on_conflict,
            rows,
        )
        if not ids:
            return []
        jobs = [
            Job(id=id_, task=spec.task, queue=spec.queue, priority=spec.priority,
                state=State.QUEUED if row[3] == "queued" else State.PENDING, payload=spec.payload,
                created_at=now, updated_at=now, run_at=row[7],
                attempt=0, failures=0, lost_count=0, retry=spec.retry, timeout=spec.timeout,
                idempotency_key=spec.idempotency_key, resources=spec.resources, labels=spec.labels,
                prefers=spec.prefers, owner=spec.owner)
            for id_, spec, row in zip(ids, specs, rows)
        ]
        job_events(cur, now, [(j.id, j.state.value, None, None) for j in jobs])
        return jobs

    def get(self, job_id: int, *, attempts: bool = True) -> Job:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        history: tuple[Attempt, ...] = ()
        if attempts:
            history = tuple(
                Attempt(n, w, s, f, Outcome(o) if o else None, e, late)
                for n, w, s, f, o, e, late in self._read(
                    "SELECT number, worker, started_at, finished_at, outcome, error, late"
                    " FROM attempts WHERE job_id=? ORDER BY number",
                    (job_id,),
                )
            )
        return _row_to_job(rows[0], history)

    def list_jobs(
        self,
        *,
        state: State | None = None,
        task: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        owner: str | None = None,
        since: float | None = None,
        until: float | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        newest_first: bool = False,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs matching every filter given; `since`/`until` bound the creation time. Oldest first
        (page with `after_id`), or newest first (page with `before_id`)."""
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (("state=?", state.value if state else None), ("task=?", task),
                              ("queue=?", queue), ("worker=?", worker), ("owner=?", owner),
                              ("created_at>=?", since), ("created_at<?", until), ("id>?", after_id),
                              ("id<?", before_id)):
            if value is not None:
                where.append(clause)
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else ""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs {clause} ORDER BY id {order} LIMIT ?", (*params, limit)
        )
        return [_row_to_job(r) for r in rows]

    def get_many(self, job_ids: Sequence[int]) -> list[Job]:
        """Jobs by id, in the order asked, without their attempt history."""
        found = self._by_ids(job_ids)
        missing = [i for i in job_ids if i not in found]
        if missing:
            raise JobNotFound(missing[0])
        return [found[i] for i in job_ids]

    def get_many_found(self, job_ids: Sequence[int]) -> list[Job]:
        """The jobs of these ids that exist, in the order asked."""
        found = self._by_ids(job_ids)
        return [found[i] for i in dict.fromkeys(job_ids) if i in found]

    def _by_ids(self, job_ids: Sequence[int]) -> dict[int, Job]:
        found: dict[int, Job] = {}
        ids = list(job_ids)
        for chunk in chunked(ids):
            marks = ",".join("?" * len(chunk))
            for row in self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", chunk):
                found[row[0]] = _row_to_job(row)
        return found

    def states_of(self, job_ids: Sequence[int]) -> dict[int, State]:
        out: dict[int, State] = {}
        ids = list(job_ids)
        for chunk in chunked(ids):
            marks = ",".join("?" * len(chunk))
            for id_, state in self._read(f"SELECT id, state FROM jobs WHERE id IN ({marks})", chunk):
                out[id_] = State(state)
        return out

    def job_counts(self) -> dict[str, int]:
        found = dict(self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        return {s.value: found.get(s.value, 0) for s in State}

    def unfinished_of(self, owner: str) -> int:
        """Jobs of `owner` not finished yet (pending, queued or running): the API's quota per token.
        Through the (state, id) index: it reads the unfinished jobs, not the owner's whole history."""
        return int(self._read(
            "SELECT COUNT(*) FROM jobs INDEXED BY jobs_state WHERE state IN ('pending','queued','running')"
            " AND owner=?", (owner,))[0][0])

    # -- the coordinator's side ---------------------------------------------------------------

    def promote_due(self, now: float) -> int:
        with self._write() as cur:
            ids = cur.execute(
                "UPDATE jobs INDEXED BY jobs_pending SET state='queued', updated_at=?"
                " WHERE state='pending' AND run_at<=? RETURNING id",
                (now, now),
            ).fetchall()
            job_events(cur, now, [(i, "queued", None, None) for (i,) in ids])
            return len(ids)

    def next_due_at(self) -> float | None:
        return self._read("SELECT MIN(run_at) FROM jobs INDEXED BY jobs_pending WHERE state='pending'")[0][0]

    def fetch_ready(self, limit: int) -> list[Job]:
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_queued WHERE state='queued'"
            " ORDER BY priority DESC, id LIMIT ?",
            (limit,),
        )
        return [_row_to_job(r) for r in rows]

    def start_attempts(
        self, assignments: Sequence[tuple[int, str]], now: float, lease_until: float
    ) -> list[Job]:
        with self._write() as cur:
            rows = self._each(
                cur,
                "UPDATE jobs SET state='running', attempt=attempt+1, worker=?, lease_until=?, waiting=NULL,"
                f" updated_at=? WHERE id=? AND state='queued' RETURNING {_JOB_COLUMNS}",
                [(worker, lease_until, now, job_id) for job_id, worker in assignments],
            )
            # a missing row: cancelled (or taken) since it was fetched
            started = [_row_to_job(row) for row in rows if row is not None]
            cur.executemany(
                "INSERT INTO attempts (job_id, number, worker, started_at) VALUES (?,?,?,?)",
                [(j.id, j.attempt, j.worker, now) for j in started],
            )
            job_events(cur, now, [(j.id, "running", j.worker, f"attempt {j.attempt}") for j in started])
        return started

    def claim(self, worker: str, limit: int, now: float, lease_until: float) -> list[Job]:
        """Take up to `limit` ready jobs for `worker` in priority order, as one atomic step: any
        number of claimers may call this at once and no job is taken twice."""
        with self._write() as cur:
            # The pick is a MATERIALIZED CTE, run once. As `id IN (subquery)` PostgreSQL may rescan the
            # subquery for each outer row, and a rescan skips the rows this UPDATE already changed and
            # locks the next ones: more than `limit` jobs were claimed (and more rows locked).
            rows = cur.execute(
                "WITH picked AS MATERIALIZED (SELECT id FROM jobs INDEXED BY jobs_queued WHERE state='queued'"
                f" ORDER BY priority DESC, id LIMIT ?{self._skip_locked})"
                " UPDATE jobs SET state='running', attempt=attempt+1, worker=?, lease_until=?, waiting=NULL,"
                " updated_at=? WHERE id IN (SELECT id FROM picked) AND state='queued'"
                f" RETURNING {_JOB_COLUMNS}",
                (limit, worker, lease_until, now),
            ).fetchall()
            jobs = sorted((_row_to_job(r) for r in rows), key=lambda j: (-j.priority, j.id))
            cur.executemany(
                "INSERT INTO attempts (job_id, number, worker, started_at) VALUES (?,?,?,?)",
                [(j.id, j.attempt, worker, now) for j in jobs],
            )
            job_events(cur, now, [(j.id, "running", worker, f"attempt {j.attempt}") for j in jobs])
        return jobs

    def finish_attempts(self, finishes: Sequence[Finish], now: float) -> list[bool]:
        with self._write() as cur:
            # only the attempt that holds the lease (still running, same number) may finish the job
            updated = self._each(
                cur,
                "UPDATE jobs SET state=?, result=?, error=?, run_at=COALESCE(?, run_at),"
                " failures=?, lost_count=?, lease_until=NULL, updated_at=?, finished_at=?"
                " WHERE id=? AND attempt=? AND state='running' RETURNING id",
                [(f.state.value, f.result_json, f.error, f.run_at, f.failures, f.lost_count,
                  now, now if f.state.terminal else None, f.job_id, f.attempt) for f in finishes],
            )
            accepted = [row is not None for row in updated]
            done = [f for f, ok in zip(finishes, accepted) if ok]
            workers = self._each(
                cur,
                "UPDATE attempts SET finished_at=?, outcome=?, error=? WHERE job_id=? AND number=? RETURNING worker",
                [(now, f.outcome.value, f.error, f.job_id, f.attempt) for f in done],
            )
            cur.executemany(
                "UPDATE attempts SET late=? WHERE job_id=? AND number=?",
                [(_late_text(f, now), f.job_id, f.attempt) for f, ok in zip(finishes, accepted) if not ok],
            )
            job_events(cur, now, [(f.job_id, f.state.value, row[0] if row else None,
                                   f"attempt {f.attempt} {f.outcome.value}") for f, row in zip(done, workers)])
        return accepted

    def _each(self, cur: Any, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """Run a statement ending in RETURNING once per parameter row, in order; the row each
        returned, or None. (PostgreSQL sends them all in one pipeline.)"""
        return [cur.execute(sql, row).fetchone() for row in rows]

    def set_waiting(self, reasons: Mapping[int, str]) -> None:
        """Say why queued jobs could not be placed yet (shown by `jobs show`)."""
        with self._write() as cur:
            cur.executemany(
                "UPDATE jobs SET waiting=? WHERE id=? AND state='queued'",
                [(reason, job_id) for job_id, reason in reasons.items()],
            )

    def record_late(self, job_id: int, attempt: int, answer: str) -> None:
        with self._write() as cur:
            cur.execute(
                "UPDATE attempts SET late=? WHERE job_id=? AND number=?", (answer, job_id, attempt)
            )

    def renew_leases(self, worker: str, lease_until: float) -> int:
        with self._write() as cur:
            cur.execute(
                "UPDATE jobs INDEXED BY jobs_running SET lease_until=? WHERE state='running' AND worker=?",
                (lease_until, worker),
            )
            return cur.rowcount

    def expired_leases(self, now: float) -> list[Job]:
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_running WHERE state='running' AND lease_until<?",
            (now,),
        )
        return [_row_to_job(r) for r in rows]

    def running_jobs(self) -> list[Job]:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_running WHERE state='running'")
        return [_row_to_job(r) for r in rows]

    # -- operator actions ---------------------------------------------------------------------

    def cancel(self, job_id: int, now: float) -> Job:
        with self._write() as cur:
            row = cur.execute("SELECT state, attempt FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            state, attempt = State(row[0]), row[1]
            check_transition(state, State.CANCELLED)
            cur.execute(
                "UPDATE jobs SET state='cancelled', lease_until=NULL, updated_at=?, finished_at=?,"
                " error='cancelled' WHERE id=?",
                (now, now, job_id),
            )
            if state is State.RUNNING:
                cur.execute(
                    "UPDATE attempts SET finished_at=?, outcome='cancelled' WHERE job_id=? AND number=?",
                    (now, job_id, attempt),
                )
            job_events(cur, now, [(job_id, "cancelled", None, f"was {state.value}")])
        return self.get(job_id)

    def requeue(self, job_id: int, now: float) -> Job:
        with self._write() as cur:
            row = cur.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            state = State(row[0])
            if not state.terminal:
                raise InvalidTransition(
                    f"job {job_id} is {state.value}; only succeeded, dead or cancelled jobs "
                    "can be requeued"
                )
            cur.execute(
                "UPDATE jobs SET state='queued', failures=0, lost_count=0, run_at=?, updated_at=?,"
                " finished_at=NULL, result=NULL, error=NULL WHERE id=?",
                (now, now, job_id),
            )
            job_events(cur, now, [(job_id, "queued", None, f"requeued from {state.value}")])
        return self.get(job_id)

    def stats(self, since: float) -> dict[str, float]:
        done, first, last = self._read(
            "SELECT COUNT(*), MIN(finished_at), MAX(finished_at) FROM jobs"
            " WHERE state='succeeded' AND finished_at>=?",
            (since,),
        )[0]
        finished, failed = self._read(
            "SELECT COUNT(*),"
            " COALESCE(SUM(CASE WHEN outcome IN ('failed','timeout','lost','expired') THEN 1 ELSE 0 END), 0)"
            " FROM attempts WHERE finished_at>=?", (since,)
        )[0]
        retries = self._read("SELECT COALESCE(SUM(failures), 0) FROM jobs")[0][0]
        lost = self._read(
            "SELECT COUNT(*) FROM attempts WHERE outcome IN ('lost','expired','abandoned')"
        )[0][0]
        return {"succeeded": done, "first_finished": first or 0.0, "last_finished": last or 0.0,
                "failed_attempts": failed, "finished_attempts": finished, "retries": retries, "lost_attempts": lost}

    def queue_depths(self) -> list[tuple[str, int, str, int]]:
        """(queue, priority, state, jobs) for every job not finished yet."""
        return self._read(
            "SELECT queue, priority, state, COUNT(*) FROM jobs WHERE state IN ('pending','queued','running')"
            " GROUP BY queue, priority, state ORDER BY queue, priority DESC, state"
        )

    def backlog(self) -> list[tuple[str, str, dict[str, float], dict[str, str], str, int]]:
        """(queue, task, resources, labels, state, jobs) for the jobs queued or running: the demand
        the autoscaler sizes each profile for, grouped by what the jobs need."""
        rows = self._read(
            "SELECT queue, task, resources, labels, state, COUNT(*) FROM jobs WHERE state IN ('queued','running')"
            " GROUP BY queue, task, resources, labels, state")
        return [(queue, task, {k: float(v) for k, v in json.loads(resources or "{}").items()},
                 json.loads(labels or "{}"), state, int(count))
                for queue, task, resources, labels, state, count in rows]

    def job_history(self, since: float, until: float, limit: int = 200_000
                    ) -> list[tuple[float, float, dict[str, float], dict[str, str]]]:
        """(submitted at, seconds its last attempt ran, resources, labels) of the jobs that finished
        in [since, until), oldest first: what the predictive autoscaler learns demand from."""
        rows = self._read(
            "SELECT j.created_at, j.finished_at - a.started_at, j.resources, j.labels FROM jobs j"
            " JOIN attempts a ON a.job_id = j.id AND a.number = j.attempt"
            " WHERE j.finished_at >= ? AND j.finished_at < ? ORDER BY j.finished_at LIMIT ?",
            (since, until, limit))
        return [(float(created), max(float(ran or 0.0), 0.0),
                 {k: float(v) for k, v in json.loads(resources or "{}").items()}, json.loads(labels or "{}"))
                for created, ran, resources, labels in rows]

    def recent_latencies(self, since: float, limit: int = 10_000) -> list[tuple[float, float]]:
        """(seconds from submit to finish, seconds the last attempt ran) of the newest jobs that
        succeeded since `since`: the sample behind the status latency percentiles."""
        return self._read(
            "SELECT j.finished_at - j.created_at, j.finished_at - a.started_at FROM jobs j"
            " INDEXED BY jobs_finished JOIN attempts a ON a.job_id = j.id AND a.number = j.attempt"
            " WHERE j.finished_at >= ? AND j.state = 'succeeded' ORDER BY j.finished_at DESC LIMIT ?",
            (since, limit),
        )

    def per_minute(self, since: float) -> list[tuple[int, int, float]]:
        """(minute start, jobs that succeeded in it, their mean submit-to-finish seconds)."""
        rows = self._read(
            f"SELECT {self._minute_of_finish}, COUNT(*), AVG(finished_at - created_at)"
            " FROM jobs INDEXED BY jobs_finished WHERE finished_at >= ? AND state = 'succeeded' GROUP BY 1",
            (since,),
        )
        return [(int(minute), count, mean) for minute, count, mean in rows]

    def per_worker(self) -> dict[str, int]:
        """Accepted results per worker (by name where the registry knows it): who did the work."""
        return dict(self._read(
            "SELECT COALESCE(w.name || ' (' || j.worker || ')', j.worker), COUNT(*) FROM jobs j"
            " LEFT JOIN workers w ON w.address = j.worker WHERE j.state='succeeded'"
            " GROUP BY j.worker, w.name ORDER BY 1"
        ))


def _late_text(f: Finish, now: float) -> str:
    detail = f": {f.error}" if f.error else ""
    return f"{f.outcome.value} at {now:.3f} after the lease was lost; ignored{detail}"
