"""Request bodies of the REST API (pydantic), with errors that name the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clusterai.core import nesting
from clusterai.core.model import KEY_PATTERN, NAME_PATTERN, VALUE_PATTERN
from clusterai.errors import MalformedRequest, NestedTooDeep, RequestInvalid

M = TypeVar("M", bound=BaseModel)
Name = Annotated[str, Field(min_length=1, max_length=200)]
MAX_ID = 2**63 - 1  # the largest id the store can hold: bigger numbers are refused at the edge
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# queue names, label/resource/preference keys and values: a safe character set (core/model.py says why)
SafeName = Annotated[str, Field(pattern=NAME_PATTERN, description="1 to 100 of A-Z a-z 0-9 _ . : -")]
SafeValue = Annotated[str, Field(pattern=VALUE_PATTERN, description="1 to 200 of A-Z a-z 0-9 _ . : / -")]
Key = Annotated[str, Field(pattern=KEY_PATTERN, description="1 to 200 characters, no control characters")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobRequest(_Body):
    """One job: a task name, its JSON payload, and optional placement and retry settings."""

    task: Name
    payload: dict[str, Any] = Field(default_factory=dict)
    queue: SafeName | None = None
    priority: Literal["low", "normal", "high", "critical"] | None = None
    run_at: float | None = Field(None, description="epoch seconds before which it may not run")
    delay: float | None = Field(None, ge=0, le=10 * 365 * 86400, description="seconds before it may run")
    timeout: float | None = Field(None, gt=0, le=30 * 86400, description="per-attempt timeout, seconds")
    retries: int | None = Field(None, ge=0, le=1000)
    backoff: float | None = Field(None, ge=0, le=86400)
    max_backoff: float | None = Field(None, ge=0, le=30 * 86400)
    idempotency_key: Key | None = Field(None, description="same key and payload: the same job; the key is "
                                        "this token's own (another token's same key is another job)")
    resources: dict[SafeName, Annotated[float, Field(ge=0)]] = Field(default_factory=dict,
                                                                    description="what it needs, e.g. GPU: 1")
    labels: dict[SafeName, SafeValue] = Field(default_factory=dict)
    prefers: dict[SafeName, SafeValue] = Field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        return self.model_dump(exclude={"task", "payload"}, exclude_none=True)

    def kind(self) -> tuple[Any, ...]:
        """What decides a job's options besides its payload and idempotency key: jobs of one kind
        share them (cheap to compute: a batch of a thousand alike jobs resolves options once)."""
        return (self.task, self.queue, self.priority, self.run_at, self.delay, self.timeout, self.retries,
                self.backoff, self.max_backoff, tuple(sorted(self.resources.items())),
                tuple(sorted(self.labels.items())), tuple(sorted(self.prefers.items())))


class BatchRequest(_Body):
    """Many jobs, stored all or none."""

    jobs: list[JobRequest] = Field(min_length=1, max_length=100_000)


class RequeueRequest(_Body):
    ids: list[Id] = Field(default_factory=list, max_length=100_000)
    all: bool = Field(False, description="requeue every dead letter")


class PipelineRunRequest(_Body):
    """Start a pipeline run. `pipeline` (a definition: stages of tasks) only on POST /api/v1/pipelines/runs;
    a named pipeline takes its name from the path."""

    input: dict[str, Any] = Field(default_factory=dict, description="what the stages read as input.KEY")
    fresh: bool = Field(False, description="run every stage again rather than reuse finished ones")
    pipeline: dict[str, Any] | None = None


class SweepRequest(_Body):
    """Start a sweep (docs/training.md): `objective` (a task), `space`, `trials`; the rest is optional.
    The sweep's own checks (service/sweeps.py) name what is wrong in a definition."""

    objective: Annotated[str, Field(min_length=1, max_length=300)]
    space: dict[str, Any]
    trials: int | None = Field(None, description="how many trials (default for a grid: every point)")
    name: str | None = None
    sampler: str | dict[str, Any] | None = Field(None, description="grid, random, tpe, or {kind, seed, startup_trials}")
    metric: str | None = Field(None, description="the result's (or report's) metric to optimise; default score")
    mode: Literal["max", "min"] | None = None
    concurrency: int | None = None
    pruner: str | dict[str, Any] | None = Field(None, description="none, median, halving, or {kind, options}")
    # "register" is a BaseModel attribute: the field keeps the JSON name through its alias
    register_model: str | dict[str, Any] | None = Field(None, alias="register",
                                                        description="register the best model: name or {name, alias}")
    job: dict[str, Any] | None = Field(None, description="queue, priority, timeout, retries, resources, labels")

    def definition(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)


