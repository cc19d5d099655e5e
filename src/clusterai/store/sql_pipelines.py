"""Pipeline runs, the stage jobs they link, and camera count series, in the job store."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from clusterai.core.chunks import chunked
from clusterai.core.model import CountPoint, Job, JobSpec, RunRecord, State, scoped_key
from clusterai.errors import RunNotFound
from clusterai.store.sql_events import job_events
from clusterai.store.sql_where import listing_where

_RUN_COLUMNS = "id, name, spec, input, state, fresh, problems, owner, created_at, updated_at, finished_at"
_COUNT_COLUMNS = "job_id, camera, frame, video_time, at, total, left_to_right, right_to_left"


def _key(spec: JobSpec) -> str | None:
    return scoped_key(spec.owner, spec.idempotency_key)


def _row_to_run(row: Sequence[Any]) -> RunRecord:
    id_, name, spec, input_, state, fresh, problems, owner, created, updated, finished = row
    return RunRecord(id=id_, name=name, spec=json.loads(spec), input=json.loads(input_), state=state,
                     fresh=bool(fresh), problems=json.loads(problems) if problems else {}, owner=owner,
                     created_at=created, updated_at=updated, finished_at=finished)


class PipelineTables:
    """Mixed into SqlStore, whose `_write`, `_read`, `_insert_ids` and `_insert_jobs` it uses."""

    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _insert_ids: Callable[[Any, str, Sequence[tuple[Any, ...]]], list[int]]
    _insert_jobs: Callable[[Any, Sequence[JobSpec], float], list[Job]]
    _stored_by_key: Callable[[Any, Sequence[JobSpec]], dict[str, Job]]
    _unscoped_keys: Callable[[Any, Sequence[JobSpec]], dict[tuple[str | None, str], tuple[int, str]]]
    _insert_plain: Callable[[Any, Sequence[JobSpec], float], list[Job]]
    _one_writer: bool

    # -- runs ---------------------------------------------------------------------------------

    def create_run(self, name: str, spec: dict[str, Any], run_input: dict[str, Any], now: float, *,
                   owner: str | None = None, fresh: bool = False) -> int:
        with self._write() as cur:
            return self._insert_ids(
                cur, "INSERT INTO pipeline_runs (name, spec, input, state, fresh, owner, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(name, json.dumps(spec), json.dumps(run_input), "running", int(fresh), owner, now, now)],
            )[0]

    def get_run(self, run_id: int) -> RunRecord:
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM pipeline_runs WHERE id=?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return _row_to_run(rows[0])

    def list_runs(self, *, name: str | None = None, state: str | None = None, limit: int = 50,
                  before_id: int | None = None) -> list[RunRecord]:
        clause, params = listing_where((("name", name), ("state", state)), before_id)
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM pipeline_runs {clause} ORDER BY id DESC LIMIT ?",
                          (*params, limit))
        return [_row_to_run(r) for r in rows]

    def active_runs(self) -> list[int]:
        return [r[0] for r in self._read("SELECT id FROM pipeline_runs WHERE state='running' ORDER BY id")]

    def run_head(self, run_id: int) -> tuple[str, float, float]:
        """A run's state, created_at and updated_at (every write to the run or its links moves
        it), without its spec and input: what an advancer that keeps the run in memory checks."""
        rows = self._read("SELECT state, created_at, updated_at FROM pipeline_runs WHERE id=?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return rows[0][0], rows[0][1], rows[0][2]

    def run_jobs(self, run_id: int) -> list[tuple[str, int, int, State, str | None, float]]:
        """(stage, item, job id, job state, error, job created_at) of every stage job of a run."""
        rows = self._read(
            "SELECT p.stage, p.item, j.id, j.state, j.error, j.created_at FROM pipeline_jobs p"
            " JOIN jobs j ON j.id = p.job_id WHERE p.run_id=?", (run_id,))
        return [(stage, item, job_id, State(state), error, created) for stage, item, job_id, state, error, created
                in rows]

    def runs_of(self, job_ids: Sequence[int]) -> dict[int, int]:
        """job id -> the pipeline run that made it (the first run linked to it: a later run on the same
        input finds the job again by key); jobs of no run are left out."""
        out: dict[int, int] = {}
        ids = list(dict.fromkeys(job_ids))
        for chunk in chunked(ids):
            marks = ",".join("?" * len(chunk))
            for job_id, run_id in self._read(f"SELECT job_id, MIN(run_id) FROM pipeline_jobs WHERE job_id IN ({marks})"
                                             " GROUP BY job_id", chunk):
                out[job_id] = run_id
        return out

    def job_results(self, job_ids: Sequence[int]) -> dict[int, Any]:
        out: dict[int, Any] = {}
        ids = list(dict.fromkeys(job_ids))
        for chunk in chunked(ids):
            marks = ",".join("?" * len(chunk))
            for job_id, result in self._read(f"SELECT id, result FROM jobs WHERE id IN ({marks})", chunk):
                out[job_id] = json.loads(result) if result is not None else None
        return out

    def add_run_jobs(self, run_id: int, entries: Sequence[tuple[str, int, JobSpec]], now: float) -> list[Job]:
        """Create (or find, by idempotency key) the stage jobs and link them to the run, in one
        transaction. A dead or cancelled job found by its key is queued again: this run wants it."""
        with self._write() as cur:
            specs = [spec for _, _, spec in entries]
            stored = self._stored_by_key(cur, specs)  # found again (reused): looked up together
            new = [s for s in specs if _key(s) not in stored]
            if self._one_writer and new:  # the keys still free can go in together, with one statement
                legacy = self._unscoped_keys(cur, new)
                free: dict[str, JobSpec] = {}
                for s in new:
                    if (key := _key(s)) is not None and (s.owner, s.idempotency_key) not in legacy:
                        free.setdefault(key, s)
                stored.update(zip(free, self._insert_plain(cur, list(free.values()), now)))
                new = [s for s in new if _key(s) not in stored]
            made = iter(self._insert_jobs(cur, new, now))  # one by one: keys stored before scoping
            jobs = [stored[key] if (key := _key(spec)) in stored else next(made) for spec in specs]
            cur.executemany(
                "INSERT INTO pipeline_jobs (run_id, stage, item, job_id) VALUES (?,?,?,?)"
                " ON CONFLICT (run_id, stage, item) DO NOTHING",
                [(run_id, stage, item, job.id) for (stage, item, _), job in zip(entries, jobs)],
            )
            again = [job for job in jobs if job.state in (State.DEAD, State.CANCELLED)]
            if again:
                cur.executemany(
                    "UPDATE jobs SET state='queued', failures=0, lost_count=0, run_at=?, updated_at=?,"
                    " finished_at=NULL, result=NULL, error=NULL WHERE id=? AND state IN ('dead','cancelled')",
                    [(now, now, job.id) for job in again],
                )
                job_events(cur, now, [(job.id, "queued", None, f"requeued by pipeline run {run_id}")
                                      for job in again])
            cur.execute("UPDATE pipeline_runs SET updated_at=? WHERE id=?", (now, run_id))
        return jobs

    def unlink_run_jobs(self, run_id: int, now: float) -> None:
        """Forget which jobs a run's stages are (to plan it again: unchanged stages find their
        jobs again by key; stages whose input changed get new ones)."""
        with self._write() as cur:
            cur.execute("DELETE FROM pipeline_jobs WHERE run_id=?", (run_id,))
            cur.execute("UPDATE pipeline_runs SET updated_at=? WHERE id=?", (now, run_id))

    def update_run(self, run_id: int, state: str, problems: dict[str, str], now: float, *,
                   expected: str | None = None) -> bool:
        """Set a run's state; with `expected`, only if it is still in that state (two processes
        advancing one run, or a cancel racing an advance: the later, staler write loses)."""
        finished = now if state != "running" else None
        guard, params = ("", ()) if expected is None else (" AND state=?", (expected,))
        with self._write() as cur:
            cur.execute(
                f"UPDATE pipeline_runs SET state=?, problems=?, updated_at=?, finished_at=? WHERE id=?{guard}",
                (state, json.dumps(problems) if problems else None, now, finished, run_id, *params),
            )
            return bool(cur.rowcount)

    # -- camera counts ------------------------------------------------------------------------

    def add_count_points(self, points: Sequence[CountPoint]) -> None:
        """A point already stored (a resumed job re-reporting a frame) is kept as it was."""
        if not points:
            return
        with self._write() as cur:
            cur.executemany(
                f"INSERT INTO counts ({_COUNT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT (job_id, frame) DO NOTHING",
                [(p.job_id, p.camera, p.frame, p.video_time, p.at, p.total, p.left_to_right, p.right_to_left)
                 for p in points],
            )

    def list_count_points(self, *, job_id: int | None = None, camera: str | None = None, since: float | None = None,
                    until: float | None = None, limit: int = 1000) -> list[CountPoint]:
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (("job_id=?", job_id), ("camera=?", camera), ("at>=?", since), ("at<?", until)):
            if value is not None:
                where.append(clause)
                params.append(value)
        text = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT {_COUNT_COLUMNS} FROM counts {text} ORDER BY at, job_id, frame LIMIT ?",
                          (*params, limit))
        return [CountPoint(*r) for r in rows]

    def count_series(self) -> list[dict[str, Any]]:
        """One line per camera job: its latest totals."""
        rows = self._read(
            f"SELECT {_COUNT_COLUMNS} FROM counts c WHERE frame = (SELECT MAX(frame) FROM counts d"
            " WHERE d.job_id = c.job_id) ORDER BY job_id")
        out = []
        for row in rows:
            point = CountPoint(*row)
            points = self._read("SELECT COUNT(*), MIN(at) FROM counts WHERE job_id=?", (point.job_id,))[0]
            out.append({**point.to_dict(), "points": points[0], "first_at": points[1]})
        return out
