"""clusterai.sweeps.space: search spaces as JSON, checked with the parameter named."""

from __future__ import annotations

import json
import math
import random

import pytest

from clusterai.errors import SweepInvalid
from clusterai.sweeps.space import MAX_CHOICES, MAX_DIMENSIONS, Dimension, grid_points, parse_space

EVERY_KIND = {
    "lr": {"loguniform": [1e-5, 0.1]},
    "momentum": {"uniform": [0.0, 0.99]},
    "layers": {"int": [1, 4]},
    "hidden": {"int": [8, 512], "log": True},
    "penalty": ["l1", "l2"],
    "optimiser": {"choice": ["adam", {"name": "sgd", "nesterov": True}, None]},
    "epochs": 10,
    "tag": "baseline",
    "verbose": False,
    "nothing": None,
    "extra": {"depth": 3, "widths": [1, 2]},  # an object that names no form: a constant
}


def dim(raw: object, name: str = "x") -> Dimension:
    return next(iter(parse_space({name: raw})))


# -- every form ---------------------------------------------------------------------------------


def test_every_kind_of_dimension():
    dims = {d.name: d for d in parse_space(EVERY_KIND)}
    assert list(dims) == list(EVERY_KIND)  # the order given is kept
    assert dims["lr"] == Dimension("lr", "loguniform", low=1e-5, high=0.1)
    assert dims["momentum"] == Dimension("momentum", "uniform", low=0.0, high=0.99)
    assert dims["layers"] == Dimension("layers", "int", low=1, high=4)
    assert dims["hidden"] == Dimension("hidden", "int", low=8, high=512, log=True)
    assert dims["penalty"] == Dimension("penalty", "choice", values=("l1", "l2"))
    assert dims["optimiser"].kind == "choice"
    assert dims["optimiser"].values == ("adam", {"name": "sgd", "nesterov": True}, None)
    for name in ("epochs", "tag", "verbose", "nothing", "extra"):
        assert dims[name].kind == "constant"
        assert dims[name].values == (EVERY_KIND[name],)


def test_a_plain_list_is_a_choice():
    assert dim(["a", "b"]) == dim({"choice": ["a", "b"]})


def test_log_false_is_accepted_on_any_range():
    assert dim({"uniform": [0, 1], "log": False}).kind == "uniform"


# -- refused, with the field named --------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}, [], "alpha", 3])
def test_a_space_is_a_non_empty_object(raw):
    with pytest.raises(SweepInvalid, match=r"^space: give an object"):
        parse_space(raw)


def test_too_many_parameters():
    parse_space({f"p{i}": 1 for i in range(MAX_DIMENSIONS)})
    with pytest.raises(SweepInvalid, match=f"space: {MAX_DIMENSIONS + 1} parameters; at most {MAX_DIMENSIONS}"):
        parse_space({f"p{i}": 1 for i in range(MAX_DIMENSIONS + 1)})


@pytest.mark.parametrize("name", ["1st", "learning-rate", "a b", ""])
def test_parameter_names_are_identifiers(name):
    with pytest.raises(SweepInvalid, match="is not a parameter name"):
        parse_space({name: 1})


@pytest.mark.parametrize(("raw", "message"), [
    ({"uniform": [0, 1], "int": [0, 1]}, r"space\.x: one of uniform, loguniform, int, choice"),
    ({"uniform": [0, 1], "step": 0.1}, r"space\.x: one of .*got keys \['step', 'uniform'\]"),
    ({"choice": []}, r"space\.x: choice needs a list of 1 to 1000 values"),
    ({"choice": "l1"}, r"space\.x: choice needs a list"),
    ({"choice": {"a": 1}}, r"space\.x: choice needs a list"),
    ({"choice": list(range(MAX_CHOICES + 1))}, r"space\.x: choice needs a list of 1 to 1000"),
    ({"choice": [1, float("nan")]}, r"space\.x: nan is not a JSON number"),
    ({"choice": [{1: "a"}]}, r"space\.x: object keys must be strings, got 1"),
    ({"uniform": 1}, r"space\.x: uniform needs \[low, high\], two finite numbers; got 1"),
    ({"uniform": [0, 1, 2]}, r"space\.x: uniform needs \[low, high\]"),
    ({"uniform": [0, "1"]}, r"space\.x: uniform needs \[low, high\]"),
    ({"uniform": [False, True]}, r"space\.x: uniform needs \[low, high\]"),
    ({"uniform": [0, float("inf")]}, r"space\.x: uniform needs \[low, high\]"),
    ({"uniform": [float("nan"), 1]}, r"space\.x: uniform needs \[low, high\]"),
    ({"uniform": [1, 1]}, r"space\.x: uniform needs low < high, got \[1, 1\]"),
    ({"uniform": [2, 1]}, r"space\.x: uniform needs low < high, got \[2, 1\]"),
    ({"int": [5, 5]}, r"space\.x: int needs low < high"),
    ({"loguniform": [0, 1]}, r"space\.x: loguniform needs 0 < low, got \[0, 1\]"),
    ({"loguniform": [-1, 1]}, r"space\.x: loguniform needs 0 < low"),
    ({"int": [0.5, 3]}, r"space\.x: int needs whole numbers, got \[0.5, 3\]"),
    ({"int": [0, 8], "log": True}, r"space\.x: int with log needs low >= 1, got 0"),
    ({"uniform": [0, 1], "log": True}, r"space\.x: 'log' is true or false, and only for int"),
    ({"loguniform": [1, 2], "log": True}, r"space\.x: 'log' is true or false, and only for int"),
    ({"int": [1, 8], "log": "yes"}, r"space\.x: 'log' is true or false"),
    (float("nan"), r"space\.x: nan is not a JSON number"),
    ({1, 2}, r"space\.x: set is not a JSON value"),
    ({"nested": {2: "b"}}, r"space\.x: object keys must be strings"),
    ({"nested": [object()]}, r"space\.x: object is not a JSON value"),
])
def test_bad_dimensions_are_refused_naming_the_parameter(raw, message):
    with pytest.raises(SweepInvalid, match=message):
        parse_space({"ok": 1, "x": raw})


