"""A search space: each parameter of the objective is a dimension, written as JSON (the API, the CLI,
cluster.yaml and the Python client all use the same forms):

    {"uniform": [0.0, 1.0]}        a float in [low, high]
    {"loguniform": [1e-5, 1e-1]}   a float, uniform in its logarithm (0 < low < high)
    {"int": [1, 8]}                an integer in [low, high]; add "log": true for a log scale
    {"choice": ["l1", "l2"]}       one of the values (JSON values); a plain list means the same
    5, "adam", true                a constant (any JSON value that is not a list or one of the above)

Bad dimensions are refused with the parameter named (SweepInvalid), before anything is stored.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from clusterai.errors import SweepInvalid

MAX_DIMENSIONS = 64
MAX_CHOICES = 1000
_FORMS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # uniform | loguniform | int | choice | constant
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "constant":
            return self.values[0]
        if self.kind == "choice":
            return self.values[rng.randrange(len(self.values))]
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            if self.log:
                value = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
                return min(int(self.high), int(math.floor(value)))
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def grid_values(self) -> tuple[Any, ...]:
        """Every value, for a grid; a float range has none to enumerate."""
        if self.kind in ("constant", "choice"):
            return self.values
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return tuple(range(int(self.low), int(self.high) + 1))
        raise SweepInvalid(f"space.{self.name}: a {self.kind} range has no grid; list the values to try "
                           f"({{\"choice\": [...]}}) or use the random or tpe sampler")

    def grid_count(self) -> int:
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return int(self.high) - int(self.low) + 1
        return len(self.grid_values())

    def extremes(self) -> tuple[Any, ...]:
        """The values that check the objective accepts the whole dimension (its ends, every choice)."""
        if self.kind in ("constant", "choice"):
            return self.values
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return (int(self.low), int(self.high))
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        if self.kind in ("constant", "choice"):
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def to_json(self) -> Any:
        if self.kind == "constant":
            return self.values[0]
        if self.kind == "choice":
            return {"choice": list(self.values)}
        body: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.log and self.kind == "int":
            body["log"] = True
        return body


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self.dimensions)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {d.name: d.sample(rng) for d in self.dimensions}

    def grid_size(self) -> int:
        """How many points the grid has, counted without listing them (an int range may be huge)."""
        return math.prod(d.grid_count() for d in self.dimensions)

    def grid_point(self, index: int) -> dict[str, Any]:
        """The index-th point of the grid, the last dimension changing fastest."""
        point: dict[str, Any] = {}
        for d in reversed(self.dimensions):
            index, i = divmod(index, d.grid_count())
            point[d.name] = int(d.low or 0) + i if d.kind == "int" else d.grid_values()[i]
        return {d.name: point[d.name] for d in self.dimensions}

    def probes(self) -> Iterator[dict[str, Any]]:
        """Points that together touch every dimension's extremes: all lows first, then each
        dimension's other values one at a time (the objective's schema checks each at submit)."""
        base = {d.name: d.extremes()[0] for d in self.dimensions}
        yield dict(base)
        for d in self.dimensions:
            for value in d.extremes()[1:]:
                yield {**base, d.name: value}

    def to_json(self) -> dict[str, Any]:
        return {d.name: d.to_json() for d in self.dimensions}


def parse_space(raw: Any) -> Space:
    if not isinstance(raw, Mapping) or not raw:
        raise SweepInvalid("space: give an object of parameter -> dimension, e.g. "
                           '{"alpha": {"loguniform": [1e-5, 0.1]}, "penalty": ["l1", "l2"]}')
    if len(raw) > MAX_DIMENSIONS:
        raise SweepInvalid(f"space: {len(raw)} parameters; at most {MAX_DIMENSIONS}")
    dims = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SweepInvalid(f"space: {name!r} is not a parameter name (letters, digits, _)")
        dims.append(_dimension(name, value))
    return Space(tuple(dims))


def _dimension(name: str, raw: Any) -> Dimension:
    where = f"space.{name}"
    if isinstance(raw, list):
        raw = {"choice": raw}
    if not isinstance(raw, Mapping):
        _check_json(where, raw)
        return Dimension(name, "constant", values=(raw,))
    forms = [f for f in _FORMS if f in raw]
    if not forms:
        _check_json(where, raw)  # an object that names no form is a constant object
        return Dimension(name, "constant", values=(dict(raw),))
    extra = set(raw) - {forms[0], "log"}
    if len(forms) > 1 or extra:
        raise SweepInvalid(f"{where}: one of {', '.join(_FORMS)} (and 'log' with int), got keys {sorted(raw)}")
    form = forms[0]
    if form == "choice":
        values = raw["choice"]
        if not isinstance(values, list) or not values or len(values) > MAX_CHOICES:
            raise SweepInvalid(f"{where}: choice needs a list of 1 to {MAX_CHOICES} values")
        for value in values:
            _check_json(where, value)
        return Dimension(name, "choice", values=tuple(values))
    bounds = raw[form]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not _finite(b) for b in bounds)):
        raise SweepInvalid(f"{where}: {form} needs [low, high], two finite numbers; got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    log = raw.get("log", False)
    if not isinstance(log, bool) or (log and form != "int"):
        raise SweepInvalid(f"{where}: 'log' is true or false, and only for int (use loguniform for floats)")
    if not low < high:
        raise SweepInvalid(f"{where}: {form} needs low < high, got [{bounds[0]}, {bounds[1]}]")
    if form == "loguniform" and low <= 0:
        raise SweepInvalid(f"{where}: loguniform needs 0 < low, got [{bounds[0]}, {bounds[1]}]")
    if form == "int":
        if low != int(low) or high != int(high):
            raise SweepInvalid(f"{where}: int needs whole numbers, got [{bounds[0]}, {bounds[1]}]")
        if log and low < 1:
            raise SweepInvalid(f"{where}: int with log needs low >= 1, got {bounds[0]}")
    return Dimension(name, form, low=low, high=high, log=log)


def _check_json(where: str, value: Any) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SweepInvalid(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, list):
        for item in value:
            _check_json(where, item)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SweepInvalid(f"{where}: object keys must be strings, got {key!r}")
            _check_json(where, item)
        return
    raise SweepInvalid(f"{where}: {type(value).__name__} is not a JSON value")


def grid_points(space: Space) -> Iterator[dict[str, Any]]:
    """Every grid point in order (for tests and small grids)."""
    names = space.names
    for combo in itertools.product(*(d.grid_values() for d in space.dimensions)):
        yield dict(zip(names, combo))


def _finite(value: int | float) -> bool:
    """A finite number a float can hold (a JSON integer may be too big for one)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
