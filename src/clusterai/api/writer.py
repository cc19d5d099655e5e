"""Group commit for API submissions: one thread stores every submission, and those that arrive
while it is busy are committed together in one transaction.

Under concurrent clients this turns N requests into one commit and spares each request a trip
through the thread pool; alone, a request waits for nothing. A group that fails (a bad idempotency
key, a job no worker could run) is retried one submission at a time, so one caller's error never
fails another's request."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from clusterai.core.model import AuditEntry, Job, JobSpec
from clusterai.service.jobs import JobService

_IDLE_EXIT = 5.0  # an idle writer thread ends; the next submission starts another


@dataclass
class _Submission:
    specs: Sequence[JobSpec]
    audit: AuditEntry | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Job]]


class SubmissionWriter:
    def __init__(self, jobs: JobService, max_group_jobs: int = 5000):
        self.jobs = jobs
        self.max_group_jobs = max_group_jobs
        self._queue: queue.SimpleQueue[_Submission] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def submit(self, specs: Sequence[JobSpec], audit: AuditEntry | None) -> list[Job]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Job]] = loop.create_future()
        self._queue.put(_Submission(specs, audit, loop, future))
        self._ensure_thread()
        return await future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clusterai-api-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # else a submission raced in: keep going
                        self._thread = None
                        return
                continue
            group, jobs = [first], len(first.specs)
            while jobs < self.max_group_jobs:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                group.append(item)
                jobs += len(item.specs)
            self._commit(group)

    def _commit(self, group: list[_Submission]) -> None:
        try:
            results = self.jobs.submit_groups([(s.specs, s.audit) for s in group])
        except Exception as exc:  # noqa: BLE001 - handed to the callers, or isolated below
            if len(group) == 1:
                _settle(group[0], error=exc)
            else:
                for submission in group:
                    self._commit([submission])
            return
        for submission, jobs in zip(group, results):
            _settle(submission, jobs=jobs)


def _settle(submission: _Submission, *, jobs: list[Job] | None = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if submission.future.done():  # the caller went away (its request was cancelled)
            return
        if error is not None:
            submission.future.set_exception(error)
        else:
            submission.future.set_result(jobs or [])

    try:
        submission.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # its loop is closed: nobody is waiting any more
        pass

