"""Pruners: whether a running trial should stop early, judged by the head each time the trial
reports its metric. One method, `judge(number, step, curves, maximize) -> reason | None`, on the
curves of every trial of the sweep (trial number -> {step: value of the sweep's metric}); pure, so
a head that restarts judges the same from the stored series.

- median: stop a trial whose best value so far is worse than the median of the other trials' best
  values up to the same step (after `warmup_steps`, once `min_trials` others have got that far);
- halving: asynchronous successive halving; rungs at min_step * reduction**k; at a rung a trial
  goes on only if it is in the top 1/reduction of the trials that reached that rung (judged once,
  when it reports the rung's step; fewer than `reduction` trials there: it goes on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from clusterai.errors import SweepInvalid

Curves = Mapping[int, Mapping[int, float]]


class Pruner(Protocol):
    def judge(self, number: int, step: int, curves: Curves, maximize: bool) -> str | None: ...


class NoPruner:
    def judge(self, number: int, step: int, curves: Curves, maximize: bool) -> str | None:
        return None


def _best_up_to(curve: Mapping[int, float], step: int, maximize: bool) -> float | None:
    values = [v for s, v in curve.items() if s <= step]
    if not values:
        return None
    return max(values) if maximize else min(values)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


class MedianStopping:
    def __init__(self, warmup_steps: int = 1, min_trials: int = 3):
        self.warmup_steps = warmup_steps
        self.min_trials = min_trials

    def judge(self, number: int, step: int, curves: Curves, maximize: bool) -> str | None:
        if step < self.warmup_steps:
            return None
        mine = _best_up_to(curves.get(number, {}), step, maximize)
        others = [best for other, curve in curves.items() if other != number and curve and max(curve) >= step
                  for best in [_best_up_to(curve, step, maximize)] if best is not None]
        if mine is None or len(others) < self.min_trials:
            return None
        median = _median(others)
        worse = mine < median if maximize else mine > median
        if worse:
            return f"median stopping at step {step}: best {mine:.6g} is worse than the median {median:.6g} " \
                   f"of {len(others)} other trials"
        return None


class SuccessiveHalving:
    def __init__(self, min_step: int = 1, reduction: int = 3):
        self.min_step = min_step
        self.reduction = reduction

    def rung_of(self, step: int) -> int | None:
        """The rung this step is, or None (only rung steps are judged)."""
        if step < self.min_step:
            return None
        k = round(math.log(step / self.min_step, self.reduction))
        return k if self.min_step * self.reduction ** k == step else None

    def judge(self, number: int, step: int, curves: Curves, maximize: bool) -> str | None:
        rung = self.rung_of(step)
        if rung is None or step not in curves.get(number, {}):
            return None
        at_rung = [curve[step] for curve in curves.values() if step in curve]
        if len(at_rung) < self.reduction:
            return None
        keep = max(1, len(at_rung) // self.reduction)
        ranked = sorted(at_rung, reverse=maximize)
        cutoff = ranked[keep - 1]
        mine = curves[number][step]
        if (mine < cutoff) if maximize else (mine > cutoff):
            return (f"successive halving at rung {rung} (step {step}): {mine:.6g} is not in the top {keep} "
                    f"of {len(at_rung)} trials there")
        return None


def make_pruner(raw: Mapping[str, Any] | None) -> Pruner:
    """From a sweep's `pruner` field: None or {"kind": "none" | "median" | "halving", ...}."""
    if raw is None:
        return NoPruner()
    kind = raw.get("kind")
    options = {k: v for k, v in raw.items() if k != "kind"}
    allowed = {"none": {}, "median": {"warmup_steps": 1, "min_trials": 3}, "halving": {"min_step": 1, "reduction": 3}}
    if kind not in allowed:
        raise SweepInvalid(f"pruner.kind: {kind!r}; one of none, median, halving")
    unknown = set(options) - set(allowed[kind])
    if unknown:
        raise SweepInvalid(f"pruner: unknown option(s) {', '.join(sorted(unknown))} for {kind}; "
                           f"allowed: {', '.join(allowed[kind]) or 'none'}")
    values = {**allowed[kind], **options}
    for name, value in values.items():
        least = 2 if name == "reduction" else (0 if name == "warmup_steps" else 1)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 1_000_000:
            raise SweepInvalid(f"pruner.{name}: an integer from {least} to 1000000, got {value!r}")
    if kind == "median":
        return MedianStopping(**values)
    if kind == "halving":
        return SuccessiveHalving(**values)
    return NoPruner()
