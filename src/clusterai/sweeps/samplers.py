"""Samplers: where the next trial of a sweep looks. Each is a small policy object with one method,
`suggest(number, history) -> params`, run by the head (only it writes the store). The store stays
the truth: a sampler keeps nothing a head restart would lose; the history it learns from is read
back from the store's trials.

- grid: the number-th point of the grid (trials beyond the grid's size are not made);
- random: seeded by (seed, trial number), so trial n gets the same point after any restart;
- tpe: Optuna's Tree-structured Parzen Estimator through its ask/tell interface, on an in-memory
  study rebuilt from the history at every suggestion (no Optuna storage, no SQLite lock).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clusterai.errors import SweepInvalid
from clusterai.sweeps.space import Dimension, Space


@dataclass(frozen=True)
class TrialView:
    """What a sampler learns from one trial."""

    number: int
    params: dict[str, Any]
    state: str  # running | succeeded | pruned | failed | cancelled
    value: float | None = None
    curve: dict[int, float] = field(default_factory=dict)  # step -> the sweep's metric


class Sampler(Protocol):
    def suggest(self, number: int, history: Sequence[TrialView]) -> dict[str, Any]: ...


class GridSampler:
    def __init__(self, space: Space):
        self.space = space
        self.size = space.grid_size()

    def suggest(self, number: int, history: Sequence[TrialView]) -> dict[str, Any]:
        """The number-th point; past the grid's end (a trial that replaces a cancelled one), the
        first point no kept trial has."""
        if number < self.size:
            return self.space.grid_point(number)
        taken = [t.params for t in history if t.state != "cancelled"]
        for index in range(self.size):
            point = self.space.grid_point(index)
            if point not in taken:
                return point
        raise SweepInvalid(f"every one of the grid's {self.size} points has a trial")


class RandomSampler:
    def __init__(self, space: Space, seed: int = 0):
        self.space = space
        self.seed = seed

    def suggest(self, number: int, history: Sequence[TrialView]) -> dict[str, Any]:
        return self.space.sample(random.Random(f"{self.seed}/{number}"))


class TpeSampler:
    """Optuna's TPE. Running trials are told to it as running (constant liar), so trials started
    together spread out instead of all asking for the same point."""

    def __init__(self, space: Space, *, seed: int = 0, maximize: bool = True, startup_trials: int = 10):
        try:
            import optuna
        except ImportError:
            raise SweepInvalid("sampler tpe needs Optuna on the head: pip install 'clusterai[train]'") from None
        self.optuna = optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.seed = seed
        self.maximize = maximize
        self.startup_trials = startup_trials
        self._searched = [d for d in space if d.kind != "constant"]
        self._distributions = {d.name: self._distribution(d) for d in self._searched}

    def _distribution(self, d: Dimension) -> Any:
        dist = self.optuna.distributions
        if d.kind == "choice":
            # Optuna's categorical choices must be plain scalars: it picks an index, we map it back
            return dist.CategoricalDistribution(list(range(len(d.values))))
        assert d.low is not None and d.high is not None
        if d.kind == "int":
            return dist.IntDistribution(int(d.low), int(d.high), log=d.log)
        return dist.FloatDistribution(d.low, d.high, log=d.kind == "loguniform")

    def _to_optuna(self, params: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for d in self._searched:
            if d.name not in params or not d.contains(params[d.name]):
                return None  # made under another space (the sweep was resumed with a changed one)
            out[d.name] = _index_of(d.values, params[d.name]) if d.kind == "choice" else params[d.name]
        return out

    def suggest(self, number: int, history: Sequence[TrialView]) -> dict[str, Any]:
        optuna = self.optuna
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=(self.seed * 100_003 + number) % 2**32, constant_liar=True,
                                                 n_startup_trials=self.startup_trials)
            study = optuna.create_study(direction="maximize" if self.maximize else "minimize", sampler=sampler)
            for view in history:
                known = self._to_optuna(view.params)
                if known is not None:
                    study.add_trial(self._frozen(view, known))
            asked = study.ask(self._distributions)
        params = {}
        for d in self.space:
            if d.kind == "constant":
                params[d.name] = d.values[0]
            elif d.kind == "choice":
                params[d.name] = d.values[asked.params[d.name]]
            else:
                params[d.name] = asked.params[d.name]
        return params

    def _frozen(self, view: TrialView, params: dict[str, Any]) -> Any:
        state = self.optuna.trial.TrialState
        if view.state == "succeeded" and view.value is not None:
            kind, value = state.COMPLETE, view.value
        elif view.state == "pruned" and view.curve:
            kind, value = state.PRUNED, None
        elif view.state == "running":
            kind, value = state.RUNNING, None
        else:
            kind, value = state.FAIL, None
        return self.optuna.trial.create_trial(params=params, distributions=self._distributions, value=value,
                                              state=kind, intermediate_values=dict(view.curve))


def make_sampler(kind: str, space: Space, *, seed: int, maximize: bool, options: dict[str, Any]) -> Sampler:
    if kind == "grid":
        return GridSampler(space)
    if kind == "random":
        return RandomSampler(space, seed)
    if kind == "tpe":
        return TpeSampler(space, seed=seed, maximize=maximize, startup_trials=int(options.get("startup_trials", 10)))
    raise SweepInvalid(f"sampler.kind: {kind!r}; one of grid, random, tpe")


def _index_of(values: Sequence[Any], value: Any) -> int:
    """Where `value` is among a choice's values, by type too: True, 1 and 1.0 are different choices."""
    return next(i for i, v in enumerate(values) if type(v) is type(value) and v == value)
