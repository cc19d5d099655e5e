"""The cluster autoscaler: pure decisions (`Autoscaler.decide`) and the providers that act on them.

A caller (the head's coordinator) gathers a `Snapshot` every few seconds, asks `Autoscaler.decide`
for one `Decision` per profile, launches `desired - current` workers through a `Provider`, and for
a scale-down asks `choose_to_retire` which workers may go. Nothing here reads the store or Dask:
the decisions are a function of the snapshot and the autoscaler's clock, so they are testable.
"""

from __future__ import annotations

from clusterai.autoscale.config import AutoscaleConfig, parse_autoscale
from clusterai.autoscale.engine import Autoscaler, Plan, Retirement, choose_to_retire
from clusterai.autoscale.model import (
    Decision,
    DecisionRecord,
    Profile,
    QueueDemand,
    Snapshot,
    WorkerView,
)
from clusterai.autoscale.policies import (
    Policy,
    Predictive,
    Proposal,
    Reactive,
    Scheduled,
    TargetTracking,
    Window,
    combine,
)
from clusterai.autoscale.providers import (
    CommandProvider,
    LaunchedWorker,
    LocalProcessProvider,
    Provider,
)
from clusterai.autoscale.ssh import SSHHost, SSHProvider
from clusterai.errors import AutoscaleConfigError, ProviderError

__all__ = [
    "AutoscaleConfig", "AutoscaleConfigError", "Autoscaler", "CommandProvider", "Decision", "DecisionRecord",
    "LaunchedWorker", "LocalProcessProvider", "Plan", "Policy", "Predictive", "Profile", "Proposal", "Provider",
    "ProviderError", "QueueDemand", "Reactive", "Retirement", "SSHHost", "SSHProvider", "Scheduled", "Snapshot",
    "TargetTracking", "Window", "WorkerView", "choose_to_retire", "combine", "parse_autoscale",
]
