"""Hyper-parameter sweeps, the pure part: search spaces, samplers, pruners, the sweep definition and
how a trial's job outcome becomes the trial's. The head's driver (head/sweep_driver.py) runs them;
the service (service/sweeps.py) checks and starts them."""

from clusterai.sweeps.outcome import trial_outcome
from clusterai.sweeps.pruners import make_pruner
from clusterai.sweeps.samplers import TrialView, make_sampler
from clusterai.sweeps.space import Space, parse_space
from clusterai.sweeps.spec import SweepSpec, parse_spec

__all__ = ["Space", "SweepSpec", "TrialView", "make_pruner", "make_sampler", "parse_space", "parse_spec",
           "trial_outcome"]
