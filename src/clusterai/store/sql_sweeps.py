"""Sweeps, their trials (each linked to the job that runs it), the metrics trials report, and the
model registry (named models, numbered versions, aliases), in the job store."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from clusterai.core.chunks import chunked
from clusterai.core.model import Job, JobSpec
from clusterai.core.trials import ModelVersion, SweepRecord, TrialRecord
from clusterai.errors import RegistryNotFound, StoreUnavailable, SweepNotFound
from clusterai.store.sql_where import listing_where

_SWEEP_COLUMNS = "id, name, spec, state, owner, created_at, updated_at, finished_at, best, note"
_TRIAL_COLUMNS = "sweep_id, number, params, job_id, state, created_at, value, note, finished_at"
_MODEL_COLUMNS = "name, version, artifact, created_at, params, metrics, sweep_id, trial, job_id, created_by"


def _sweep(row: Sequence[Any]) -> SweepRecord:
    id_, name, spec, state, owner, created, updated, finished, best, note = row
    return SweepRecord(id=id_, name=name, spec=json.loads(spec), state=state, owner=owner, created_at=created,
                       updated_at=updated, finished_at=finished, best=best, note=note)


def _trial(row: Sequence[Any]) -> TrialRecord:
    sweep_id, number, params, job_id, state, created, value, note, finished = row
    return TrialRecord(sweep_id=sweep_id, number=number, params=json.loads(params), job_id=job_id, state=state,
                       created_at=created, value=value, note=note, finished_at=finished)


def _model(row: Sequence[Any], aliases: Sequence[str] = ()) -> ModelVersion:
    name, version, artifact, created, params, metrics, sweep_id, trial, job_id, by = row
    return ModelVersion(name=name, version=version, artifact=json.loads(artifact), created_at=created,
                        params=json.loads(params), metrics=json.loads(metrics), sweep_id=sweep_id, trial=trial,
                        job_id=job_id, created_by=by, aliases=tuple(sorted(aliases)))


class SweepTables:
    """Mixed into SqlStore, whose `_write`, `_read`, `_insert_ids` and `_insert_jobs` it uses."""

    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _insert_ids: Callable[[Any, str, Sequence[tuple[Any, ...]]], list[int]]
    _insert_jobs: Callable[[Any, Sequence[JobSpec], float], list[Job]]

    # -- sweeps -------------------------------------------------------------------------------

    def create_sweep(self, name: str, spec: Mapping[str, Any], now: float, *, owner: str | None = None) -> int:
        with self._write() as cur:
            return self._insert_ids(
                cur, "INSERT INTO sweeps (name, spec, state, owner, created_at, updated_at) VALUES (?,?,?,?,?,?)",
                [(name, json.dumps(spec, sort_keys=True), "running", owner, now, now)])[0]

    def get_sweep(self, sweep_id: int) -> SweepRecord:
        rows = self._read(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE id=?", (sweep_id,))
        if not rows:
            raise SweepNotFound(sweep_id)
        return _sweep(rows[0])

    def list_sweeps(self, *, state: str | None = None, owner: str | None = None, limit: int = 50,
                    before_id: int | None = None) -> list[SweepRecord]:
        clause, params = listing_where((("state", state), ("owner", owner)), before_id)
        rows = self._read(f"SELECT {_SWEEP_COLUMNS} FROM sweeps {clause} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_sweep(r) for r in rows]

    def active_sweeps(self) -> list[int]:
        return [r[0] for r in self._read("SELECT id FROM sweeps WHERE state='running' ORDER BY id")]

    def sweep_counts(self) -> dict[str, Any]:
        """For the metrics: sweeps by state, the trials of running sweeps by state, registered versions."""
        sweeps = {str(s): int(n) for s, n in self._read("SELECT state, COUNT(*) FROM sweeps GROUP BY state")}
        trials = {str(s): int(n) for s, n in self._read(
            "SELECT t.state, COUNT(*) FROM trials t JOIN sweeps s ON s.id = t.sweep_id WHERE s.state='running'"
            " GROUP BY t.state")}
        versions = int(self._read("SELECT COUNT(*) FROM models")[0][0])
        return {"sweeps": sweeps, "trials": trials, "model_versions": versions}

    def update_sweep(self, sweep_id: int, state: str, now: float, *, expected: str | None = None,
                     best: int | None = None, note: str | None = None,
                     register: ModelVersion | None = None) -> ModelVersion | bool:
        """Set a sweep's state (with `expected`: only if it still is in that state). With `register`, the
        best model's version is registered in the same transaction: a head that dies between the two
        cannot register it twice. Returns the registered version, or whether the sweep changed."""
        finished = None if state == "running" else now
        guard, extra = ("", ()) if expected is None else (" AND state=?", (expected,))
        with self._write() as cur:
            cur.execute(f"UPDATE sweeps SET state=?, best=?, note=?, updated_at=?, finished_at=? WHERE id=?{guard}",
                        (state, best, note, now, finished, sweep_id, *extra))
            if not cur.rowcount:
                return False
            if register is not None:
                version = self._insert_version(cur, register, now)
                cur.execute("UPDATE sweeps SET note=? WHERE id=?",
                            (f"registered {version.name} version {version.version}", sweep_id))
                return version
            return True

    # -- trials -------------------------------------------------------------------------------

    def add_trials(self, sweep_id: int, entries: Sequence[tuple[int, Mapping[str, Any], JobSpec]],
                   now: float) -> list[Job]:
        """Create the trials' jobs and the trials, in one transaction (a trial is never without its job).
        Nothing is made, and [] returned, once the sweep is no longer running (cancelled meanwhile)."""
        with self._write() as cur:
            cur.execute("UPDATE sweeps SET updated_at=? WHERE id=? AND state='running'", (now, sweep_id))
            if not cur.rowcount:
                return []
            jobs = self._insert_jobs(cur, [spec for _, _, spec in entries], now)
            cur.executemany(
                "INSERT INTO trials (sweep_id, number, params, job_id, state, created_at) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT (sweep_id, number) DO NOTHING",
                [(sweep_id, number, json.dumps(params, sort_keys=True), job.id, "running", now)
                 for (number, params, _), job in zip(entries, jobs)])
        return jobs

    def trials(self, sweep_id: int) -> list[TrialRecord]:
        rows = self._read(f"SELECT {_TRIAL_COLUMNS} FROM trials WHERE sweep_id=? ORDER BY number", (sweep_id,))
        return [_trial(r) for r in rows]

    def finish_trials(self, rows: Sequence[tuple[int, int, str, float | None, str | None]], now: float, *,
                      expected: str = "running") -> int:
        """(sweep, number, state, value, note) for trials still in state `expected`; how many changed."""
        if not rows:
            return 0
        changed = 0
        with self._write() as cur:
            for sweep_id, number, state, value, note in rows:
                cur.execute("UPDATE trials SET state=?, value=?, note=?, finished_at=? WHERE sweep_id=? AND number=?"
                            " AND state=?", (state, value, note, None if state == "running" else now, sweep_id,
                                             number, expected))
                changed += cur.rowcount
        return changed

    def trials_of_jobs(self, job_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """job id -> (sweep, trial number), for the jobs that are trials."""
        out: dict[int, tuple[int, int]] = {}
        for chunk in chunked(list(dict.fromkeys(job_ids))):
            marks = ",".join("?" * len(chunk))
            for job_id, sweep_id, number in self._read(
                    f"SELECT job_id, sweep_id, number FROM trials WHERE job_id IN ({marks})", chunk):
                out[job_id] = (sweep_id, number)
        return out

    def add_trial_metrics(self, rows: Sequence[tuple[int, int, int, Mapping[str, float], float]]) -> None:
        """(sweep, number, step, metrics, at); a step reported again (a resumed trial) replaces the old."""
        if not rows:
            return
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO trial_metrics (sweep_id, number, step, metrics, at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (sweep_id, number, step) DO UPDATE SET metrics=excluded.metrics, at=excluded.at",
                [(s, n, step, json.dumps(dict(m), sort_keys=True), at) for s, n, step, m, at in rows])

    def trial_metrics(self, sweep_id: int, number: int | None = None
                      ) -> dict[int, list[tuple[int, dict[str, float], float]]]:
        """trial number -> [(step, metrics, at)] in step order."""
        where, params = "sweep_id=?", [sweep_id]
        if number is not None:
            where, params = where + " AND number=?", [sweep_id, number]
        out: dict[int, list[tuple[int, dict[str, float], float]]] = {}
        for n, step, metrics, at in self._read(
                f"SELECT number, step, metrics, at FROM trial_metrics WHERE {where} ORDER BY number, step", params):
            out.setdefault(n, []).append((step, json.loads(metrics), at))
        return out

    # -- the model registry -------------------------------------------------------------------

    def register_model(self, version: ModelVersion, now: float) -> ModelVersion:
        """A new version of `version.name` (its number: one more than the last); `version.version` is ignored."""
        with self._write() as cur:
            return self._insert_version(cur, version, now)

    def _insert_version(self, cur: Any, v: ModelVersion, now: float) -> ModelVersion:
        for _ in range(20):
            row = cur.execute("SELECT MAX(version) FROM models WHERE name=?", (v.name,)).fetchone()
            number = int(row[0] or 0) + 1
            cur.execute(f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
                        " ON CONFLICT (name, version) DO NOTHING",
                        (v.name, number, json.dumps(v.artifact, sort_keys=True), now,
                         json.dumps(v.params, sort_keys=True), json.dumps(v.metrics, sort_keys=True), v.sweep_id,
                         v.trial, v.job_id, v.created_by))
            if cur.rowcount:
                break
            # another head registered this number meanwhile (PostgreSQL, read committed): the next one
        else:
            raise StoreUnavailable(f"could not number a new version of {v.name!r}: too many registrations at once")
        for alias in v.aliases:
            self._put_alias(cur, v.name, alias, number, now)
        return ModelVersion(name=v.name, version=number, artifact=v.artifact, created_at=now, params=v.params,
                            metrics=v.metrics, sweep_id=v.sweep_id, trial=v.trial, job_id=v.job_id,
                            created_by=v.created_by, aliases=tuple(sorted(v.aliases)))

    def _put_alias(self, cur: Any, name: str, alias: str, version: int, now: float) -> None:
        cur.execute("INSERT INTO model_aliases (name, alias, version, updated_at) VALUES (?,?,?,?)"
                    " ON CONFLICT (name, alias) DO UPDATE SET version=excluded.version, updated_at=excluded.updated_at",
                    (name, alias, version, now))

    def model_versions(self, name: str | None = None, *, limit: int = 200) -> list[ModelVersion]:
        """Newest first; every model's versions when `name` is None."""
        where, params = ("WHERE name=?", [name]) if name is not None else ("", [])
        rows = self._read(f"SELECT {_MODEL_COLUMNS} FROM models {where} ORDER BY name, version DESC LIMIT ?",
                          (*params, limit))
        aliases = self._aliases(name)
        return [_model(r, aliases.get((r[0], r[1]), ())) for r in rows]

    def _aliases(self, name: str | None) -> dict[tuple[str, int], list[str]]:
        where, params = ("WHERE name=?", (name,)) if name is not None else ("", ())
        out: dict[tuple[str, int], list[str]] = {}
        for n, alias, version in self._read(f"SELECT name, alias, version FROM model_aliases {where}", params):
            out.setdefault((n, version), []).append(alias)
        return out

    def get_model_version(self, name: str, ref: int | str | None = None) -> ModelVersion:
        """A version by number, by alias, or the latest (None)."""
        if isinstance(ref, str):
            rows = self._read("SELECT version FROM model_aliases WHERE name=? AND alias=?", (name, ref))
            if not rows:
                raise RegistryNotFound(f"model {name!r} has no alias {ref!r}")
            ref = int(rows[0][0])
        if ref is None:
            rows = self._read(f"SELECT {_MODEL_COLUMNS} FROM models WHERE name=? ORDER BY version DESC LIMIT 1",
                              (name,))
        else:
            rows = self._read(f"SELECT {_MODEL_COLUMNS} FROM models WHERE name=? AND version=?", (name, ref))
        if not rows:
            raise RegistryNotFound(f"no model {name!r}" + (f" version {ref}" if ref is not None else ""))
        return _model(rows[0], self._aliases(name).get((name, rows[0][1]), ()))

    def set_model_alias(self, name: str, alias: str, version: int | None, now: float) -> None:
        """Point `alias` at `version` (None: remove the alias)."""
        with self._write() as cur:
            if version is None:
                cur.execute("DELETE FROM model_aliases WHERE name=? AND alias=?", (name, alias))
                if not cur.rowcount:
                    raise RegistryNotFound(f"model {name!r} has no alias {alias!r}")
                return
            if cur.execute("SELECT 1 FROM models WHERE name=? AND version=?", (name, version)).fetchone() is None:
                raise RegistryNotFound(f"no model {name!r} version {version}")
            self._put_alias(cur, name, alias, version, now)
