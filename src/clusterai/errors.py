"""One hierarchy for every error clusterai raises; edges translate it (CLI exit 2, HTTP 4xx)."""

from __future__ import annotations


class ClusterAIError(Exception):
    """Base of every clusterai error."""


class BadInput(ClusterAIError):
    """The caller asked for something invalid; nothing was changed."""


class ConfigError(BadInput):
    """cluster.yaml (or an override) is invalid."""


class UnknownTaskError(BadInput):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        shown = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(f"unknown task {name!r}; known tasks: {shown}")


class PayloadError(BadInput):
    """A payload failed validation against its task's signature or model."""


class IdempotencyConflict(BadInput):
    def __init__(self, key: str, job_id: int):
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"idempotency key {key!r} already names job {job_id} with a different task or payload"
        )


class JobNotFound(ClusterAIError):
    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"no job with id {job_id}")


class RunNotFound(ClusterAIError):
    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"no pipeline run with id {run_id}")


class InvalidTransition(BadInput):
    """The job is not in a state that allows the requested change."""


class StoreUnavailable(ClusterAIError):
    """The job store cannot be reached or is locked beyond its busy timeout."""


class JobFailed(ClusterAIError):
    """Raised by result() when a job ended dead or cancelled."""

    def __init__(self, job_id: int, state: str, error: str | None):
        self.job_id = job_id
        self.state = state
        self.error = error
        super().__init__(f"job {job_id} ended {state}: {error or 'no error recorded'}")


class ResultTimeout(ClusterAIError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""


class NonRetryableError(ClusterAIError):
    """Raise from a task to fail the job at once, without retries."""


class JobTimeout(ClusterAIError):
    """Raised inside a task's thread when its attempt runs past the job's timeout."""


class NestedTooDeep(BadInput):
    """JSON (a request body, a payload) nested deeper than the limit."""

    def __init__(self, limit: int, what: str = "JSON"):
        self.limit = limit
        super().__init__(f"{what} is nested deeper than {limit} levels, the limit")


class LimitReached(ClusterAIError):
    """A caller used up what it may have at once (HTTP 429): `retry_after` seconds is when to try again."""

    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)
