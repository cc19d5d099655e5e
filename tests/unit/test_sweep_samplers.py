"""clusterai.sweeps.samplers: grid, random and TPE suggestions, from the stored history alone."""

from __future__ import annotations

import json
import math

import pytest

from clusterai.errors import SweepInvalid
from clusterai.sweeps import TrialView, make_sampler, parse_space
from clusterai.sweeps.samplers import GridSampler, RandomSampler, TpeSampler
from clusterai.sweeps.space import Space

MIXED = parse_space({
    "lr": {"loguniform": [1e-5, 0.1]},
    "momentum": {"uniform": [0.5, 0.99]},
    "layers": {"int": [1, 4]},
    "hidden": {"int": [8, 512], "log": True},
    "opt": {"choice": ["adam", {"name": "sgd"}, [1, 2], None]},
    "epochs": 10,
})


def key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def assert_in_space(space: Space, params: dict) -> None:
    assert set(params) == set(space.names)
    for d in space:
        assert d.contains(params[d.name]), (d.name, params[d.name])
        if d.kind == "int":
            assert type(params[d.name]) is int
        if d.kind in ("uniform", "loguniform"):
            assert isinstance(params[d.name], float)


def views(points: list[dict], state: str = "succeeded") -> list[TrialView]:
    return [TrialView(i, p, state, 0.0 if state == "succeeded" else None) for i, p in enumerate(points)]


# -- grid ---------------------------------------------------------------------------------------


GRID = parse_space({"a": [1, 2, 3], "b": {"int": [0, 1]}, "c": "fixed"})


def test_grid_covers_every_point_exactly_once():
    sampler = GridSampler(GRID)
    history: list[TrialView] = []
    for number in range(GRID.grid_size()):
        history.append(TrialView(number, sampler.suggest(number, history), "running"))
    points = [key(t.params) for t in history]
    assert len(points) == 6 == len(set(points))
    assert set(points) == {key(GRID.grid_point(i)) for i in range(6)}


def test_past_the_end_the_grid_refills_a_cancelled_point():
    sampler = GridSampler(GRID)
    history = [TrialView(n, GRID.grid_point(n), "failed" if n == 1 else "succeeded", None) for n in range(6)]
    history[4] = TrialView(4, GRID.grid_point(4), "cancelled")
    assert sampler.suggest(6, history) == GRID.grid_point(4)
    # a failed trial keeps its point: only cancelled ones are replaced
    history.append(TrialView(6, GRID.grid_point(4), "running"))
    with pytest.raises(SweepInvalid, match="every one of the grid's 6 points has a trial"):
        sampler.suggest(7, history)


def test_a_grid_of_float_ranges_is_refused():
    with pytest.raises(SweepInvalid, match=r"space\.lr: a loguniform range has no grid"):
        GridSampler(MIXED)


# -- random -------------------------------------------------------------------------------------


def test_random_is_reproducible_by_seed_and_number():
    first = [RandomSampler(MIXED, seed=5).suggest(n, []) for n in range(20)]
    again = [RandomSampler(MIXED, seed=5).suggest(n, []) for n in reversed(range(20))][::-1]
    assert first == again  # trial n gets its point whatever was asked before (a restarted head)
    assert len({key(p) for p in first}) == 20
    other = [RandomSampler(MIXED, seed=6).suggest(n, []) for n in range(20)]
    assert first != other


def test_random_ignores_the_history():
    sampler = RandomSampler(MIXED, seed=1)
    assert sampler.suggest(3, []) == sampler.suggest(3, views([sampler.suggest(n, []) for n in range(3)]))


def test_random_stays_in_the_space():
    sampler = RandomSampler(MIXED, seed=2)
    for n in range(300):
        assert_in_space(MIXED, sampler.suggest(n, []))


# -- tpe ----------------------------------------------------------------------------------------


def test_tpe_stays_in_the_space_before_and_after_startup():
    sampler = TpeSampler(MIXED, seed=3, startup_trials=5)
    history: list[TrialView] = []
    for n in range(15):
        params = sampler.suggest(n, history)
        assert_in_space(MIXED, params)
        history.append(TrialView(n, params, "succeeded", params["momentum"]))


