"""The task registry: Python functions named by a string, with a payload schema taken from their
signature (or a pydantic model), so that a bad payload is refused at submit time.

Workers import the same task modules (named by dotted path in cluster.yaml or on the command
line) and run tasks by name; nothing but JSON crosses between them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Union

try:
    import pydantic
    from pydantic import BaseModel, ConfigDict, create_model
except ImportError:  # a light worker: payloads were validated on submit, by a node that has pydantic
    pydantic = None  # type: ignore[assignment]
    BaseModel = object  # type: ignore[assignment,misc]

from clusterai.core.model import Priority
from clusterai.errors import BadInput, ConfigError, NonRetryableError, PayloadError, UnknownTaskError

log = logging.getLogger("clusterai.core.tasks")

# Imported on every worker and client: the tasks that ship with clusterai. Each needs libraries a
# light worker may lack (an extra, e.g. numpy for the demo); such a worker skips it, says which
# tasks it has, and gets only jobs of those.
BUILTIN_TASK_MODULES = ("clusterai.workloads.demo", "clusterai.workloads.media", "clusterai.workloads.llm_batch",
                        "clusterai.workloads.training")


# -- parameter markers: `Annotated[int, Range(16, 1920)]` ------------------------------------------
# Plain objects, so that task modules need no pydantic (a light worker has none): with pydantic they
# become constraints of the payload model (a bad value is a 422 at submit, and the published schema
# shows the bounds); without it the same checks run before the task is called.

@dataclass(frozen=True)
class Range:
    """Bounds on a number: `ge`/`le` inclusive, `gt`/`lt` exclusive."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__}"
        for bound, fails, words in ((self.ge, lambda b: not value >= b, "greater than or equal to"),
                                    (self.gt, lambda b: not value > b, "greater than"),
                                    (self.le, lambda b: not value <= b, "less than or equal to"),
                                    (self.lt, lambda b: not value < b, "less than")):
            if bound is not None and fails(bound):
                return f"must be {words} {bound:g}, got {value!r}"
        return None


@dataclass(frozen=True)
class Length:
    """How many items a list (or characters a string) may have."""

    min: int | None = None
    max: int | None = None

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, (list, str)):
            return None
        if (self.min is not None and len(value) < self.min) or (self.max is not None and len(value) > self.max):
            wanted = (f"exactly {self.min}" if self.min == self.max else
                      f"{self.min if self.min is not None else 0} to {self.max if self.max is not None else 'any'}")
            return f"must have {wanted} items, got {len(value)}"
        return None


@dataclass(frozen=True)
class Check:
    """A function that returns the value or raises ValueError (or BadInput) saying what is allowed;
    `description` and `pattern` are only shown in the schema."""

    fn: Callable[[Any], Any]
    description: str | None = None
    pattern: str | None = None

    def problem(self, value: Any) -> str | None:
        try:
            self.fn(value)
        except (ValueError, TypeError, BadInput) as exc:
            return str(exc)
        return None


_MARKERS = (Range, Length, Check)


@dataclass(frozen=True)
class TaskDef:
    name: str
    fn: Callable[..., Any]
    model: type[BaseModel] | None  # None on a light worker (no pydantic): names are checked, not types
    unpack: bool  # call fn(**fields) rather than fn(model_instance)
    queue: str | None
    priority: Priority | None
    retries: int | None
    backoff: float | None
    max_backoff: float | None
    timeout: float | None
    resources: dict[str, float]
    non_retryable: tuple[type[BaseException], ...]
    gateway: bool = False  # calls the cluster's LLM gateway: its attempts carry where and how
    provenance: bool = False  # its attempts carry the pipeline run that made the job (current_job().run)

    def validate(self, payload: Any) -> dict[str, Any]:
        """The payload as the canonical JSON object the store keeps, or PayloadError."""
        if not isinstance(payload, dict):
            raise PayloadError(
                f"task {self.name!r}: payload must be a JSON object, got {type(payload).__name__}"
            )
        if self.model is None:
            problem = _check_names(self.fn, payload) or _check_marked(self.fn, payload)
            if problem:
                raise PayloadError(f"task {self.name!r}: {problem}")
            return dict(payload)
        try:
            model = self.model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise PayloadError(f"task {self.name!r}: {_describe(exc)}") from None
        return model.model_dump(mode="json")

    def call(self, payload: dict[str, Any]) -> Any:
        if self.model is None:
            problem = _check_names(self.fn, payload) or _check_marked(self.fn, payload)
            if problem:
                raise NonRetryableError(f"invalid payload: {problem}")
            return self.fn(**payload)
        try:
            model = self.model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise NonRetryableError(f"invalid payload: {_describe(exc)}") from None
        if self.unpack:
            return self.fn(**{name: getattr(model, name) for name in type(model).model_fields})
        return self.fn(model)

    def schema(self) -> dict[str, Any]:
        if self.model is None:
            return {"type": "object", "properties": {n: {} for n in inspect.signature(self.fn).parameters}}
        return self.model.model_json_schema()


def _check_names(fn: Callable[..., Any], payload: dict[str, Any]) -> str | None:
    """Without pydantic: the payload's keys against the function's parameters."""
    params = inspect.signature(fn).parameters
    unknown = sorted(set(payload) - set(params))
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in payload)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    return None


def _check_marked(fn: Callable[..., Any], payload: dict[str, Any]) -> str | None:
    """Without pydantic: the markers (Range, Length, Check) of the parameters given."""
    hints = _resolved_hints(fn)
    for name, value in payload.items():
        problem = _check_value(hints.get(name, Any), value)
        if problem:
            return f"{name}: {problem}"
    return None


