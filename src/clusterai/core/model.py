"""The job domain: states, priorities, retry policy, and the decision taken when an attempt ends.

Everything here is a frozen value or a pure function, so the coordinator's choices can be
tested without a store or a cluster.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from clusterai.errors import BadInput, InvalidTransition


class State(str, Enum):
    PENDING = "pending"  # waiting for run_at (delayed job or retry backoff)
    QUEUED = "queued"  # ready to run now
    RUNNING = "running"  # an attempt holds the lease
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # dead letter: attempts exhausted or non-retryable
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.DEAD, State.CANCELLED)


TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.QUEUED, State.CANCELLED}),
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED}),
    State.RUNNING: frozenset(
        {State.SUCCEEDED, State.PENDING, State.QUEUED, State.DEAD, State.CANCELLED}
    ),
    State.SUCCEEDED: frozenset({State.QUEUED}),  # an explicit retry reruns a finished job
    State.DEAD: frozenset({State.QUEUED}),  # requeue from the dead-letter list
    State.CANCELLED: frozenset({State.QUEUED}),
}


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none"
        raise InvalidTransition(
            f"a {old.value} job cannot become {new.value}; from {old.value} it may become: {allowed}"
        )


class Priority(IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        allowed = ", ".join(p.name.lower() for p in cls)
        raise BadInput(f"invalid priority {value!r}; allowed: {allowed}")


class Outcome(str, Enum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the task raised
    TIMEOUT = "timeout"  # ran past the job's timeout
    LOST = "lost"  # the worker died or left while running it
    EXPIRED = "expired"  # the lease ran out: the worker stopped answering
    ABANDONED = "abandoned"  # the coordinator restarted while it ran
    CANCELLED = "cancelled"


# Outcomes caused by the worker rather than the job itself: they do not spend the
# retry budget, but count towards the poison-job limit.
WORKER_FAULTS = frozenset({Outcome.LOST, Outcome.EXPIRED})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter and a cap: delay(n) = min(cap, backoff * 2**(n-1)) +- jitter."""

    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise BadInput(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise BadInput("backoff and max_backoff must be >= 0")
        if not 0 <= self.jitter < 1:
            raise BadInput(f"jitter must be in [0, 1), got {self.jitter}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt that follows the `failures`-th failure."""
        base = min(self.max_backoff, self.backoff * (2 ** max(0, failures - 1)))
        spread = 1.0 + self.jitter * (2.0 * (rng or random).random() - 1.0)
        return min(self.max_backoff, base * spread)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value, so equal payloads hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class JobSpec:
    """A validated request to run a task; what the store persists on submit."""

    task: str
    payload: dict[str, Any]
    queue: str = "default"
    priority: Priority = Priority.NORMAL
    run_at: float | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    prefers: dict[str, str] = field(default_factory=dict)
    owner: str | None = None  # the API token's name that submitted it (None: local client)

    @property
    def payload_json(self) -> str:
        return canonical_json(self.payload)

    @property
    def fingerprint(self) -> str:
        """What an idempotency key promises: same task, same payload."""
        return canonical_json({"task": self.task, "payload": self.payload})


@dataclass(frozen=True)
class Attempt:
    number: int
    worker: str | None
    started_at: float
    finished_at: float | None
    outcome: Outcome | None
    error: str | None
    late: str | None = None  # what a fenced-off worker answered after losing the lease


@dataclass(frozen=True)
class Job:
    id: int
    task: str
    queue: str
    priority: Priority
    state: State
    payload: dict[str, Any]
    created_at: float
    updated_at: float
    run_at: float
    attempt: int  # fencing token: the number of the latest attempt
    failures: int
    lost_count: int
    retry: RetryPolicy
    timeout: float | None = None
    idempotency_key: str | None = None
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    prefers: dict[str, str] = field(default_factory=dict)
    waiting: str | None = None  # why the coordinator could not place it yet
    worker: str | None = None
    result: Any = None
    error: str | None = None
    finished_at: float | None = None
    attempts: tuple[Attempt, ...] = ()
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "priority": self.priority.name.lower(),
            "state": self.state.value,
            "payload": self.payload,
            "result": self.result,
            "error": self.error,
            "worker": self.worker,
            "attempt": self.attempt,
            "failures": self.failures,
            "lost_count": self.lost_count,
            "retries": self.retry.retries,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "run_at": self.run_at,
            "finished_at": self.finished_at,
            "timeout": self.timeout,
            "idempotency_key": self.idempotency_key,
            "resources": self.resources,
            "labels": self.labels,
            "prefers": self.prefers,
            "waiting": self.waiting,
            "owner": self.owner,
            "attempts": [
                {
                    "number": a.number,
                    "worker": a.worker,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "outcome": a.outcome.value if a.outcome else None,
                    "error": a.error,
                    "late": a.late,
                }
                for a in self.attempts
            ],
        }


def job_from_dict(data: dict[str, Any]) -> Job:
    """The inverse of Job.to_dict, for clients that read jobs as JSON (the REST API)."""
    attempts = tuple(
        Attempt(a["number"], a.get("worker"), a["started_at"], a.get("finished_at"),
                Outcome(a["outcome"]) if a.get("outcome") else None, a.get("error"), a.get("late"))
        for a in data.get("attempts") or ()
    )
    return Job(
        id=data["id"], task=data["task"], queue=data["queue"], priority=Priority.parse(data["priority"]),
        state=State(data["state"]), payload=data.get("payload") or {}, created_at=data["created_at"],
        updated_at=data["updated_at"], run_at=data["run_at"], attempt=data["attempt"],
        failures=data.get("failures", 0), lost_count=data.get("lost_count", 0),
        retry=RetryPolicy(retries=data.get("retries", 3)),
        timeout=data.get("timeout"), idempotency_key=data.get("idempotency_key"),
        resources=data.get("resources") or {}, labels=data.get("labels") or {},
        prefers=data.get("prefers") or {}, waiting=data.get("waiting"), worker=data.get("worker"),
        result=data.get("result"), error=data.get("error"), finished_at=data.get("finished_at"),
        attempts=attempts, owner=data.get("owner"),
    )


@dataclass(frozen=True)
class Finish:
    """The store write that ends one attempt; applied only if the attempt still holds the lease."""

    job_id: int
    attempt: int
    outcome: Outcome
    state: State
    result_json: str | None = None
    error: str | None = None
    run_at: float | None = None
    failures: int = 0
    lost_count: int = 0


@dataclass(frozen=True)
class AuditEntry:
    """One mutating API call: who (token name and role), what, on what, and how it ended."""

    actor: str
    role: str
    action: str  # "POST /api/v1/jobs"
    target: str | None
    status: int
    detail: str | None = None


@dataclass(frozen=True)
class TokenRecord:
    """An API token as stored: never the secret, only its hash."""

    id: str
    name: str
    role: str
    secret_hash: str
    created_at: float
    created_by: str | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    # a join token (`clusterai join`) may be used this many more times; None: not a join token
    uses_left: int | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at) \
            and (self.uses_left is None or self.uses_left > 0)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": self.created_at,
                "created_by": self.created_by, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "uses_left": self.uses_left}


