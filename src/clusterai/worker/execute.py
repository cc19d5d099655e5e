"""Runs a batch of job attempts inside a worker process, one after another, in one thread.

Every item is JSON text in and JSON text out. A job's timeout is enforced by raising
JobTimeout inside the running thread; a task stuck in C code ignores that, and the coordinator
then restarts the worker through its nanny.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clusterai.core.tasks import get_task
from clusterai.errors import BadInput, ClusterAIError, JobTimeout, NonRetryableError

MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class JobContext:
    job_id: int
    attempt: int
    worker: str
    gateway: dict[str, str] | None = None  # {"url", "token"} for tasks registered with gateway=True
    # Told by the head, never read from the payload (which says whatever its submitter wrote):
    owner: str | None = None  # the token name that submitted the job; None for the local client
    run: int | None = None  # the pipeline run that made the job, for tasks registered with provenance=True
    trial: dict[str, int] | None = None  # {"sweep", "number"} when the job is a trial of a sweep


_context = threading.local()


def current_job() -> JobContext | None:
    """The job the calling task is running for (inside a worker), else None."""
    return getattr(_context, "job", None)


_event_sink: Callable[[str, Any], None] | None = None


def set_event_sink(sink: Callable[[str, Any], None] | None) -> None:
    """Where `emit` sends events: the worker's Dask event stream (set up by the worker plugin)."""
    global _event_sink
    _event_sink = sink


def emit(topic: str, message: Any) -> bool:
    """From a task: send an event to the coordinator (Dask topic `topic`). False outside a worker."""
    if _event_sink is None:
        return False
    _event_sink(topic, message)
    return True


class _Watchdog:
    """Raises JobTimeout in one thread after `seconds`, unless disarmed first."""

    def __init__(self, seconds: float):
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._armed = True
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._armed:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread_id), ctypes.py_object(JobTimeout)
                )

    def disarm(self) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()


def run_one(item: dict[str, Any], worker: str) -> dict[str, Any]:
    reply: dict[str, Any] = {"id": item["id"], "attempt": item["attempt"]}
    started = time.perf_counter()
    _context.job = JobContext(item["id"], item["attempt"], worker, item.get("gateway"), item.get("owner"),
                              item.get("run"), item.get("trial"))
    watchdog = _Watchdog(item["timeout"]) if item.get("timeout") else None
    try:
        try:
            definition = get_task(item["task"])
            result = definition.call(json.loads(item["payload"]))
            reply["result"] = _to_json(result)
            reply["outcome"] = "succeeded"
        finally:
            if watchdog:
                watchdog.disarm()
    except StopRequested as exc:  # the head stopped it (a pruned trial): a finished job, not a failure
        reply["result"] = _to_json(exc.result())
        reply["outcome"] = "succeeded"
    except JobTimeout:
        reply.update(outcome="timeout", retryable=True,
                     error=f"JobTimeout: attempt ran past its timeout of {item['timeout']} s")
    except BaseException as exc:  # noqa: BLE001 - a task may raise anything; report it as text
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        retryable = not isinstance(exc, (NonRetryableError, BadInput))
        if retryable and "definition" in locals():
            retryable = not isinstance(exc, definition.non_retryable)
        reply.update(outcome="failed", retryable=retryable, error=_error_text(exc))
    finally:
        _context.job = None
        _forget_stop(item["id"], item["attempt"])
    reply["duration"] = time.perf_counter() - started
    return reply


def run_batch(items: list[dict[str, Any]], worker: str, stop_after: int | None = None) -> list[dict[str, Any]]:
    """Run items in order. After `stop_after` failures in a row the rest are handed back unrun:
    a broken worker should not burn through a whole batch before its circuit breaker opens."""
    replies: list[dict[str, Any]] = []
    in_a_row = 0
    for item in items:
        if stop_after is not None and in_a_row >= stop_after:
            replies.append({"id": item["id"], "attempt": item["attempt"], "outcome": "abandoned",
                            "duration": 0.0,
                            "error": f"not run: {in_a_row} jobs failed in a row on worker {worker}"})
            continue
        reply = run_one(item, worker)
        in_a_row = in_a_row + 1 if reply["outcome"] in ("failed", "timeout") else 0
        replies.append(reply)
    return replies


def run_batch_anywhere(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same batch as a plain Dask task, on whichever worker Dask's scheduler picks."""
    from distributed import get_worker

    worker = get_worker()
    replies = run_batch(items, str(worker.name))
    for reply in replies:
        reply["worker"] = worker.address
    return replies


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """Raised inside a task (by `clusterai.trial.report`) when the head asked its attempt to stop.
    The attempt ends as succeeded with `result()`: the work was stopped on purpose, not lost."""

    def __init__(self, reason: str, step: int | None, metrics: dict[str, float]):
        super().__init__(reason)
        self.reason, self.step, self.metrics = reason, step, metrics

    def result(self) -> dict[str, Any]:
        return {"stopped": self.reason, "step": self.step, "metrics": self.metrics}


_stops: dict[tuple[int, int], str] = {}  # (job id, attempt) -> why the head wants it stopped
_stops_lock = threading.Lock()


def request_stop(job_id: int, attempt: int, reason: str) -> None:
    """From the worker's comm handler: the task sees it at its next `trial.report`."""
    with _stops_lock:
        _stops[(job_id, attempt)] = reason


def stop_requested(job_id: int, attempt: int) -> str | None:
    with _stops_lock:
        return _stops.get((job_id, attempt))


def _forget_stop(job_id: int, attempt: int) -> None:
    with _stops_lock:
        _stops.pop((job_id, attempt), None)


def _to_json(result: Any) -> str:
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NonRetryableError(
            f"task returned a value that is not JSON ({exc}); return JSON data or store the "
            "output as an artifact and return its reference"
        ) from None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ClusterAIError) and not exc.__traceback__:
        return f"{type(exc).__name__}: {exc}"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"{type(exc).__name__}: {exc}\n"
    text = head + text
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 20] + "\n...[truncated]"
