"""clusterai.sweeps.spec: a sweep's definition, normalised, or refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from clusterai.errors import SweepInvalid
from clusterai.sweeps import parse_space, parse_spec
from clusterai.sweeps.spec import MAX_TRIALS

SPACE = {"alpha": {"loguniform": [1e-6, 0.1]}, "penalty": ["l1", "l2"]}
GRID_SPACE = {"penalty": ["l1", "l2", "elasticnet"], "epochs": {"int": [1, 2]}}


def sweep(**fields: Any) -> dict[str, Any]:
    return {"objective": "train.sgd_digits", "space": SPACE, "trials": 8, **fields}


def refused(message: str, raw: Any, **options: Any) -> None:
    with pytest.raises(SweepInvalid, match=message):
        parse_spec(raw, **options)


# -- defaults and normalisation -----------------------------------------------------------------


def test_defaults():
    spec = parse_spec(sweep())
    assert spec.name == "train.sgd_digits"
    assert spec.objective == "train.sgd_digits"
    assert spec.space == parse_space(SPACE)
    assert spec.trials == 8
    assert spec.sampler == {"kind": "tpe", "seed": 0, "startup_trials": 10}
    assert (spec.metric, spec.mode, spec.maximize) == ("score", "max", True)
    assert spec.concurrency is None
    assert spec.pruner is None
    assert spec.register is None
    assert spec.job == {}


def test_the_default_sampler_is_the_callers():
    assert parse_spec(sweep(), default_sampler="random").sampler == {"kind": "random", "seed": 0}


def test_a_module_objective_gives_a_dotted_name():
    assert parse_spec(sweep(objective="pkg.models:objective")).name == "pkg.models.objective"


def test_every_field_given():
    spec = parse_spec(sweep(name="digits-1", sampler={"kind": "tpe", "seed": 7, "startup_trials": 3},
                            metric="val_loss", mode="min", concurrency=4, pruner={"kind": "median", "min_trials": 2},
                            register={"name": "digits", "alias": "staging"},
                            job={"queue": "train", "retries": 3, "timeout": 600, "resources": {"GPU": 1}}))
    assert spec.name == "digits-1"
    assert spec.sampler == {"kind": "tpe", "seed": 7, "startup_trials": 3}
    assert (spec.metric, spec.mode, spec.maximize) == ("val_loss", "min", False)
    assert spec.concurrency == 4
    assert spec.pruner == {"kind": "median", "min_trials": 2}
    assert spec.register == {"name": "digits", "alias": "staging"}
    assert spec.job == {"queue": "train", "retries": 3, "timeout": 600, "resources": {"GPU": 1}}


def test_short_forms():
    spec = parse_spec(sweep(sampler="random", pruner="halving", register="digits"))
    assert spec.sampler == {"kind": "random", "seed": 0}
    assert spec.pruner == {"kind": "halving"}
    assert spec.register == {"name": "digits"}


@pytest.mark.parametrize("pruner", ["none", {"kind": "none"}, None])
def test_no_pruner_is_stored_as_none(pruner):
    assert parse_spec(sweep(pruner=pruner)).pruner is None


def test_a_grid_runs_every_point_by_default():
    spec = parse_spec({"objective": "train.sgd_digits", "space": GRID_SPACE, "sampler": "grid"})
    assert spec.trials == 6
    assert spec.sampler == {"kind": "grid", "seed": 0}
    assert parse_spec({"objective": "o", "space": GRID_SPACE, "sampler": "grid", "trials": 4}).trials == 4


def test_to_json_round_trips():
    spec = parse_spec(sweep(sampler={"kind": "tpe", "seed": 2}, pruner="median", register="digits",
                            job={"queue": "train"}, concurrency=2))
    again = parse_spec(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()


def test_the_default_name_comes_from_the_stripped_objective():
    assert parse_spec(sweep(objective="  train.sgd_digits ")).name == "train.sgd_digits"


# -- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, [], "train.sgd_digits"])
def test_a_sweep_is_an_object(raw):
    refused("a sweep is an object with objective, space and trials", raw)


def test_unknown_fields_are_named_with_the_allowed_ones():
    refused(r"unknown field\(s\) sampler_seed, trails; allowed: concurrency, job, metric, mode, name, "
            r"objective, pruner, register, sampler, space, trials", sweep(trails=3, sampler_seed=1))


@pytest.mark.parametrize("objective", [None, "", "   ", 5])
def test_the_objective_is_required(objective):
    raw = sweep(objective=objective)
    if objective is None:
        del raw["objective"]
    refused(r"^objective: the task to run for each trial", raw)


def test_the_space_is_checked():
    refused(r"^space: give an object", sweep(space={}))
    refused(r"^space\.alpha: loguniform needs 0 < low", sweep(space={"alpha": {"loguniform": [0, 1]}}))


def test_trials_are_required_unless_the_sampler_is_a_grid():
    raw = sweep()
    del raw["trials"]
    refused(r"^trials: required, an integer from 1 to 10000", raw)


@pytest.mark.parametrize("trials", [0, -1, MAX_TRIALS + 1, True, 2.0, "8"])
def test_trials_out_of_range(trials):
    refused(rf"^trials: an integer from 1 to 10000, got {trials!r}", sweep(trials=trials))


def test_a_grid_cannot_have_more_trials_than_points():
    refused(r"^trials: 7, but the grid has only 6 points",
            {"objective": "o", "space": GRID_SPACE, "sampler": "grid", "trials": 7})


def test_a_grid_too_big_to_run_is_refused():
    refused(r"^space: the grid has 20000 points; at most 10000",
            {"objective": "o", "space": {"n": {"int": [1, 20_000]}}, "sampler": "grid", "trials": 10})


def test_a_grid_of_a_float_range_is_refused():
    refused(r"^space\.alpha: a loguniform range has no grid", sweep(sampler="grid"))


@pytest.mark.parametrize(("sampler", "message"), [
    ("bayes", r"^sampler\.kind: 'bayes'; one of grid, random, tpe"),
    ({"seed": 1}, r"^sampler\.kind: None"),
    (3, r"^sampler: grid, random, tpe, or an object"),
    ({"kind": "tpe", "n_startup": 3}, r"^sampler: unknown field\(s\) n_startup; allowed: kind, seed, startup_trials"),
    ({"kind": "random", "seed": -1}, r"^sampler\.seed: an integer from 0 to 2147483647, got -1"),
    ({"kind": "random", "seed": 2**31}, r"^sampler\.seed: an integer from 0 to 2147483647"),
    ({"kind": "random", "seed": "7"}, r"^sampler\.seed: .*got '7'"),
    ({"kind": "tpe", "startup_trials": 0}, r"^sampler\.startup_trials: an integer from 1 to 10000, got 0"),
    ({"kind": "random", "startup_trials": 5}, r"^sampler\.startup_trials: only for tpe"),
])
def test_bad_samplers(sampler, message):
    refused(message, sweep(sampler=sampler))


@pytest.mark.parametrize("metric", ["", "val-loss", "1st", 3, None])
def test_bad_metric(metric):
    refused(r"^metric: a name \(letters, digits, _\)", sweep(metric=metric))


@pytest.mark.parametrize("mode", ["maximize", "MAX", None, 1])
def test_bad_mode(mode):
    refused(r"^mode: max or min", sweep(mode=mode))


@pytest.mark.parametrize("concurrency", [0, MAX_TRIALS + 1, True, "4", 1.5])
def test_bad_concurrency(concurrency):
    refused(r"^concurrency: an integer from 1 to 10000", sweep(concurrency=concurrency))


@pytest.mark.parametrize(("pruner", "message"), [
    (5, r"^pruner: none, median, halving, or an object"),
    ("asha", r"^pruner\.kind: 'asha'"),
    ({"kind": "halving", "reduction": 1}, r"^pruner\.reduction: an integer from 2"),
])
def test_bad_pruner(pruner, message):
    refused(message, sweep(pruner=pruner))


@pytest.mark.parametrize(("register", "message"), [
    ({"alias": "staging"}, r"^register: a model name, or \{name, alias\}"),
    ({"name": "digits", "stage": "prod"}, r"^register: a model name"),
    (["digits"], r"^register: a model name"),
    ("bad name", r"^register\.name: letters, digits and _\.:- \(at most 128\), got 'bad name'"),
    ({"name": "digits", "alias": "-x"}, r"^register\.alias: .*got '-x'"),
    ({"name": "x" * 129}, r"^register\.name"),
])
def test_bad_register(register, message):
    refused(message, sweep(register=register))


@pytest.mark.parametrize(("job", "message"), [
    ("train", r"^job: an object with any of backoff, labels, max_backoff, priority, queue, resources, retries, "
              r"timeout"),
    ({"queue": "train", "gpus": 1}, r"^job: unknown field\(s\) gpus; allowed: backoff"),
    ({"payload": {}}, r"^job: unknown field\(s\) payload"),
])
def test_bad_job(job, message):
    refused(message, sweep(job=job))


@pytest.mark.parametrize("name", ["-x", "a b", "x" * 129, 5])
def test_bad_name(name):
    refused(r"^name: letters, digits and _\.:- \(at most 128\)", sweep(name=name))
