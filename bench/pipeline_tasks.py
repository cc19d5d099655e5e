"""Trivial stage tasks for bench/pipelines.py: the work costs nothing, so the time is the platform's."""

from __future__ import annotations

from typing import Any

import clusterai


@clusterai.task("benchp.step", retries=0)
def step(value: int) -> dict[str, Any]:
    return {"value": value + 1}


@clusterai.task("benchp.total", retries=0)
def total(values: list[Any]) -> dict[str, Any]:
    return {"total": sum(v for v in values if v is not None)}
