"""Pipelines as values: declaring them (and the errors for bad ones) and planning a run's next jobs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from clusterai.core.model import State
from clusterai.core.pipelines import MAX_ITEMS, JobView, Pipeline, RunState, Stage, input_key, plan
from clusterai.errors import BadInput


def chain() -> Pipeline:
    return Pipeline.from_dict("chain", {"stages": [
        {"name": "scan", "task": "t.scan", "each": "input.videos", "inputs": {"source": "item.source"},
         "params": {"rate": 2}},
        {"name": "summarize", "task": "t.sum", "inputs": {"scan": "scan", "n": "scan.frames"}},
        {"name": "report", "task": "t.report", "gather": True,
         "inputs": {"all": "summarize", "title": "input.title?"}},
    ]})


class Run:
    """A run's jobs, as the store would hold them, for driving plan() by hand."""

    def __init__(self, pipeline: Pipeline, run_input: dict[str, Any]):
        self.pipeline, self.input = pipeline, run_input
        self.jobs: dict[tuple[str, int], JobView] = {}
        self.results: dict[int, Any] = {}
        self.payloads: dict[tuple[str, int], dict[str, Any]] = {}
        self.fetched: list[list[int]] = []

    def fetch(self, ids: Sequence[int]) -> Mapping[int, Any]:
        self.fetched.append(list(ids))
        return self.results

    def step(self) -> Any:
        p = plan(self.pipeline, self.input, self.jobs, self.fetch)
        for new in p.new:
            job_id = len(self.jobs) + 1
            self.jobs[(new.stage, new.item)] = JobView(job_id, State.QUEUED)
            self.payloads[(new.stage, new.item)] = new.payload
        return p

    def finish(self, stage: str, item: int, result: Any = None, state: State = State.SUCCEEDED) -> None:
        view = self.jobs[(stage, item)]
        self.jobs[(stage, item)] = JobView(view.job_id, state, None if state is State.SUCCEEDED else "boom")
        self.results[view.job_id] = result


def counts(p: Any) -> dict[str, dict[str, int]]:
    return {s.name: s.counts for s in p.stages}


# -- declaring ----------------------------------------------------------------------------------


def test_domains_follow_the_fan_out() -> None:
    p = chain()
    assert [p.domain(s.name) for s in p.stages] == ["scan", "scan", None]


def test_round_trip_through_dict() -> None:
    p = chain()
    assert Pipeline.from_dict("chain", p.to_dict()) == p


@pytest.mark.parametrize(("stages", "message"), [
    ([{"name": "a", "task": "t", "inputs": {"x": "b"}}, {"name": "b", "task": "t"}],
     "uses 'b', which is not a stage declared before it"),
    ([{"name": "a", "task": "t"}, {"name": "a", "task": "t"}], "two stages are named 'a'"),
    ([{"name": "input", "task": "t"}], "cannot name a stage"),
    ([{"name": "a", "task": "t", "each": "input.x"},
      {"name": "b", "task": "t", "each": "a.list"}], "fan-outs do not nest"),
    ([{"name": "a", "task": "t", "each": "input.x"}, {"name": "b", "task": "t", "each": "input.y"},
      {"name": "c", "task": "t", "inputs": {"p": "a", "q": "b"}}], "set gather: true"),
    ([{"name": "a", "task": "t", "each": "input.x", "gather": True}], "cannot be combined"),
    ([{"name": "a", "task": "t", "inputs": {"v": "item"}}], "uses 'item' but is not fanned out"),
    ([{"name": "a", "task": "t", "each": "input.x"},
      {"name": "b", "task": "t", "gather": True, "inputs": {"v": "item"}}], "has no 'item'"),
    ([{"name": "a", "task": "t", "inputs": {"v": "input..x"}}], "no empty parts"),
    ([{"name": "a", "task": "t", "inputs": {"v": 3}}], "must be a string"),
    ([{"name": "a", "task": "t", "options": {"colour": "red"}}], "unknown options ['colour']"),
    ([{"name": "a", "task": "t", "inputs": {"v": "input.x"}, "params": {"v": 1}}], "both as inputs and params"),
    ([{"name": "a", "task": "t", "sauce": 1}], "unknown keys ['sauce']"),
    ([{"name": "a"}], "'task' must be a non-empty string"),
    ([], "'stages' must be a non-empty list"),
    ([{"name": "a", "task": "t", "each": "item.x"}], "must name input.KEY or STAGE.KEY"),
])
def test_bad_pipelines_are_refused_with_the_reason(stages: list[Any], message: str) -> None:
    with pytest.raises(BadInput, match=None) as err:
        Pipeline.from_dict("p", {"stages": stages})
    assert message in str(err.value)