def _check_value(hint: Any, value: Any) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        problem = _check_value(args[0], value)
        for meta in args[1:]:
            if problem is None and isinstance(meta, _MARKERS):
                problem = meta.problem(value)
        return problem
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_check_value(arm, value) for arm in args if arm is not type(None)]
        return None if not problems or None in problems else problems[0]
    if origin is list and args and isinstance(value, list):
        for i, item in enumerate(value):
            problem = _check_value(args[0], item)
            if problem:
                return f"item {i}: {problem}"
    return None


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_REGISTRY: dict[str, TaskDef] = {}
_REGISTRY_LOCK = threading.Lock()


def _model_for(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel] | None, bool]:
    params = list(inspect.signature(fn).parameters.values())
    if pydantic is None:
        return None, True
    hints = _resolved_hints(fn)
    if len(params) == 1:
        hint = hints.get(params[0].name)
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            return hint, False
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ConfigError(f"task {name!r}: parameter {p.name!r} must be a plain keyword argument")
        annotation = _with_constraints(hints.get(p.name, Any))
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (annotation, default)
    model = create_model(
        f"{name.replace('.', '_')}_payload",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        **fields,
    )
    return model, True


def _resolved_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)  # extras: the Annotated markers
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return dict(getattr(fn, "__annotations__", {}))


def _with_constraints(hint: Any) -> Any:
    """The hint with every marker (at any depth: `list[Annotated[float, Range(...)]] | None`)
    replaced by what pydantic enforces and publishes in the schema."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        metas = tuple(c for m in args[1:] for c in _constraints(m))
        params = (_with_constraints(args[0]), *metas)
        return Annotated[params]
    if not args or origin is typing.Literal:
        return hint
    inner = tuple(_with_constraints(a) for a in args)
    if inner == args:
        return hint
    if origin in (Union, types.UnionType):
        return Union[inner]  # noqa: UP007 - built from a tuple
    return origin[inner] if len(inner) > 1 else origin[inner[0]]


def _constraints(meta: Any) -> tuple[Any, ...]:
    if isinstance(meta, Range):
        return (pydantic.Field(ge=meta.ge, le=meta.le, gt=meta.gt, lt=meta.lt),)
    if isinstance(meta, Length):
        return (pydantic.Field(min_length=meta.min, max_length=meta.max),)
    if not isinstance(meta, Check):
        return (meta,)
    fn = meta.fn

    def check(value: Any) -> Any:
        try:
            fn(value)
        except BadInput as exc:  # pydantic reports a ValueError as a validation error; not BadInput
            raise ValueError(str(exc)) from None
        return value

    shown = pydantic.Field(description=meta.description,
                           json_schema_extra={"pattern": meta.pattern} if meta.pattern else None)
    return (pydantic.AfterValidator(check), shown)


def task(
    name: str | None = None,
    *,
    retries: int | None = None,
    backoff: float | None = None,
    max_backoff: float | None = None,
    timeout: float | None = None,
    queue: str | None = None,
    priority: str | Priority | None = None,
    resources: dict[str, float] | None = None,
    non_retryable: Iterable[type[BaseException]] = (),
    gateway: bool = False,
    provenance: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a task. Unset options fall back to the queue's, then the defaults.
    `gateway=True`: the task calls the cluster's LLM gateway; each attempt is given its address and
    a credential for inference only (`current_job().gateway`). `provenance=True`: each attempt is
    told which pipeline run made its job (`current_job().run`, looked up by the head; every attempt
    is told its job's owner). Parameters may carry Range, Length and Check markers (Annotated)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name or f"{fn.__module__}.{fn.__qualname__}"
        model, unpack = _model_for(fn, task_name)
        definition = TaskDef(
            name=task_name, fn=fn, model=model, unpack=unpack, queue=queue,
            priority=Priority.parse(priority) if priority is not None else None,
            retries=retries, backoff=backoff, max_backoff=max_backoff, timeout=timeout,
            resources=dict(resources or {}), non_retryable=tuple(non_retryable), gateway=gateway,
            provenance=provenance,
        )
        with _REGISTRY_LOCK:
            current = _REGISTRY.get(task_name)
            if current is not None and current.fn.__qualname__ != fn.__qualname__:
                raise ConfigError(f"task name {task_name!r} is registered twice")
            _REGISTRY[task_name] = definition
        fn.task_name = task_name  # type: ignore[attr-defined]
        return fn

    return register


def get_task(name: str) -> TaskDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(name, list(_REGISTRY)) from None


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


_LOADED: dict[str, types.ModuleType] = {}  # the task modules imported so far, by name


def import_task_modules(modules: Iterable[str]) -> None:
    """Import the built-in task modules and the given ones; a bad name is a config error."""
    for module in BUILTIN_TASK_MODULES:
        try:
            _LOADED[module] = importlib.import_module(module)
        except ImportError as exc:
            log.info("built-in tasks of %s not available here (%s)", module, exc)
    for module in modules:
        try:
            _LOADED[module] = importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"tasks: cannot import task module {module!r}: {exc}") from None


def task_modules() -> list[types.ModuleType]:
    """The task modules imported so far (a module also declares its built-in pipelines: PIPELINES)."""
    for name in BUILTIN_TASK_MODULES:  # also when imported directly rather than through the config
        if name not in _LOADED and name in sys.modules:
            _LOADED[name] = sys.modules[name]
    return list(_LOADED.values())


def parse_payload_text(text: str) -> Any:
    """Parse a payload given as text (CLI, files); non-JSON is a PayloadError naming the spot."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def describe_tasks() -> list[dict[str, Any]]:
    """Every registered task with its settings and payload schema (the API's and CLI's task list)."""
    out = []
    for name in known_tasks():
        t = get_task(name)
        out.append({"name": name, "queue": t.queue, "retries": t.retries, "timeout": t.timeout,
                    "resources": t.resources, "payload_schema": t.schema()})
    return out