# what an operator can ask the coordinator to do to a worker (the API, the CLI, the Python client)
WORKER_ACTIONS = ("drain", "undrain", "remove", "restart")


@dataclass(frozen=True)
class WorkerRecord:
    """A snapshot of one worker, written by the coordinator for every other reader."""

    name: str
    address: str
    status: str
    nthreads: int
    memory_limit: int
    inflight: int
    completed: int
    failed: int
    last_seen: float
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    pid: int = 0
    breaker: str = "closed"
    models: list[str] = field(default_factory=list)


def decide(
    job: Job,
    outcome: Outcome,
    *,
    now: float,
    retryable: bool = True,
    poison_threshold: int = 3,
    result_json: str | None = None,
    error: str | None = None,
    rng: random.Random | None = None,
) -> Finish:
    """What becomes of `job` when its current attempt ends with `outcome`."""
    if outcome is Outcome.SUCCEEDED:
        return Finish(job.id, job.attempt, outcome, State.SUCCEEDED, result_json=result_json,
                      failures=job.failures, lost_count=0)
    if outcome in WORKER_FAULTS or outcome is Outcome.ABANDONED:
        lost = job.lost_count + (0 if outcome is Outcome.ABANDONED else 1)
        if lost >= poison_threshold:
            why = f"poison job: {lost} attempts in a row ended with the worker lost"
            return Finish(job.id, job.attempt, outcome, State.DEAD,
                          error=f"{why}; last: {error}" if error else why,
                          failures=job.failures, lost_count=lost)
        return Finish(job.id, job.attempt, outcome, State.QUEUED, error=error,
                      failures=job.failures, lost_count=lost, run_at=now)
    failures = job.failures + 1
    if retryable and failures <= job.retry.retries:
        return Finish(job.id, job.attempt, outcome, State.PENDING, error=error,
                      run_at=now + job.retry.delay(failures, rng), failures=failures, lost_count=0)
    return Finish(job.id, job.attempt, outcome, State.DEAD, error=error,
                  failures=failures, lost_count=0)