def test_tpe_is_reproducible_by_seed():
    history = views([RandomSampler(MIXED, seed=9).suggest(n, []) for n in range(12)])
    history = [TrialView(t.number, t.params, t.state, float(t.number % 5)) for t in history]
    a = TpeSampler(MIXED, seed=4, startup_trials=10).suggest(12, history)
    b = TpeSampler(MIXED, seed=4, startup_trials=10).suggest(12, history)
    c = TpeSampler(MIXED, seed=5, startup_trials=10).suggest(12, history)
    assert a == b
    assert a != c


def test_tpe_learns_from_every_trial_state_and_skips_points_of_another_space():
    space = parse_space({"x": {"uniform": [0, 1]}, "opt": ["a", "b"]})
    history = [
        TrialView(0, {"x": 0.2, "opt": "a"}, "succeeded", 0.5),
        TrialView(1, {"x": 0.4, "opt": "b"}, "pruned", None, {1: 0.1, 2: 0.2}),
        TrialView(2, {"x": 0.6, "opt": "a"}, "failed"),
        TrialView(3, {"x": 0.8, "opt": "b"}, "running"),
        TrialView(4, {"x": 0.9, "opt": "a"}, "cancelled"),
        TrialView(5, {"x": 5.0, "opt": "a"}, "succeeded", 9.0),  # out of today's bounds
        TrialView(6, {"y": 0.5}, "succeeded", 1.0),  # made under a space with other names
    ]
    sampler = TpeSampler(space, seed=0, startup_trials=1)
    for n in range(7, 10):
        assert_in_space(space, sampler.suggest(n, history))


def _mean_distance_of_late_trials(sampler, maximize: bool, optimum=(0.3, 0.7), trials: int = 40,
                                  late: int = 15) -> float:
    history: list[TrialView] = []
    for n in range(trials):
        params = sampler.suggest(n, history)
        distance = math.hypot(params["x"] - optimum[0], params["y"] - optimum[1])
        history.append(TrialView(n, params, "succeeded", -distance if maximize else distance))
    return sum(math.hypot(t.params["x"] - optimum[0], t.params["y"] - optimum[1]) for t in history[-late:]) / late


@pytest.mark.parametrize("maximize", [True, False])
def test_tpe_concentrates_near_the_optimum_better_than_random(maximize):
    space = parse_space({"x": {"uniform": [0, 1]}, "y": {"uniform": [0, 1]}, "note": "toy"})
    seeds = range(5)
    tpe = sum(_mean_distance_of_late_trials(TpeSampler(space, seed=s, maximize=maximize, startup_trials=10),
                                            maximize) for s in seeds) / len(seeds)
    rand = sum(_mean_distance_of_late_trials(RandomSampler(space, seed=s), maximize) for s in seeds) / len(seeds)
    # random lands ~0.42 away on average; TPE after its 10 random startup trials ~0.2
    assert tpe < 0.7 * rand, (tpe, rand)


def test_tpe_accepts_every_seed_a_sweep_may_have():
    space = parse_space({"x": {"uniform": [0, 1]}})
    assert_in_space(space, TpeSampler(space, seed=2**31 - 1).suggest(0, []))


# -- the factory --------------------------------------------------------------------------------


def test_make_sampler_kinds():
    assert isinstance(make_sampler("grid", GRID, seed=0, maximize=True, options={}), GridSampler)
    random_sampler = make_sampler("random", MIXED, seed=7, maximize=True, options={})
    assert isinstance(random_sampler, RandomSampler) and random_sampler.seed == 7
    tpe = make_sampler("tpe", MIXED, seed=1, maximize=False, options={"startup_trials": 4})
    assert isinstance(tpe, TpeSampler)
    assert (tpe.seed, tpe.maximize, tpe.startup_trials) == (1, False, 4)
    with pytest.raises(SweepInvalid, match="sampler.kind: 'bayes'; one of grid, random, tpe"):
        make_sampler("bayes", MIXED, seed=0, maximize=True, options={})
