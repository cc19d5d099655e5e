"""Pipelines: a named DAG of stages, each stage a task, run as ordinary jobs.

A stage's payload is its `params` plus its `inputs`, each input a reference: `input.KEY` (the run's
input), `item` / `item.KEY` (the element a fanned-out stage runs for), or `STAGE` / `STAGE.KEY` (an
earlier stage's output). A stage may refer only to stages declared before it, so every pipeline is
acyclic by construction.

Fan-out: `each: input.KEY` or `each: STAGE.KEY` runs the stage once per element of that list.
A stage that uses a fanned-out stage runs once per element too (same item); with `gather: true`
it runs once, after every element has finished, and gets one list entry per element (null where
that element failed). Fan-outs do not nest.

`plan()` is a pure function: given the run's jobs so far it says which stage jobs to create next
and how far each stage is. The runner (service/runs.py) calls it whenever a stage job ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import ModuleType
from typing import Any

from clusterai.core.model import State, canonical_json
from clusterai.errors import BadInput, ConfigError

MAX_ITEMS = 10_000
_RESERVED = frozenset({"input", "item"})
_OPTIONS = frozenset({"queue", "priority", "retries", "backoff", "max_backoff", "timeout", "resources",
                      "labels", "prefers"})


class RunState(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every stage job that could run has run; some failed or were blocked
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not RunState.RUNNING


@dataclass(frozen=True)
class Ref:
    root: str  # "input", "item" or a stage name
    path: tuple[str, ...] = ()
    optional: bool = False  # written with a trailing "?": null when missing rather than an error

    @classmethod
    def parse(cls, text: Any, where: str) -> Ref:
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{where}: a reference must be a string such as input.videos, item or "
                           f"scan.timeline, got {text!r}")
        body = text.strip()
        optional = body.endswith("?")
        root, *path = body.rstrip("?").split(".")
        if not root or any(not p for p in path):
            raise BadInput(f"{where}: {text!r} is not a reference (no empty parts between dots)")
        if optional and not path:
            raise BadInput(f"{where}: {text!r}: only a key can be optional (item.version?)")
        return cls(root, tuple(path), optional)

    def __str__(self) -> str:
        return ".".join((self.root, *self.path)) + ("?" if self.optional else "")

    def get(self, value: Any) -> Any:
        try:
            return dig(value, self.path, self.root)
        except BadInput:
            if self.optional:
                return None
            raise


@dataclass(frozen=True)
class Stage:
    name: str
    task: str
    inputs: Mapping[str, str] = field(default_factory=dict)  # payload field -> reference
    params: Mapping[str, Any] = field(default_factory=dict)  # fixed payload fields
    each: str | None = None
    gather: bool = False
    after: tuple[str, ...] = ()  # extra parents whose outputs are not used
    options: Mapping[str, Any] = field(default_factory=dict)  # queue, priority, retries, timeout...

    def refs(self) -> dict[str, Ref]:
        return {arg: Ref.parse(text, f"stage {self.name!r}: inputs.{arg}") for arg, text in self.inputs.items()}

    def each_ref(self) -> Ref | None:
        return Ref.parse(self.each, f"stage {self.name!r}: each") if self.each is not None else None

    def parents(self) -> list[str]:
        named = [r.root for r in self.refs().values() if r.root not in _RESERVED]
        each = self.each_ref()
        if each is not None and each.root not in _RESERVED:
            named.append(each.root)
        return list(dict.fromkeys([*named, *self.after]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "task": self.task}
        for key in ("inputs", "params", "options"):
            if getattr(self, key):
                out[key] = dict(getattr(self, key))
        if self.each is not None:
            out["each"] = self.each
        if self.gather:
            out["gather"] = True
        if self.after:
            out["after"] = list(self.after)
        return out


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]
    description: str = ""
    args: str | None = None  # the input key that a command line's positional arguments fill

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _check(self)

    @classmethod
    def from_dict(cls, name: str, data: Any) -> Pipeline:
        where = f"pipeline {name!r}"
        if not isinstance(data, Mapping):
            raise BadInput(f"{where}: must be a mapping with 'stages', got {type(data).__name__}")
        unknown = set(data) - {"stages", "description", "args", "name"}
        if unknown:
            raise BadInput(f"{where}: unknown keys {sorted(unknown)}; allowed: args, description, stages")
        stages = data.get("stages")
        if not isinstance(stages, Sequence) or isinstance(stages, str) or not stages:
            raise BadInput(f"{where}: 'stages' must be a non-empty list")
        return cls(name=name, stages=tuple(_stage_from_dict(where, i, s) for i, s in enumerate(stages)),
                   description=str(data.get("description") or ""), args=data.get("args"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "stages": [s.to_dict() for s in self.stages]}
        if self.description:
            out["description"] = self.description
        if self.args:
            out["args"] = self.args
        return out

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise BadInput(f"pipeline {self.name!r} has no stage {name!r}")

    def domain(self, name: str) -> str | None:
        """The stage whose `each` fans this stage out (itself, or an ancestor), or None: runs once."""
        return _domains(self)[name]


def _stage_from_dict(where: str, index: int, data: Any) -> Stage:
    if not isinstance(data, Mapping):
        raise BadInput(f"{where}: stages[{index}] must be a mapping with name and task")
    unknown = set(data) - {"name", "task", "inputs", "params", "each", "gather", "after", "options"}
    if unknown:
        raise BadInput(f"{where}: stages[{index}]: unknown keys {sorted(unknown)}; allowed: name, task, "
                       "inputs, params, each, gather, after, options")
    for key in ("name", "task"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise BadInput(f"{where}: stages[{index}]: '{key}' must be a non-empty string")
    for key in ("inputs", "params", "options"):
        if not isinstance(data.get(key) or {}, Mapping):
            raise BadInput(f"{where}: stage {data['name']!r}: '{key}' must be a mapping")
    after = data.get("after") or []
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise BadInput(f"{where}: stage {data['name']!r}: 'after' must be a list of stage names")
    if not isinstance(data.get("gather", False), bool):
        raise BadInput(f"{where}: stage {data['name']!r}: 'gather' must be true or false")
    return Stage(name=data["name"], task=data["task"], inputs=dict(data.get("inputs") or {}),
                 params=dict(data.get("params") or {}), each=data.get("each"),
                 gather=bool(data.get("gather", False)), after=tuple(after),
                 options=dict(data.get("options") or {}))


def _check(p: Pipeline) -> None:
    where = f"pipeline {p.name!r}"
    if not p.name or not isinstance(p.name, str):
        raise BadInput("a pipeline needs a name")
    if not p.stages:
        raise BadInput(f"{where}: has no stages")
    seen: set[str] = set()
    for s in p.stages:
        if s.name in seen:
            raise BadInput(f"{where}: two stages are named {s.name!r}")
        if s.name in _RESERVED or "." in s.name:
            raise BadInput(f"{where}: {s.name!r} cannot name a stage (reserved, or has a dot)")
        overlap = set(s.inputs) & set(s.params)
        if overlap:
            raise BadInput(f"{where}: stage {s.name!r}: {sorted(overlap)} given both as inputs and params")
        bad_options = set(s.options) - _OPTIONS
        if bad_options:
            raise BadInput(f"{where}: stage {s.name!r}: unknown options {sorted(bad_options)}; "
                           f"allowed: {', '.join(sorted(_OPTIONS))}")
        for parent in s.parents():
            if parent not in seen:
                known = ", ".join(sorted(seen)) or "none yet"
                raise BadInput(f"{where}: stage {s.name!r} uses {parent!r}, which is not a stage declared "
                               f"before it (input, item, or earlier stages: {known})")
        if s.each is not None and s.gather:
            raise BadInput(f"{where}: stage {s.name!r}: 'each' and 'gather' cannot be combined")
        seen.add(s.name)
    _domains(p)


def _domains(p: Pipeline) -> dict[str, str | None]:
    where = f"pipeline {p.name!r}"
    domains: dict[str, str | None] = {}
    for s in p.stages:
        parent_domains = {d for d in (domains[name] for name in s.parents()) if d is not None}
        uses_item = any(r.root == "item" for r in s.refs().values())
        if s.each is not None:
            if parent_domains:
                raise BadInput(f"{where}: stage {s.name!r} fans out inside the fan-out of "
                               f"{sorted(parent_domains)}; fan-outs do not nest (gather first)")
            each = s.each_ref()
            assert each is not None
            if each.root == "item":
                raise BadInput(f"{where}: stage {s.name!r}: 'each' must name input.KEY or STAGE.KEY")
            domains[s.name] = s.name
        elif s.gather:
            if uses_item:
                raise BadInput(f"{where}: stage {s.name!r} gathers, so it has no 'item' to use")
            domains[s.name] = None
        else:
            if len(parent_domains) > 1:
                raise BadInput(f"{where}: stage {s.name!r} joins the fan-outs of {sorted(parent_domains)}; "
                               "set gather: true to wait for all of them")
            domains[s.name] = next(iter(parent_domains), None)
            if uses_item and domains[s.name] is None:
                raise BadInput(f"{where}: stage {s.name!r} uses 'item' but is not fanned out")
    return domains


def declared_pipelines(modules: Iterable[ModuleType]) -> dict[str, Pipeline]:
    """The pipelines task modules declare as `PIPELINES = (Pipeline, ...)` (the built-in
    video-analysis pipeline is workloads/media.py's), by name."""
    found: dict[str, Pipeline] = {}
    for module in modules:
        for pipeline in getattr(module, "PIPELINES", ()):
            if not isinstance(pipeline, Pipeline):
                raise ConfigError(f"{module.__name__}.PIPELINES holds {pipeline!r}, not a Pipeline")
            found[pipeline.name] = pipeline
    return found


def dig(value: Any, path: Sequence[str], what: str) -> Any:
    """value[path[0]][path[1]]..., list indices as numbers; BadInput naming what is missing."""
    for i, key in enumerate(path):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.lstrip("-").isdigit() and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            at = ".".join((what, *path[:i + 1]))
            raise BadInput(f"{at}: not found")
    return value


def input_key(task: str, payload: Mapping[str, Any], salt: str = "") -> str:
    """The idempotency key of a stage job: the same task on the same input is done once, by
    whichever run asked first, and later runs reuse it (a fresh run salts it with its id)."""
    digest = hashlib.sha256(canonical_json({"task": task, "payload": payload, "salt": salt}).encode())
    return f"pipeline:{digest.hexdigest()}"


# -- planning ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobView:
    """What planning needs to know about one stage job."""

    job_id: int
    state: State
    error: str | None = None


@dataclass(frozen=True)
class NewJob:
    stage: str
    item: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class StageProgress:
    name: str
    task: str
    total: int | None  # None: the list it fans out over is not known yet
    counts: dict[str, int]  # by status: a job state, or waiting / blocked / error


@dataclass(frozen=True)
class Plan:
    new: list[NewJob]
    stages: list[StageProgress]
    state: RunState
    problems: dict[str, str]  # "stage/item" -> why it cannot run


def plan(pipeline: Pipeline, run_input: Mapping[str, Any], jobs: Mapping[tuple[str, int], JobView],
         results: Callable[[Sequence[int]], Mapping[int, Any]], problems: Mapping[str, str] = {}) -> Plan:
    """What to create next for one run, and how far every stage is.

    `jobs` holds the stage jobs created so far; `results(job_ids)` fetches succeeded jobs'
    outputs (called only for the outputs a new payload needs); `problems` are stage instances that
    could not become jobs earlier (their payload was refused), which count as failed."""
    domains = _domains(pipeline)
    widths: dict[str, list[Any] | None] = {}
    status: dict[tuple[str, int], str] = {}
    new: list[NewJob] = []
    found: dict[str, str] = dict(problems)
    progress: list[StageProgress] = []

    def ok(stage: str, item: int) -> bool | None:
        """True: succeeded, False: failed for good, None: not finished."""
        st = status.get((stage, item))
        if st == State.SUCCEEDED.value:
            return True
        if st in ("waiting", None) or st in (State.PENDING.value, State.QUEUED.value, State.RUNNING.value):
            return None
        return False

    for s in pipeline.stages:
        domain = domains[s.name]
        items: list[Any] | None = [None]
        if domain is not None:
            if domain not in widths:
                widths[domain] = _fan_out(pipeline.stage(domain), run_input, status, jobs, results, found)
            items = widths[domain]
        counts: dict[str, int] = {}
        for i, element in enumerate(items or []):
            key = f"{s.name}/{i}"
            if key in found:
                st = "error"
            elif (s.name, i) in jobs:
                st = jobs[(s.name, i)].state.value
            else:
                st = _ready(pipeline, s, i, domains, widths, ok)
                if st == "ready":
                    try:
                        payload = _payload(s, i, element, run_input, domains, widths, jobs, ok, results)
                    except BadInput as exc:
                        found[key] = str(exc)
                        st = "error"
                    else:
                        new.append(NewJob(s.name, i, payload))
                        st = State.QUEUED.value
            status[(s.name, i)] = st
            counts[st] = counts.get(st, 0) + 1
        progress.append(StageProgress(s.name, s.task, None if items is None else len(items), counts))
    return Plan(new, progress, _run_state(progress, new, found), found)


def _fan_out(origin: Stage, run_input: Mapping[str, Any], status: Mapping[tuple[str, int], str],
             jobs: Mapping[tuple[str, int], JobView], results: Callable[[Sequence[int]], Mapping[int, Any]],
             found: dict[str, str]) -> list[Any] | None:
    ref = origin.each_ref()
    assert ref is not None
    where = f"stage {origin.name!r}: each {ref}"
    if ref.root == "input":
        source: Any = run_input
    else:
        st = status.get((ref.root, 0))
        if st != State.SUCCEEDED.value:
            if st not in (None, "waiting", State.PENDING.value, State.QUEUED.value, State.RUNNING.value):
                found.setdefault(f"{origin.name}/*", f"{where}: {ref.root} did not succeed")
            return None
        job_id = jobs[(ref.root, 0)].job_id
        source = results([job_id])[job_id]
    try:
        value = dig(source, ref.path, ref.root)
    except BadInput as exc:
        found[f"{origin.name}/*"] = f"{where}: {exc}"
        return []
    if not isinstance(value, list):
        found[f"{origin.name}/*"] = f"{where}: must be a list, got {type(value).__name__}"
        return []
    if len(value) > MAX_ITEMS:
        found[f"{origin.name}/*"] = f"{where}: {len(value)} elements; at most {MAX_ITEMS} per fan-out"
        return []
    return value


def _ready(pipeline: Pipeline, s: Stage, i: int, domains: Mapping[str, str | None],
           widths: Mapping[str, list[Any] | None], ok: Callable[[str, int], bool | None]) -> str:
    """ready, waiting (a parent has not finished) or blocked (a parent failed)."""
    waiting = False
    for parent in s.parents():
        pd = domains[parent]
        if pd is None:
            outcome = ok(parent, 0)
        elif domains[s.name] == pd:
            outcome = ok(parent, i)
        else:  # gathering a fan-out: every element must have finished, failed ones included
            width = widths.get(pd)
            if width is None:
                waiting = True
                continue
            finished = [ok(parent, j) for j in range(len(width))]
            outcome = None if any(o is None for o in finished) else True
        if outcome is False:
            return "blocked"
        if outcome is None:
            waiting = True
    return "waiting" if waiting else "ready"


def _payload(s: Stage, i: int, element: Any, run_input: Mapping[str, Any], domains: Mapping[str, str | None],
             widths: Mapping[str, list[Any] | None], jobs: Mapping[tuple[str, int], JobView],
             ok: Callable[[str, int], bool | None], results: Callable[[Sequence[int]], Mapping[int, Any]]
             ) -> dict[str, Any]:
    payload = dict(s.params)
    for arg, ref in s.refs().items():
        if ref.root == "input":
            payload[arg] = ref.get(run_input)
        elif ref.root == "item":
            payload[arg] = ref.get(element)
        elif domains[ref.root] is None or domains[ref.root] == domains[s.name]:
            job_id = jobs[(ref.root, 0 if domains[ref.root] is None else i)].job_id
            payload[arg] = ref.get(results([job_id])[job_id])
        else:  # gathering: one entry per element, None where it failed
            width = widths[domains[ref.root] or ""] or []
            ids = {j: jobs[(ref.root, j)].job_id for j in range(len(width)) if ok(ref.root, j)}
            found = results(list(ids.values()))
            payload[arg] = [ref.get(found[ids[j]]) if j in ids else None for j in range(len(width))]
    return payload


def _run_state(progress: Sequence[StageProgress], new: Sequence[NewJob], problems: Mapping[str, str]) -> RunState:
    unfinished = {"waiting", State.PENDING.value, State.QUEUED.value, State.RUNNING.value}
    if new or any(unfinished & set(p.counts) for p in progress):
        return RunState.RUNNING
    # a fan-out whose list never came (its source failed) leaves its stage's total unknown
    done = all(p.total is not None and set(p.counts) <= {State.SUCCEEDED.value} for p in progress)
    return RunState.SUCCEEDED if done and not problems else RunState.FAILED
