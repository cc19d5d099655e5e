"""Custom placement strategies that tests load by dotted path through make_strategy."""

from __future__ import annotations

from collections.abc import Sequence

from clusterai.core.model import Job
from clusterai.placement.slots import WorkerSlot


class Fixed:
    """Always the candidate named `name_to_pick`; None when it is not among them."""

    def __init__(self, name_to_pick: str = "b"):
        self.name_to_pick = name_to_pick

    def choose(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None:
        return next((c for c in candidates if c.name == self.name_to_pick), None)


class Named(Fixed):
    name = "my-own-name"


class NoChoose:
    """Looks like a strategy class but cannot choose anything."""

    def pick(self, job: Job, candidates: Sequence[WorkerSlot]) -> WorkerSlot | None:
        return None


class ChooseNotCallable:
    choose = "first"


NOT_A_CLASS = 42
