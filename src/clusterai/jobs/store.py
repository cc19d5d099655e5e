"""The job store protocol: the source of truth that every backend implements.

Dialect-specific SQL lives in the backends (`sqlite.py`, later `postgres.py`); the coordinator,
client and CLI speak only this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from clusterai.errors import ConfigError
from clusterai.jobs.model import Finish, Job, JobSpec, State, WorkerRecord


class JobStore(Protocol):
    url: str

    # submission and reads
    def submit_many(self, specs: Sequence[JobSpec], now: float) -> list[Job]: ...
    def get(self, job_id: int, *, attempts: bool = True) -> Job: ...
    def list_jobs(
        self,
        *,
        state: State | None = None,
        task: str | None = None,
        queue: str | None = None,
        worker: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[Job]: ...
    def get_many(self, job_ids: Sequence[int]) -> list[Job]: ...
    def states_of(self, job_ids: Sequence[int]) -> dict[int, State]: ...
    def counts(self) -> dict[str, int]: ...
    def changed(self) -> bool: ...

    # the coordinator's side
    def promote_due(self, now: float) -> int: ...
    def next_due_at(self) -> float | None: ...
    def fetch_ready(self, limit: int) -> list[Job]: ...
    def start_attempts(
        self, assignments: Sequence[tuple[int, str]], now: float, lease_until: float
    ) -> list[Job]: ...
    def finish_attempts(self, finishes: Sequence[Finish], now: float) -> list[bool]: ...
    def record_late(self, job_id: int, attempt: int, answer: str) -> None: ...
    def renew_leases(self, worker: str, lease_until: float) -> int: ...
    def expired_leases(self, now: float) -> list[Job]: ...
    def running_jobs(self) -> list[Job]: ...

    # operator actions
    def cancel(self, job_id: int, now: float) -> Job: ...
    def requeue(self, job_id: int, now: float) -> Job: ...

    # the worker registry snapshot
    def upsert_workers(self, records: Sequence[WorkerRecord], now: float) -> None: ...
    def list_workers(self) -> list[WorkerRecord]: ...

    def stats(self, since: float) -> dict[str, float]: ...
    def per_worker(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def open_store(url: str | Path, **options: object) -> JobStore:
    """Open a store by URL: `sqlite:///path/to.db`, a plain path, or `sqlite://:memory:`."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"store {text!r}: the PostgreSQL backend is not part of this build yet; "
            "use sqlite:///path/to/clusterai.db"
        )
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        # sqlite:///rel.db is relative, sqlite:////abs.db absolute (SQLAlchemy's spelling)
        path = rest[1:] if rest.startswith("/") else rest
    elif "://" in text:
        raise ConfigError(f"store {text!r}: unknown scheme; allowed: sqlite:///PATH or a file path")
    else:
        path = text
    from clusterai.jobs.sqlite import SQLiteStore

    return SQLiteStore(path, **options)  # type: ignore[arg-type]
