"""The one exponentially weighted mean of the package: task durations measured by the planner and by
each worker, the autoscaler's demand profile and measured start times."""

from __future__ import annotations

DURATION_ALPHA = 0.2  # how much one new job's duration moves a task's measured mean


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    """Blend `sample` into `previous` with weight `alpha` (0 < alpha <= 1); the first sample is taken as is."""
    if previous is None:
        return sample
    return alpha * sample + (1.0 - alpha) * previous
