"""Placement: which worker runs a job. Strategies are small policy objects shared by both planes."""

from clusterai.placement.strategies import (
    LeastLoaded,
    RoundRobin,
    Strategy,
    WorkerSlot,
    make_strategy,
)

__all__ = ["LeastLoaded", "RoundRobin", "Strategy", "WorkerSlot", "make_strategy"]
