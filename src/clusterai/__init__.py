"""clusterai: pool every machine a team has into one cluster and run AI work across it."""

from clusterai.client import Client, connect
from clusterai.engine.execute import current_job
from clusterai.errors import (
    ClusterAIError,
    ConfigError,
    IdempotencyConflict,
    JobFailed,
    NonRetryableError,
    PayloadError,
    ResultTimeout,
    UnknownTaskError,
)
from clusterai.jobs.model import Job, Priority, State
from clusterai.tasks import task

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClusterAIError",
    "ConfigError",
    "IdempotencyConflict",
    "Job",
    "JobFailed",
    "NonRetryableError",
    "PayloadError",
    "Priority",
    "ResultTimeout",
    "State",
    "UnknownTaskError",
    "connect",
    "current_job",
    "task",
]
