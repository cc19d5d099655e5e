"""How a trial's job outcome becomes the trial's state and value."""

from __future__ import annotations

import math
from typing import Any

from clusterai.core.model import State


def trial_outcome(job_state: State, result: Any, error: str | None, metric: str,
                  last_reported: float | None) -> tuple[str, float | None, str | None]:
    """(trial state, value, note) for a finished job. The value is what the objective returned (a
    number, or `metric` in the object it returned), else the last value of `metric` it reported."""
    if job_state is State.CANCELLED:
        return "cancelled", None, error
    if job_state is not State.SUCCEEDED:
        return "failed", None, error
    if isinstance(result, dict) and "stopped" in result:
        reported = (result.get("metrics") or {}).get(metric)
        value = _number(reported)
        return "pruned", value if value is not None else last_reported, str(result["stopped"])
    value = _number(result)
    if value is None and isinstance(result, dict):
        value = _number(result.get(metric))
    if value is None:
        value = last_reported
    if value is None:
        return "failed", None, (f"the objective returned neither a number nor {metric!r} and reported no "
                                f"{metric!r}; return a number or {{{metric!r}: number, ...}}")
    return "succeeded", value, None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too big for a float
        return None
    return number if math.isfinite(number) else None
