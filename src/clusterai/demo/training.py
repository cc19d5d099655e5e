"""The demo's training part: a hyper-parameter sweep of the built-in scikit-learn trainer on the
digits data set (TPE through Optuna, median pruning of poor trials on their per-epoch reports),
run as durable jobs beside the rest of the demo; its best model lands in the registry, and is then
downloaded, checked against its SHA-256 and scored on the held-out digits."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from clusterai.sdk.local import Client

MODEL = "digits"
TRIALS = 12
SPACE = {"alpha": {"loguniform": [1e-6, 1e-1]}, "penalty": ["l1", "l2", "elasticnet"],
         "loss": ["hinge", "log_loss", "modified_huber"], "epochs": 12}


def available() -> bool:
    """The train extra (scikit-learn, Optuna) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("sklearn", "optuna"))


def start_sweep(client: Client) -> dict[str, Any]:
    return client.sweep("train.sgd_digits", SPACE, TRIALS, name="demo-digits",
                        sampler={"kind": "tpe", "seed": 0, "startup_trials": 6}, metric="accuracy",
                        pruner={"kind": "median", "warmup_steps": 3}, register={"name": MODEL, "alias": "staging"})


def follow_sweep(client: Client, sweep_id: int, console: Console, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with console.status("sweep: ...") as shown:
        while True:
            status = client.sweeps.status(sweep_id, curves=False)
            c = status["counts"]
            shown.update(f"sweep {status['name']}: {c['done']}/{status['trials_wanted']} trials done "
                         f"({c['running']} running, {c['pruned']} pruned)")
            if status["state"] != "running" or time.monotonic() > deadline:
                return client.sweeps.status(sweep_id)
            time.sleep(0.3)


def sweep_tables(client: Client, status: dict[str, Any]) -> tuple[list[Table], dict[str, Any]]:
    best = status["best"] or {}
    trials = Table(title=f"Sweep {status['name']}: {status['counts']['done']} trials of train.sgd_digits "
                         f"(TPE, median pruning), {status['state']}")
    for column in ("trial", "state", "accuracy", "epochs run", "parameters"):
        trials.add_column(column)
    for t in status["trials"]:
        params = ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(t["params"].items()) if k != "epochs")
        mark = " (best)" if t["number"] == best.get("number") else ""
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        trials.add_row(f"{t['number']}{mark}", t["state"], value, str(t["steps"]), params)
    outcome: dict[str, Any] = {"state": status["state"], "counts": status["counts"], "best": best.get("value")}
    registry = Table(title=f"Model registry: {MODEL}")
    for column in ("version", "aliases", "from", "validation accuracy", "sha256"):
        registry.add_column(column)
    if status["state"] == "succeeded":
        version, data = client.registry.download(MODEL, "staging")  # checked against its SHA-256
        from clusterai.workloads.training import load_model, validation_digits

        vx, vy = validation_digits()
        accuracy = float((load_model(data).predict(vx) == vy).mean())
        registry.add_row(f"v{version['version']}", ", ".join(version["aliases"]),
                         f"sweep {version['sweep_id']} trial {version['trial']}", f"{accuracy:.3f}",
                         version["artifact"]["sha256"][:16] + "...")
        outcome.update(version=version["version"], accuracy=accuracy)
    return [trials, registry], outcome

