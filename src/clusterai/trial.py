"""What a task uses while it trains: `from clusterai import trial`, then `trial.report(step, loss=...)`,
`trial.checkpoint(state)`, `state = trial.restore()`. See worker/trial.py."""

from clusterai.worker.execute import StopRequested
from clusterai.worker.trial import checkpoint, last_checkpoint, report, restore, should_stop

__all__ = ["StopRequested", "checkpoint", "last_checkpoint", "report", "restore", "should_stop"]