def test_a_bound_too_large_for_a_float_is_refused():
    with pytest.raises(SweepInvalid, match=r"space\.x"):
        parse_space({"x": {"uniform": [0, 10**400]}})


# -- grids and probes ---------------------------------------------------------------------------


def test_grid_size_multiplies_the_dimensions():
    space = parse_space({"a": ["x", "y", "z"], "b": {"int": [1, 4]}, "c": 7})
    assert space.grid_size() == 12


def test_grid_points_are_every_combination_last_dimension_fastest():
    space = parse_space({"a": ["x", "y"], "b": {"int": [1, 3]}, "c": True})
    points = [space.grid_point(i) for i in range(space.grid_size())]
    assert points == list(grid_points(space))
    assert points[:4] == [{"a": "x", "b": 1, "c": True}, {"a": "x", "b": 2, "c": True},
                          {"a": "x", "b": 3, "c": True}, {"a": "y", "b": 1, "c": True}]
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    assert all(isinstance(p["b"], int) for p in points)


@pytest.mark.parametrize("form", ["uniform", "loguniform"])
def test_a_float_range_has_no_grid(form):
    space = parse_space({"a": [1, 2], "lr": {form: [0.1, 1.0]}})
    with pytest.raises(SweepInvalid, match=rf"space\.lr: a {form} range has no grid"):
        space.grid_size()


def test_a_huge_int_grid_is_refused_without_enumerating_it():
    space = parse_space({"n": {"int": [0, 2e18]}})
    try:
        size = space.grid_size()
    except SweepInvalid:
        return
    assert size == 2 * 10**18 + 1


def test_probes_touch_every_extreme_from_a_base_of_lows():
    space = parse_space({"lr": {"loguniform": [1e-4, 1e-1]}, "n": {"int": [2, 9]},
                         "opt": ["adam", "sgd", "rms"], "epochs": 5})
    probes = list(space.probes())
    base = {"lr": 1e-4, "n": 2, "opt": "adam", "epochs": 5}
    assert probes == [base, {**base, "lr": 1e-1}, {**base, "n": 9}, {**base, "opt": "sgd"},
                      {**base, "opt": "rms"}]
    assert isinstance(probes[2]["n"], int)


# -- sampling -----------------------------------------------------------------------------------


def test_samples_stay_in_bounds_with_the_right_types():
    space = parse_space(EVERY_KIND)
    rng = random.Random(7)
    seen_layers = set()
    below_geometric_mean = 0
    for _ in range(2000):
        p = space.sample(rng)
        assert 1e-5 <= p["lr"] <= 0.1 and isinstance(p["lr"], float)
        assert 0.0 <= p["momentum"] <= 0.99 and isinstance(p["momentum"], float)
        assert type(p["layers"]) is int and 1 <= p["layers"] <= 4
        assert type(p["hidden"]) is int and 8 <= p["hidden"] <= 512
        assert p["penalty"] in ("l1", "l2")
        assert p["optimiser"] in EVERY_KIND["optimiser"]["choice"]
        assert {k: p[k] for k in ("epochs", "tag", "verbose", "nothing", "extra")} == {
            k: EVERY_KIND[k] for k in ("epochs", "tag", "verbose", "nothing", "extra")}
        assert all(d.contains(p[d.name]) for d in space)
        seen_layers.add(p["layers"])
        below_geometric_mean += p["lr"] < math.sqrt(1e-5 * 0.1)
    assert seen_layers == {1, 2, 3, 4}  # both ends are reachable
    # uniform in the logarithm: half the draws fall below the geometric mean (sd of the share ~0.011)
    assert 0.45 < below_geometric_mean / 2000 < 0.55


def test_a_log_int_reaches_every_value_of_a_small_range():
    d = dim({"int": [1, 8], "log": True})
    rng = random.Random(11)
    draws = [d.sample(rng) for _ in range(2000)]
    assert set(draws) == set(range(1, 9))
    assert draws.count(1) > draws.count(8)  # the log scale favours the small end


def test_sampling_is_reproducible_from_the_generator():
    space = parse_space(EVERY_KIND)
    assert space.sample(random.Random(3)) == space.sample(random.Random(3))


def test_contains():
    assert dim({"int": [1, 4]}).contains(3)
    assert dim({"int": [1, 4]}).contains(3.0)
    assert not dim({"int": [1, 4]}).contains(2.5)
    assert not dim({"int": [1, 4]}).contains(5)
    assert not dim({"uniform": [0, 1]}).contains(True)
    assert not dim({"uniform": [0, 1]}).contains("0.5")
    assert dim(["a", "b"]).contains("b") and not dim(["a", "b"]).contains("c")


# -- as stored ----------------------------------------------------------------------------------


def test_to_json_round_trips():
    space = parse_space(EVERY_KIND)
    text = json.dumps(space.to_json())
    assert parse_space(json.loads(text)) == space
    assert space.to_json()["hidden"] == {"int": [8, 512], "log": True}
    assert space.to_json()["penalty"] == {"choice": ["l1", "l2"]}
    assert space.to_json()["epochs"] == 10
