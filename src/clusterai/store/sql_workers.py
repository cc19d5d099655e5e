"""The worker registry's tables in the SQLite store: the coordinator's snapshot of every worker,
and operator commands (drain, remove...) waiting for the coordinator."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from clusterai.core.model import WorkerRecord
from clusterai.errors import JobNotFound
from clusterai.store.sql_events import worker_events


class WorkerTables:
    """Mixed into SqlStore, whose `_write` and `_read` it uses."""

    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]

    def upsert_workers(self, records: Sequence[WorkerRecord], now: float) -> None:
        with self._write() as cur:
            known = cur.execute("SELECT address, status, name FROM workers").fetchall()
            before = {address: status for address, status, _ in known}
            names = {address: name for address, _, name in known}
            changes = [(r.name, r.status, "joined" if r.address not in before else f"was {before[r.address]}")
                       for r in records if before.get(r.address) != r.status]
            live_now = {r.address for r in records}
            changes += [(names[a], "gone", f"was {status}") for a, status in before.items()
                        if a not in live_now and status != "gone"]
            worker_events(cur, now, changes)
            for r in records:
                cur.execute(
                    "INSERT INTO workers (name, address, status, nthreads, memory_limit, inflight,"
                    " completed, failed, last_seen, labels, resources, metrics, pid, breaker, models)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(address) DO UPDATE SET"
                    " name=excluded.name, status=excluded.status, pid=excluded.pid,"
                    " breaker=excluded.breaker, models=excluded.models,"
                    " nthreads=excluded.nthreads, memory_limit=excluded.memory_limit,"
                    " inflight=excluded.inflight, completed=excluded.completed,"
                    " failed=excluded.failed, last_seen=excluded.last_seen,"
                    " labels=excluded.labels, resources=excluded.resources,"
                    " metrics=excluded.metrics",
                    (r.name, r.address, r.status, r.nthreads, r.memory_limit, r.inflight,
                     r.completed, r.failed, r.last_seen, json.dumps(r.labels),
                     json.dumps(r.resources), json.dumps(r.metrics), r.pid, r.breaker,
                     json.dumps(sorted(r.models))),
                )
            live = [r.address for r in records]
            marks = ",".join("?" * len(live))
            cur.execute(
                f"UPDATE workers SET status='gone', inflight=0 WHERE address NOT IN ({marks})"
                if live else "UPDATE workers SET status='gone', inflight=0",
                live,
            )

    def add_worker_command(self, worker: str, action: str, now: float) -> int:
        """Queue an operator command (drain, undrain, remove, restart) for the coordinator."""
        with self._write() as cur:
            row = cur.execute("INSERT INTO worker_commands (worker, action, created_at) VALUES (?,?,?)"
                              " RETURNING id", (worker, action, now)).fetchone()
            return int(row[0])

    def open_worker_commands(self) -> list[tuple[int, str, str]]:
        return [tuple(r) for r in self._read(
            "SELECT id, worker, action FROM worker_commands WHERE done_at IS NULL ORDER BY id")]

    def finish_worker_command(self, command_id: int, outcome: str, now: float) -> None:
        with self._write() as cur:
            cur.execute("UPDATE worker_commands SET done_at=?, outcome=? WHERE id=?", (now, outcome, command_id))

    def worker_command(self, command_id: int) -> tuple[str, str, float | None, str | None]:
        rows = self._read("SELECT worker, action, done_at, outcome FROM worker_commands WHERE id=?", (command_id,))
        if not rows:
            raise JobNotFound(command_id)
        return tuple(rows[0])

    def list_workers(self) -> list[WorkerRecord]:
        rows = self._read(
            "SELECT name, address, status, nthreads, memory_limit, inflight, completed, failed,"
            " last_seen, labels, resources, metrics, pid, breaker, models FROM workers"
            " ORDER BY status != 'gone' DESC, name"
        )
        return [
            WorkerRecord(name=r[0], address=r[1], status=r[2], nthreads=r[3], memory_limit=r[4],
                         inflight=r[5], completed=r[6], failed=r[7], last_seen=r[8],
                         labels=json.loads(r[9]), resources=json.loads(r[10]),
                         metrics=json.loads(r[11]), pid=r[12], breaker=r[13], models=json.loads(r[14]))
            for r in rows
        ]