def test_python_declaration_is_checked_too() -> None:
    with pytest.raises(BadInput, match="not a stage declared before it"):
        Pipeline("p", (Stage("a", "t", inputs={"x": "nope"}),))


def test_input_key_depends_on_task_payload_and_salt_only() -> None:
    a = input_key("t", {"x": 1, "y": [1, 2]})
    assert a == input_key("t", {"y": [1, 2], "x": 1})
    assert a != input_key("u", {"x": 1, "y": [1, 2]})
    assert a != input_key("t", {"x": 2, "y": [1, 2]})
    assert a != input_key("t", {"x": 1, "y": [1, 2]}, salt="7")
    assert a.startswith("pipeline:")


# -- planning -----------------------------------------------------------------------------------


def test_fan_out_then_per_item_chain_then_fan_in() -> None:
    run = Run(chain(), {"videos": [{"source": "a"}, {"source": "b"}, {"source": "c"}]})
    p = run.step()
    assert [(n.stage, n.item) for n in p.new] == [("scan", 0), ("scan", 1), ("scan", 2)]
    assert run.payloads[("scan", 1)] == {"source": "b", "rate": 2}
    assert counts(p)["summarize"] == {"waiting": 3} and p.state is RunState.RUNNING

    run.finish("scan", 1, {"frames": 10})
    p = run.step()
    assert [(n.stage, n.item) for n in p.new] == [("summarize", 1)]  # the item that is ready, alone
    assert run.payloads[("summarize", 1)] == {"scan": {"frames": 10}, "n": 10}

    run.finish("scan", 0, {"frames": 5})
    run.finish("scan", 2, {"frames": 7})
    run.step()
    run.finish("summarize", 0, "s0")
    run.finish("summarize", 1, "s1")
    p = run.step()
    assert counts(p)["report"] == {"waiting": 1}  # fan-in waits for every element
    run.finish("summarize", 2, "s2")
    p = run.step()
    assert [(n.stage, n.item) for n in p.new] == [("report", 0)]
    assert run.payloads[("report", 0)] == {"all": ["s0", "s1", "s2"], "title": None}
    run.finish("report", 0, "done")
    p = run.step()
    assert p.state is RunState.SUCCEEDED and not p.new


def test_a_failed_element_blocks_its_chain_only_and_the_fan_in_gets_null() -> None:
    run = Run(chain(), {"videos": [{"source": "a"}, {"source": "bad"}], "title": "T"})
    run.step()
    run.finish("scan", 0, {"frames": 1})
    run.finish("scan", 1, state=State.DEAD)
    p = run.step()
    assert counts(p)["summarize"] == {"queued": 1, "blocked": 1}
    run.finish("summarize", 0, "s0")
    p = run.step()
    assert run.payloads[("report", 0)] == {"all": ["s0", None], "title": "T"}
    run.finish("report", 0, "r")
    p = run.step()
    assert p.state is RunState.FAILED  # the run ends, and says that not everything succeeded
    assert counts(p) == {"scan": {"succeeded": 1, "dead": 1}, "summarize": {"succeeded": 1, "blocked": 1},
                         "report": {"succeeded": 1}}


def test_results_are_fetched_only_when_a_payload_needs_them() -> None:
    run = Run(chain(), {"videos": [{"source": "a"}, {"source": "b"}]})
    run.step()
    run.finish("scan", 0, {"frames": 1})
    run.step()
    assert {i for ids in run.fetched for i in ids} == {1}  # scan 0's output only
    run.fetched.clear()
    run.step()  # nothing new: nothing fetched
    assert run.fetched == []