class AliasRequest(_Body):
    version: int | str = Field(description="the version number (or another alias) the alias points at")


class RegisterRequest(_Body):
    """A version from an artifact already in the artifact store (a job's result holds one)."""

    artifact: dict[str, Any] = Field(description="{artifact: URL, size, sha256}")
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    alias: str | None = None
    job_id: Id | None = None


class TokenRequest(_Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    role: Literal["admin", "operator", "submitter", "viewer", "worker"]
    expires_in: float | None = Field(None, gt=0, le=10 * 365 * 86400, description="seconds until it expires")
    uses: int | None = Field(None, ge=1, le=10_000, description="a join token (role worker): how many joins")


def field_errors(exc: ValidationError, prefix: str = "body") -> list[dict[str, str]]:
    return [{"field": ".".join([prefix, *(str(p) for p in e["loc"])]), "message": e["msg"]} for e in exc.errors()]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that reads its body itself (after its token check: FastAPI would
    parse a declared body first, and answer a malformed one 400 before saying 401)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def parse_json(body: bytes) -> Any:
    """The body as JSON, nested no deeper than nesting.MAX_DEPTH levels (400 otherwise, like any
    body that cannot be read)."""
    try:
        return nesting.loads(body)
    except NestedTooDeep as exc:
        raise MalformedRequest(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"malformed JSON body: {exc}") from None


def parse_body(body: bytes, model: type[M]) -> M:
    try:
        return model.model_validate(parse_json(body))
    except ValidationError as exc:
        raise RequestInvalid(field_errors(exc)) from None


def parse_submission(data: Any) -> JobRequest | BatchRequest:
    """One job, or a batch when the object has a `jobs` key."""
    if not isinstance(data, dict):
        raise RequestInvalid([{"field": "body", "message": f"expected a JSON object, got {type(data).__name__}"}])
    model: type[JobRequest] | type[BatchRequest] = BatchRequest if "jobs" in data else JobRequest
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(field_errors(exc)) from None


def submission_schema() -> dict[str, Any]:
    """The OpenAPI schema of POST /api/v1/jobs: one job, or {"jobs": [...]}."""
    job = JobRequest.model_json_schema()
    batch = {"title": "BatchRequest", "type": "object", "additionalProperties": False, "required": ["jobs"],
             "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": 100_000, "items": job}}}
    return {"oneOf": [job, batch]}


# -- the model fleet (Ollama's management endpoints on the gateway, and load/unload) -------------

BackendNames = Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=1000)]


class _FleetBody(_Body):
    """Ollama's requests name the model `model` (older clients: `name`); `backends` (clusterai's)
    chooses where, by backend name."""

    model: str | None = Field(None, min_length=1, max_length=300)
    name: str | None = Field(None, min_length=1, max_length=300)
    backends: BackendNames | None = Field(None, description="backend names; default: the gateway chooses")

    @property
    def model_name(self) -> str:
        found = self.model or self.name
        if not found:
            raise RequestInvalid([{"field": "model", "message": "'model' is required"}])
        return found


class PullRequest(_FleetBody):
    replicas: int | None = Field(None, ge=1, le=1000, description="pull onto this many backends, those with the "
                                 "most free memory (default: gateway.models' replicas, else every Ollama backend)")
    stream: bool = True
    insecure: bool = False


class DeleteRequest(_FleetBody):
    pass


class CopyRequest(_Body):
    source: str = Field(min_length=1, max_length=300)
    destination: str = Field(min_length=1, max_length=300)
    backends: BackendNames | None = None


class LoadRequest(_FleetBody):
    replicas: int | None = Field(None, ge=1, le=1000, description="load on this many of the backends that have it")
    keep_alive: str | float | None = Field(None, description="Ollama's form: '30m', seconds, a negative number "
                                           "for good (default: gateway.models' pin, else the backend's default)")


class UnloadRequest(_FleetBody):
    pass
