"""One hierarchy for every error clusterai raises, and the one table of how each shows at an edge.

Every error carries a stable machine `code`, the HTTP status the API answers with, the exit code
the CLI ends with, and `details()` (the fields a caller can act on). The API writes
{"error": message, "code": code, **details}; the remote client rebuilds the same class from the
code (`from_answer`); the CLI exits with `exit_code`. Adding an error is adding a class here."""

from __future__ import annotations

from typing import Any, ClassVar

# the CLI's exit codes, for every command and for `clusterai worker`
EXIT_FAILED = 1  # the work itself failed (a job ended dead), or an error with no closer code
EXIT_BAD_INPUT = 2  # usage errors, like Typer's and argparse's own
EXIT_UNAVAILABLE = 3  # the store, the head or the API cannot be reached
EXIT_AUTH = 4  # a token or certificate was refused (401/403, enrollment refused)
EXIT_LEAD_LOST = 5  # another head took the lead on the store

_BY_CODE: dict[str, type[ClusterAIError]] = {}


class ClusterAIError(Exception):
    """Base of every clusterai error."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_FAILED
    label: ClassVar[str] = "error"  # how the CLI introduces the message

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            if cls.code in _BY_CODE:
                raise TypeError(f"error code {cls.code!r} is taken by {_BY_CODE[cls.code].__name__}")
            _BY_CODE[cls.code] = cls

    def details(self) -> dict[str, Any]:
        """The machine-readable fields beside the message (what from_details rebuilds from)."""
        return {}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(message)


def from_answer(code: str | None, message: str, details: dict[str, Any], status: int) -> ClusterAIError:
    """The error an API answer stands for: the class its code names, else a RemoteError."""
    cls = _BY_CODE.get(code or "")
    if cls is None:
        return RemoteError(status, message)
    try:
        return cls.from_details(message, details)
    except (KeyError, TypeError, ValueError):  # an answer without the fields its class needs
        return RemoteError(status, message)


def error_body(exc: ClusterAIError) -> dict[str, Any]:
    return {"error": str(exc), "code": exc.code, **exc.details()}


class BadInput(ClusterAIError):
    """The caller asked for something invalid; nothing was changed."""

    code = "bad_input"
    http_status = 422
    exit_code = EXIT_BAD_INPUT


class MalformedRequest(BadInput):
    """A request the API cannot read at all (malformed or too deeply nested JSON)."""

    code = "malformed_request"
    http_status = 400


class RequestInvalid(BadInput):
    """A request body that does not match its schema; carries the fields at fault."""

    code = "request_invalid"

    def __init__(self, fields: list[dict[str, str]]):
        self.fields = fields
        shown = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:10])
        more = f" (and {len(fields) - 10} more)" if len(fields) > 10 else ""
        super().__init__(f"invalid request: {shown}{more}")

    def details(self) -> dict[str, Any]:
        return {"fields": self.fields}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(list(details["fields"]))


class ConfigError(BadInput):
    """cluster.yaml (or an override) is invalid."""

    code = "config_invalid"


class AutoscaleConfigError(ConfigError):
    """The `autoscale:` section of cluster.yaml is invalid; the message names the field."""

    code = "autoscale_config_invalid"


class SweepInvalid(BadInput):
    """A sweep's definition (objective, space, sampler, pruner, ...) is invalid; the message names the field."""

    code = "sweep_invalid"


class UnknownTaskError(BadInput):
    code = "unknown_task"

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = sorted(known)
        shown = ", ".join(self.known) if self.known else "(none registered)"
        super().__init__(f"unknown task {name!r}; known tasks: {shown}")

    def details(self) -> dict[str, Any]:
        return {"task": self.name, "known_tasks": self.known}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(str(details["task"]), list(details["known_tasks"]))


class PayloadError(BadInput):
    """A payload failed validation against its task's signature or model."""

    code = "payload_invalid"


class IdempotencyConflict(BadInput):
    code = "idempotency_conflict"
    http_status = 409

    def __init__(self, key: str, job_id: int):
        self.key = key
        self.job_id = job_id
        super().__init__(
            f"idempotency key {key!r} already names job {job_id} with a different task or payload"
        )

    def details(self) -> dict[str, Any]:
        return {"key": self.key, "job": self.job_id}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(str(details["key"]), int(details["job"]))


class InvalidTransition(BadInput):
    """The job (or worker) is not in a state that allows the requested change."""

    code = "invalid_transition"
    http_status = 409


class NestedTooDeep(BadInput):
    """JSON (a request body, a payload) nested deeper than the limit."""

    code = "nested_too_deep"

    def __init__(self, limit: int, what: str = "JSON"):
        self.limit = limit
        self.what = what
        super().__init__(f"{what} is nested deeper than {limit} levels, the limit")

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit, "what": self.what}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(int(details["limit"]), str(details["what"]))