def test_dynamic_fan_out_over_a_stage_output() -> None:
    p = Pipeline.from_dict("dyn", {"stages": [
        {"name": "list", "task": "t.list", "inputs": {"folder": "input.folder"}},
        {"name": "each", "task": "t.each", "each": "list.files", "inputs": {"f": "item", "root": "list.root"}},
        {"name": "all", "task": "t.all", "gather": True, "inputs": {"xs": "each"}},
    ]})
    run = Run(p, {"folder": "/d"})
    first = run.step()
    assert [(s.name, s.total) for s in first.stages] == [("list", 1), ("each", None), ("all", 1)]
    run.finish("list", 0, {"files": ["x", "y"], "root": "/d"})
    run.step()
    assert run.payloads[("each", 1)] == {"f": "y", "root": "/d"}
    run.finish("each", 0, 1)
    run.finish("each", 1, 2)
    run.step()
    assert run.payloads[("all", 0)] == {"xs": [1, 2]}


def test_a_failed_fan_out_source_fails_the_run() -> None:
    p = Pipeline.from_dict("dyn", {"stages": [
        {"name": "list", "task": "t.list"},
        {"name": "each", "task": "t.each", "each": "list.files", "inputs": {"f": "item"}},
    ]})
    run = Run(p, {})
    run.step()
    run.finish("list", 0, state=State.DEAD)
    assert run.step().state is RunState.FAILED


@pytest.mark.parametrize(("files", "problem"), [
    ({"files": "x"}, "must be a list, got str"),
    ({"other": []}, "list.files: not found"),
    ({"files": list(range(MAX_ITEMS + 1))}, f"at most {MAX_ITEMS}"),
])
def test_a_bad_fan_out_list_is_a_problem_not_a_crash(files: Any, problem: str) -> None:
    p = Pipeline.from_dict("dyn", {"stages": [
        {"name": "list", "task": "t.list"},
        {"name": "each", "task": "t.each", "each": "list.files", "inputs": {"f": "item"}},
    ]})
    run = Run(p, {})
    run.step()
    run.finish("list", 0, files)
    result = run.step()
    assert result.state is RunState.FAILED and problem in result.problems["each/*"]


def test_a_missing_key_in_a_parent_output_is_that_instance_s_problem() -> None:
    run = Run(chain(), {"videos": [{"source": "a"}, {"source": "b"}]})
    run.step()
    run.finish("scan", 0, {"frames": 1})
    run.finish("scan", 1, {"no_frames": 1})
    p = run.step()
    assert p.problems == {"summarize/1": "scan.frames: not found"}
    assert counts(p)["summarize"] == {"queued": 1, "error": 1}


def test_empty_fan_out_succeeds_and_the_fan_in_gets_an_empty_list() -> None:
    run = Run(chain(), {"videos": []})
    p = run.step()
    assert [(n.stage, n.item) for n in p.new] == [("report", 0)]
    assert run.payloads[("report", 0)]["all"] == []


def test_single_stage_outputs_are_shared_by_every_element() -> None:
    p = Pipeline.from_dict("s", {"stages": [
        {"name": "model", "task": "t.load"},
        {"name": "score", "task": "t.score", "each": "input.docs", "inputs": {"doc": "item", "m": "model.id"}},
    ]})
    run = Run(p, {"docs": ["a", "b"]})
    assert [(n.stage) for n in run.step().new] == ["model"]
    run.finish("model", 0, {"id": 7})
    run.step()
    assert run.payloads[("score", 0)] == {"doc": "a", "m": 7} and run.payloads[("score", 1)] == {"doc": "b", "m": 7}


def test_after_orders_without_passing_output() -> None:
    p = Pipeline.from_dict("a", {"stages": [
        {"name": "one", "task": "t"}, {"name": "two", "task": "t", "after": ["one"], "params": {"x": 1}},
    ]})
    run = Run(p, {})
    assert [n.stage for n in run.step().new] == ["one"]
    run.finish("one", 0, 5)
    run.step()
    assert run.payloads[("two", 0)] == {"x": 1}


def test_cancelled_parent_blocks_like_a_dead_one() -> None:
    run = Run(chain(), {"videos": [{"source": "a"}]})
    run.step()
    run.finish("scan", 0, state=State.CANCELLED)
    p = run.step()
    assert counts(p)["summarize"] == {"blocked": 1}