@dataclass(frozen=True)
class RunRecord:
    """A pipeline run as stored: the pipeline it ran (its spec, frozen at start) and its input."""

    id: int
    name: str
    spec: dict[str, Any]
    input: dict[str, Any]
    state: str  # pipelines.RunState
    fresh: bool
    problems: dict[str, str]
    owner: str | None
    created_at: float
    updated_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.name, "state": self.state, "fresh": self.fresh,
                "problems": self.problems, "owner": self.owner, "created_at": self.created_at,
                "updated_at": self.updated_at, "finished_at": self.finished_at, "input": self.input}


@dataclass(frozen=True)
class CountPoint:
    """A camera job's running totals at one frame of its stream."""

    job_id: int
    camera: str
    frame: int
    video_time: float
    at: float
    total: int
    left_to_right: int
    right_to_left: int

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "camera": self.camera, "frame": self.frame,
                "video_time": self.video_time, "at": self.at, "total": self.total,
                "left_to_right": self.left_to_right, "right_to_left": self.right_to_left}


# -- what a submitter may name ------------------------------------------------------------------
# Queue names and the keys of labels, resources and preferences end up in metric labels, log lines,
# SQL filters and the dashboard; their values in placement decisions and the dashboard. A small
# character set keeps markup, control characters, quotes and spaces out of all of them. Values may
# also hold "/" (a model or data set such as org/model).
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
VALUE_PATTERN = r"^[A-Za-z0-9_.:/-]{1,200}$"
NAME_RULE = "1 to 100 of A-Z a-z 0-9 _ . : -"
VALUE_RULE = "1 to 200 of A-Z a-z 0-9 _ . : / -"
# An idempotency key is any text without control characters: the store keeps it scoped by its owner,
# joined with KEY_SCOPE, a control character a key cannot contain (so the join is never ambiguous).
KEY_PATTERN = r"^[^\x00-\x1f\x7f]{1,200}$"
KEY_SCOPE = "\x1f"


def scoped_key(owner: str | None, key: str | None) -> str | None:
    """What the store's unique idempotency_key column holds: the key within its owner's scope (one
    owner's key never finds another's job). The local client (owner None) keeps the plain key."""
    if key is None or owner is None:
        return key
    return f"{owner}{KEY_SCOPE}{key}"


def plain_key(owner: str | None, stored: str | None) -> str | None:
    """The key as its submitter gave it; rows stored before keys were scoped hold it plain."""
    if stored is None or owner is None:
        return stored
    prefix = f"{owner}{KEY_SCOPE}"
    return stored[len(prefix):] if stored.startswith(prefix) else stored
