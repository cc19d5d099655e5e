"""Tasks registered for the unit tests (all named "unit.*"), imported by the test modules.

Registration happens once at import; the registry is process-global, so the names are unique
to these tests and never collide with the tasks that ship with clusterai.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from clusterai.core.tasks import task
from clusterai.errors import NonRetryableError, PayloadError
from clusterai.worker.execute import current_job


@task("unit.add")
def add(a: int, b: int = 2) -> int:
    return a + b


@task("unit.constrained")
def constrained(count: int = Field(ge=1, le=10), label: str = "x") -> dict:
    return {"count": count, "label": label}


@task("unit.anything")
def anything(value: Any = None) -> Any:
    return value


class Resize(BaseModel):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    mode: str = "fit"


@task("unit.resize")
def resize(request: Resize) -> dict:
    assert isinstance(request, Resize)  # the model itself is passed, not its fields
    return {"area": request.width * request.height, "mode": request.mode}


# -- tasks with options, for build_spec precedence ------------------------------------------


@task("unit.plain")
def plain() -> None:
    return None


@task("unit.opts", queue="gpu", retries=5, backoff=2.0, priority="high", timeout=30.0,
      resources={"gpu": 1.0, "mem": 2.0})
def with_options() -> None:
    return None


@task("unit.low", priority="low")
def low_priority() -> None:
    return None


# -- tasks for engine.execute ---------------------------------------------------------------


@task("unit.boom")
def boom(message: str = "boom") -> None:
    raise ValueError(message)


@task("unit.refuse")
def refuse() -> None:
    raise NonRetryableError("this input can never work")


@task("unit.bad_input")
def bad_input() -> None:
    raise PayloadError("the payload made sense to the schema but not to the task")


@task("unit.declared", non_retryable=(KeyError,))
def declared(kind: str) -> None:
    if kind == "key":
        raise KeyError("missing")
    raise RuntimeError("transient")


@task("unit.not_json")
def not_json(kind: str) -> Any:
    if kind == "set":
        return {1, 2, 3}
    if kind == "nan":
        return float("nan")
    return object()


@task("unit.spin")
def spin(seconds: float = 5.0) -> dict:
    """A pure-Python busy loop; gives up by itself after `seconds` so a broken watchdog cannot hang."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return {"spun": n}


@task("unit.whoami")
def whoami() -> dict:
    job = current_job()
    assert job is not None
    return {"id": job.job_id, "attempt": job.attempt, "worker": job.worker}


@task("unit.long_error")
def long_error(size: int) -> None:
    raise RuntimeError("x" * size)