class NotFound(ClusterAIError):
    """Something named by the caller does not exist (or is not theirs to see)."""

    code = "not_found"
    http_status = 404
    exit_code = EXIT_BAD_INPUT


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, job_id: int):
        self.job_id = job_id
        super().__init__(f"no job with id {job_id}")

    def details(self) -> dict[str, Any]:
        return {"job": self.job_id}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(int(details["job"]))


class RunNotFound(NotFound):
    code = "run_not_found"

    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"no pipeline run with id {run_id}")

    def details(self) -> dict[str, Any]:
        return {"run": self.run_id}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(int(details["run"]))


class WorkerNotFound(NotFound):
    code = "worker_not_found"

    def __init__(self, name: str, live: list[str]):
        self.name = name
        self.live = list(live)
        super().__init__(f"no worker named {name!r}; live workers: {', '.join(self.live) or '(none)'}")

    def details(self) -> dict[str, Any]:
        return {"worker": self.name, "live": self.live}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(str(details["worker"]), list(details["live"]))


class SweepNotFound(NotFound):
    code = "sweep_not_found"

    def __init__(self, sweep_id: int):
        self.sweep_id = sweep_id
        super().__init__(f"no sweep with id {sweep_id}")

    def details(self) -> dict[str, Any]:
        return {"sweep": self.sweep_id}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(int(details["sweep"]))


class RegistryNotFound(NotFound):
    """No registered model (or no such version or alias of one)."""

    code = "registry_not_found"


class ModelNotFound(NotFound):
    """No model server (or no backend of the gateway) has this model."""

    code = "model_not_found"


class StoreUnavailable(ClusterAIError):
    """The job store cannot be reached or is locked beyond its busy timeout."""

    code = "store_unavailable"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE
    label = "store unavailable"


class Unreachable(ClusterAIError):
    """A clusterai service (the API, a head) cannot be reached over the network."""

    code = "unreachable"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE
    label = "unreachable"


class AuthRefused(ClusterAIError):
    """No token, a bad one, or a role that may not do this (HTTP 401 or 403)."""

    code = "auth_refused"
    http_status = 401
    exit_code = EXIT_AUTH
    label = "refused"

    def __init__(self, message: str, status: int = 401):
        self.status = status
        super().__init__(message)

    def details(self) -> dict[str, Any]:
        return {"status": self.status}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(message, int(details.get("status", 401)))


class TryLater(ClusterAIError):
    """An error that says when to try again: `retry_after` seconds (an HTTP Retry-After header)."""

    def __init__(self, message: str, retry_after: float):
        self.retry_after = retry_after
        super().__init__(message)

    def details(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(message, float(details["retry_after"]))


class LimitReached(TryLater):
    """A caller used up what it may have at once (HTTP 429)."""

    code = "limit_reached"
    http_status = 429


class BackendsBusy(TryLater):
    """Every model backend that has the model is busy or out of rotation, and the queue is full or
    the wait ran out (503)."""

    code = "backends_busy"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE


class UpstreamFailed(ClusterAIError):
    """Every model backend tried failed before sending a byte (502)."""

    code = "upstream_failed"
    http_status = 502
    exit_code = EXIT_UNAVAILABLE


class ProviderError(ClusterAIError):
    """An autoscaler's provider could not launch, list or terminate workers (a host unreachable,
    a script failed)."""

    code = "provider_failed"
    http_status = 502


class GatewayRefused(BadInput):
    """A request no backend that has the model can take (400)."""

    code = "gateway_refused"
    http_status = 400


class JobFailed(ClusterAIError):
    """Raised by result() when a job ended dead or cancelled."""

    code = "job_failed"
    label = "job failed"

    def __init__(self, job_id: int, state: str, error: str | None):
        self.job_id = job_id
        self.state = state
        self.error = error
        super().__init__(f"job {job_id} ended {state}: {error or 'no error recorded'}")

    def details(self) -> dict[str, Any]:
        return {"job": self.job_id, "state": self.state, "job_error": self.error}

    @classmethod
    def from_details(cls, message: str, details: dict[str, Any]) -> ClusterAIError:
        return cls(int(details["job"]), str(details["state"]), details.get("job_error"))


class ResultTimeout(ClusterAIError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait."""

    code = "result_timeout"
    http_status = 504


class NonRetryableError(ClusterAIError):
    """Raise from a task to fail the job at once, without retries."""

    code = "non_retryable"


class JobTimeout(ClusterAIError):
    """Raised inside a task's thread when its attempt runs past the job's timeout."""

    code = "job_timeout"


class RemoteError(ClusterAIError):
    """The API refused or failed a call for a reason with no closer clusterai error."""

    code = "remote_error"

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")
