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
and how far each stage is. `Planner` gives the same answers incrementally: told which jobs changed,
it plans again only what depends on them, so the runner (service/runs.py), which advances a run
whenever one of its stage jobs ends, pays for what changed rather than for the size of the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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

Results = Callable[[Sequence[int]], Mapping[int, Any]]
_UNFINISHED = frozenset({"waiting", State.PENDING.value, State.QUEUED.value, State.RUNNING.value})


@dataclass(frozen=True, slots=True)
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
         results: Results, problems: Mapping[str, str] = {}) -> Plan:
    """What to create next for one run, and how far every stage is.

    `jobs` holds the stage jobs created so far; `results(job_ids)` fetches succeeded jobs'
    outputs (called only for the outputs a new payload needs); `problems` are stage instances that
    could not become jobs earlier (their payload was refused), which count as failed."""
    planner = Planner(pipeline, run_input, jobs, problems)
    new = planner.step(results)
    return Plan(new, planner.progress(), planner.state(), dict(planner.problems))


class Planner:
    """One run's plan kept up to date as its jobs change. Told that a job's state changed, or that
    a planned job was created or refused, the next `step()` plans again only the stage instances
    that depend on it (an element's chain, a fan-in once its last element has finished, a fan-out's
    elements once its list is known), so a step costs what changed, not the size of the run.
    `plan()` is the first step of a fresh one; both give the same answers for the same jobs."""

    def __init__(self, pipeline: Pipeline, run_input: Mapping[str, Any],
                 jobs: Mapping[tuple[str, int], JobView], problems: Mapping[str, str] = {}):
        self.pipeline = pipeline
        self.input = run_input
        self.jobs = dict(jobs)
        self.problems = dict(problems)
        self.revision = 0  # counts changes to `problems`
        self.widths: dict[str, list[Any] | None] = {}  # fan-out -> its list (None: not known yet)
        stages = pipeline.stages
        self._stages = {s.name: s for s in stages}
        self._domains = _domains(pipeline)
        self._refs = {s.name: s.refs() for s in stages}
        self._parents = {s.name: s.parents() for s in stages}
        self._children: dict[str, list[str]] = {s.name: [] for s in stages}
        self._members: dict[str, list[str]] = {}  # fan-out -> its stages
        self._gatherers: dict[str, list[str]] = {}  # fan-out -> the stages that gather it
        self._fans_over: dict[str, list[str]] = {s.name: [] for s in stages}  # stage -> fan-outs over its output
        for s in stages:
            domain = self._domains[s.name]
            if domain is not None:
                self._members.setdefault(domain, []).append(s.name)
            for parent in self._parents[s.name]:
                self._children[parent].append(s.name)
                pd = self._domains[parent]
                if pd is not None and pd != domain and s.name not in self._gatherers.setdefault(pd, []):
                    self._gatherers[pd].append(s.name)
            each = s.each_ref()
            if each is not None and each.root != "input":
                self._fans_over[each.root].append(s.name)
        self._by_id: dict[int, list[tuple[str, int]]] = {}  # one job may be several instances (same payload)
        for key, view in self.jobs.items():
            self._by_id.setdefault(view.job_id, []).append(key)
        self._status: dict[tuple[str, int], str] = {}
        self._counts: dict[str, dict[str, int]] = {s.name: {} for s in stages}
        self._planned: set[tuple[str, int]] = set()  # planned, not created yet
        self._dirty: dict[str, set[int]] = {}  # stage -> items to plan again
        self._fetch: Results | None = None
        for s in stages:  # everything is to be planned; a fan-out over a stage's output waits for it
            if self._domains[s.name] is None:
                self._mark(s.name, (0,))
            elif self._domains[s.name] == s.name and (ref := s.each_ref()) is not None and ref.root == "input":
                self._refresh_width(s.name)

    # -- telling it what changed ------------------------------------------------------------------

    def changed(self, job_id: int, state: State) -> None:
        """A job of this run is now in `state` (as the store says)."""
        for key in self._by_id.get(job_id, ()):
            view = self.jobs[key]
            if view.state is not state:
                self.jobs[key] = JobView(job_id, state, view.error)
                self._mark(key[0], (key[1],))

    def created(self, stage: str, item: int, view: JobView) -> None:
        """A planned instance is now this job (made, or found by its key: then its other instances,
        if any, are in the job's state now too: a dead one found again is queued again)."""
        key = (stage, item)
        self._planned.discard(key)
        old = self.jobs.get(key)
        if old is not None and old.job_id != view.job_id:
            self._by_id[old.job_id].remove(key)
        if old is None or old.job_id != view.job_id:
            self._by_id.setdefault(view.job_id, []).append(key)
        self.jobs[key] = view
        self._mark(stage, (item,))
        self.changed(view.job_id, view.state)

    def refused(self, stage: str, item: int, why: str) -> None:
        """A planned instance could not become a job: a problem, which counts as failed."""
        self._planned.discard((stage, item))
        self._problem(f"{stage}/{item}", why)
        self._mark(stage, (item,))

    # -- planning ---------------------------------------------------------------------------------

    def step(self, results: Results) -> list[NewJob]:
        """Plan every instance that may have changed; the jobs to create now, by stage, then item."""
        self._fetch = results
        new: list[NewJob] = []
        try:
            for s in self.pipeline.stages:  # parents come first: marks only ever go to later stages
                items = self._dirty.pop(s.name, None)
                if items:
                    new += self._plan_stage(s, sorted(items))
        finally:
            self._fetch = None
        return new

    def progress(self) -> list[StageProgress]:
        out = []
        for s in self.pipeline.stages:
            domain = self._domains[s.name]
            width = self.widths.get(domain) if domain is not None else [None]
            out.append(StageProgress(s.name, s.task, None if width is None else len(width),
                                     dict(self._counts[s.name])))
        return out

    def state(self) -> RunState:
        if self._dirty:  # not planned yet
            return RunState.RUNNING
        return _run_state(self.progress(), self._planned, self.problems)

    def unfinished(self) -> set[int]:
        """The ids of the stage jobs that have not finished."""
        return {v.job_id for v in self.jobs.values() if not v.state.terminal}

    def _plan_stage(self, s: Stage, items: Sequence[int]) -> list[NewJob]:
        ready = []
        for i in items:
            st = self._evaluate(s.name, i)
            if st == "ready":
                ready.append(i)
            else:
                self._set(s.name, i, st)
        new = []
        for i, payload in self._payloads(s, ready):
            if isinstance(payload, BadInput):
                self._problem(f"{s.name}/{i}", str(payload))
                self._set(s.name, i, "error")
            else:
                self._planned.add((s.name, i))
                new.append(NewJob(s.name, i, payload))
                self._set(s.name, i, State.QUEUED.value)
        return new

    def _evaluate(self, stage: str, i: int) -> str:
        if self.problems and f"{stage}/{i}" in self.problems:
            return "error"
        view = self.jobs.get((stage, i))
        if view is not None:
            return view.state.value
        if (stage, i) in self._planned:
            return State.QUEUED.value
        return self._ready(stage, i)

    def _ready(self, stage: str, i: int) -> str:
        """ready, waiting (a parent has not finished) or blocked (a parent failed)."""
        waiting = False
        domain = self._domains[stage]
        for parent in self._parents[stage]:
            pd = self._domains[parent]
            if pd is None:
                outcome = _outcome(self._status.get((parent, 0)))
            elif pd == domain:
                outcome = _outcome(self._status.get((parent, i)))
            else:  # gathering a fan-out: every element must have finished, failed ones included
                width = self.widths.get(pd)
                if width is None:  # the list has not come; if its source failed, it never will
                    if self._source_failed(pd):
                        return "blocked"
                    waiting = True
                    continue
                counts = self._counts[parent]
                unfinished = len(width) - sum(counts.values()) + sum(counts.get(k, 0) for k in _UNFINISHED)
                outcome = None if unfinished else True
            if outcome is False:
                return "blocked"
            if outcome is None:
                waiting = True
        return "waiting" if waiting else "ready"

    def _set(self, stage: str, i: int, st: str) -> None:
        key = (stage, i)
        old = self._status.get(key)
        if old == st:
            return
        self._status[key] = st
        counts = self._counts[stage]
        if old is not None:
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
        counts[st] = counts.get(st, 0) + 1
        if _outcome(old) is not _outcome(st):
            self._touch(stage, i)

    def _touch(self, stage: str, i: int) -> None:
        """Mark what depends on (stage, i), whose outcome changed."""
        domain = self._domains[stage]
        if domain is None:
            for origin in self._fans_over[stage]:
                self._refresh_width(origin)
        for child in self._children[stage]:
            cd = self._domains[child]
            if domain is not None:  # the same element of the child, or the child gathers them all
                self._mark(child, (i,) if cd == domain else (0,))
            elif cd is None:
                self._mark(child, (0,))
            elif (width := self.widths.get(cd)) is not None:
                self._mark(child, range(len(width)))

    def _mark(self, stage: str, items: Iterable[int]) -> None:
        self._dirty.setdefault(stage, set()).update(items)

    def _refresh_width(self, origin: str) -> None:
        if self.widths.get(origin) is not None:
            return
        width = self.widths[origin] = self._fan_out(self._stages[origin])
        for gatherer in self._gatherers.get(origin, ()):  # it waits, goes, or is blocked with the list
            self._mark(gatherer, (0,))
        if width is not None:
            for member in self._members[origin]:
                self._mark(member, range(len(width)))

    def _source_failed(self, origin: str) -> bool:
        ref = self._stages[origin].each_ref()
        return ref is not None and ref.root != "input" and _outcome(self._status.get((ref.root, 0))) is False

    def _problem(self, key: str, why: str, *, keep: bool = False) -> None:
        if self.problems.get(key) == why or (keep and key in self.problems):
            return
        self.problems[key] = why
        self.revision += 1

    def _fan_out(self, origin: Stage) -> list[Any] | None:
        ref = origin.each_ref()
        assert ref is not None
        where = f"stage {origin.name!r}: each {ref}"
        key = f"{origin.name}/*"
        if ref.root == "input":
            source: Any = self.input
        else:
            st = self._status.get((ref.root, 0))
            if st != State.SUCCEEDED.value:
                if _outcome(st) is False:
                    self._problem(key, f"{where}: {ref.root} did not succeed", keep=True)
                return None
            job_id = self.jobs[(ref.root, 0)].job_id
            assert self._fetch is not None
            source = self._fetch([job_id])[job_id]
        try:
            value = dig(source, ref.path, ref.root)
        except BadInput as exc:
            self._problem(key, f"{where}: {exc}")
            return []
        if not isinstance(value, list):
            self._problem(key, f"{where}: must be a list, got {type(value).__name__}")
            return []
        if len(value) > MAX_ITEMS:
            self._problem(key, f"{where}: {len(value)} elements; at most {MAX_ITEMS} per fan-out")
            return []
        return value

    def _payloads(self, s: Stage, ready: Sequence[int]) -> list[tuple[int, dict[str, Any] | BadInput]]:
        """The payloads of a stage's ready instances, with one fetch of the outputs they use."""
        if not ready:
            return []
        refs = self._refs[s.name]
        domain = self._domains[s.name]
        jobs = self.jobs
        wanted: list[int] = []
        gathered: dict[str, dict[int, int]] = {}  # gathered stage -> element -> job id, succeeded ones
        for ref in refs.values():
            if ref.root in _RESERVED:
                continue
            rd = self._domains[ref.root]
            if rd is None:
                wanted.append(jobs[(ref.root, 0)].job_id)
            elif rd == domain:
                wanted += [jobs[(ref.root, i)].job_id for i in ready]
            elif ref.root not in gathered:
                width = len(self.widths.get(rd) or [])
                gathered[ref.root] = {j: jobs[(ref.root, j)].job_id for j in range(width)
                                      if self._status.get((ref.root, j)) == State.SUCCEEDED.value}
                wanted += gathered[ref.root].values()
        assert self._fetch is not None
        found = self._fetch(list(dict.fromkeys(wanted))) if wanted else {}
        elements = (self.widths.get(domain) or []) if domain is not None else []
        out: list[tuple[int, dict[str, Any] | BadInput]] = []
        for i in ready:
            payload = dict(s.params)
            try:
                for arg, ref in refs.items():
                    if ref.root == "input":
                        payload[arg] = ref.get(self.input)
                    elif ref.root == "item":
                        payload[arg] = ref.get(elements[i])
                    elif (rd := self._domains[ref.root]) is None or rd == domain:
                        payload[arg] = ref.get(found[jobs[(ref.root, 0 if rd is None else i)].job_id])
                    else:  # gathering: one entry per element, None where it failed
                        ids = gathered[ref.root]
                        width = len(self.widths.get(rd) or [])
                        payload[arg] = [ref.get(found[ids[j]]) if j in ids else None for j in range(width)]
            except BadInput as exc:
                out.append((i, exc))
            else:
                out.append((i, payload))
        return out


def _outcome(status: str | None) -> bool | None:
    """True: succeeded, False: failed for good (dead, cancelled, blocked, error), None: not finished."""
    if status == State.SUCCEEDED.value:
        return True
    return None if status is None or status in _UNFINISHED else False


def _run_state(progress: Sequence[StageProgress], planned: Collection[Any], problems: Mapping[str, str]) -> RunState:
    if planned or any(_UNFINISHED & set(p.counts) for p in progress):
        return RunState.RUNNING
    # a fan-out whose list never came (its source failed) leaves its stage's total unknown
    done = all(p.total is not None and set(p.counts) <= {State.SUCCEEDED.value} for p in progress)
    return RunState.SUCCEEDED if done and not problems else RunState.FAILED
