"""The event log in the job store: one row per job or worker change, written in the same
transaction as the change itself, so the order of ids is the order of commits. The API streams it
(Server-Sent Events) and a client resumes from the last id it saw."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

EventRow = tuple[int, str, str | None, str | None]  # job id, new state, worker, detail


JOB_EVENT = "INSERT INTO events (at, kind, job_id, state, worker, detail) VALUES (?, 'job', ?, ?, ?, ?)"
WORKER_EVENT = "INSERT INTO events (at, kind, state, worker, detail) VALUES (?, 'worker', ?, ?, ?)"


def _insert_events(cur: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    # A PostgreSQL cursor holds events back and writes them last, under a lock, so that event ids
    # follow commit order there too (its sequence hands out ids in the order rows are inserted).
    defer = getattr(cur, "defer_events", None)
    if defer is not None:
        defer(sql, rows)
    else:
        cur.executemany(sql, rows)


def job_events(cur: Any, now: float, rows: Sequence[EventRow]) -> None:
    if rows:
        _insert_events(cur, JOB_EVENT, [(now, *row) for row in rows])


def worker_events(cur: Any, now: float, rows: Sequence[tuple[str, str, str | None]]) -> None:
    """(worker name, status, detail) for each worker that joined or changed status."""
    if rows:
        _insert_events(cur, WORKER_EVENT, [(now, status, name, detail) for name, status, detail in rows])


class EventTables:
    """Mixed into SqlStore, whose `_write` and `_read` it uses."""

    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]
    _events_high: Callable[[], int]  # the highest event id ever handed out (the backend's id sequence)

    def events_after(self, after_id: int, limit: int = 500) -> list[dict[str, Any]]:
        """Events with an id above `after_id`, oldest first, with the job's task, queue and owner."""
        rows = self._read(
            "SELECT e.id, e.at, e.kind, e.job_id, e.state, e.worker, e.detail, j.task, j.queue, j.owner"
            " FROM events e LEFT JOIN jobs j ON j.id = e.job_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (after_id, limit),
        )
        return [
            {"id": id_, "at": at, "kind": kind, "job": job, "state": state, "worker": worker,
             "detail": detail, "task": task, "queue": queue, "owner": owner}
            for id_, at, kind, job, state, worker, detail, task, queue, owner in rows
        ]

    def event_bounds(self) -> tuple[int, int]:
        """(lowest id still kept, highest id ever written). With every event pruned the lowest is
        the highest + 1, so a client that saw the last one has missed nothing."""
        high = self._events_high()
        low = self._read("SELECT MIN(id) FROM events")[0][0]
        return (low if low is not None else high + 1, high)

    def prune_events(self, older_than: float, keep_at_most: int) -> int:
        """Forget events older than a time, and beyond the newest `keep_at_most`."""
        low, high = self.event_bounds()
        cut = max(high - keep_at_most, self._last_event_before(low, high, older_than))
        if cut < low:
            return 0
        with self._write() as cur:
            cur.execute("DELETE FROM events WHERE id <= ?", (cut,))
            return cur.rowcount

    def _last_event_before(self, low: int, high: int, moment: float) -> int:
        """The highest id written before `moment`, by bisection: ids grow with time, so the log
        needs no index on time (one less index to update on every job change)."""
        found = low - 1
        while low <= high:
            middle = (low + high) // 2
            row = self._read("SELECT id, at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (middle,))
            if not row or row[0][0] > high:
                high = middle - 1
            elif row[0][1] < moment:
                found, low = row[0][0], row[0][0] + 1
            else:
                high = middle - 1
        return found
