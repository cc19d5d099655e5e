"""Placement: which worker runs a job. Strategies are small policy objects shared by both planes."""

from clusterai.placement.breaker import BreakerState, CircuitBreaker
from clusterai.placement.slots import Constraints, WorkerSlot
from clusterai.placement.strategies import Strategy, make_strategy

__all__ = ["BreakerState", "CircuitBreaker", "Constraints", "Strategy", "WorkerSlot", "make_strategy"]
