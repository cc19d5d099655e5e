"""`client.pipelines`: start, watch and steer pipeline runs, on an embedded cluster or on the
store of a running one (the same methods exist over HTTP in sdk/remote.py)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping
from typing import Any

from clusterai.core.pipelines import Pipeline, RunState
from clusterai.errors import ResultTimeout
from clusterai.service.runs import PipelineRunner, describe, known_pipelines


class Pipelines:
    def __init__(self, runner: PipelineRunner, poke: Callable[[int], None] = lambda run_id: None):
        self.runner = runner
        self.poke = poke  # tells an embedded coordinator to look at a run now

    def list(self) -> list[dict[str, Any]]:
        """The pipelines this cluster knows: built in, and from cluster.yaml."""
        return [describe(p) for _, p in sorted(known_pipelines(self.runner.config).items())]

    def run(self, pipeline: Pipeline | str, run_input: Mapping[str, Any], *, fresh: bool = False,
            owner: str | None = None) -> dict[str, Any]:
        """Start a run; stage jobs already done for the same input are reused unless `fresh`."""
        record = self.runner.start(pipeline, run_input, fresh=fresh, owner=owner)
        self.poke(record.id)
        return self.status(record.id)

    def status(self, run_id: int) -> dict[str, Any]:
        return self.runner.status(run_id)

    def runs(self, *, name: str | None = None, state: str | None = None, limit: int = 50
             ) -> builtins.list[dict[str, Any]]:
        return [r.to_dict() for r in self.runner.store.list_runs(name=name, state=state, limit=limit)]

    def outputs(self, run_id: int, stage: str | None = None) -> builtins.list[dict[str, Any]]:
        return self.runner.outputs(run_id, stage)

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 0.2) -> dict[str, Any]:
        """Block until the run has finished (succeeded, failed or cancelled); its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.runner.store.get_run(run_id).state != RunState.RUNNING.value:
                return self.status(run_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"pipeline run {run_id} still running after {timeout} s")
            time.sleep(poll)

    def cancel(self, run_id: int) -> dict[str, Any]:
        self.runner.cancel(run_id)
        return self.status(run_id)

    def retry(self, run_id: int) -> dict[str, Any]:
        self.runner.retry(run_id)
        self.poke(run_id)
        return self.status(run_id)
