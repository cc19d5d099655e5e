"""Jobs: the domain model and the durable store behind it."""

from clusterai.jobs.model import (
    Attempt,
    Finish,
    Job,
    JobSpec,
    Outcome,
    Priority,
    RetryPolicy,
    State,
    WorkerRecord,
)
from clusterai.jobs.store import JobStore, open_store

__all__ = [
    "Attempt",
    "Finish",
    "Job",
    "JobSpec",
    "JobStore",
    "Outcome",
    "Priority",
    "RetryPolicy",
    "State",
    "WorkerRecord",
    "open_store",
]
