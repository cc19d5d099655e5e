"""`clusterai workers`: list and inspect workers; drain, undrain, remove or restart one.

Commands go through the store: the running coordinator picks them up within about a second and
writes back what it did, so they work from any machine that reaches the store."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from clusterai.cli.common import client, err, errors_to_exit_codes, out
from clusterai.core.model import WorkerRecord
from clusterai.errors import EXIT_UNAVAILABLE, BadInput
from clusterai.sdk.rolling import roll_workers

workers_app = typer.Typer(help="Workers of the cluster.", no_args_is_help=True)


def _record_dict(w: WorkerRecord) -> dict[str, object]:
    return dict(w.__dict__)


def _pairs(mapping: dict[str, object]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in mapping.items()) or "-"


@workers_app.command("list")
@errors_to_exit_codes
def workers_list(as_json: bool = typer.Option(False, "--json"),
                 everyone: bool = typer.Option(False, "--all", help="include workers that are gone")) -> None:
    """Workers as the coordinator last saw them: labels, resources, load, breaker."""
    workers = [w for w in client().workers() if everyone or w.status != "gone"]
    if as_json:
        out.print_json(json.dumps([_record_dict(w) for w in workers]))
        return
    table = Table(title=f"{sum(w.status != 'gone' for w in workers)} workers")
    for column in ("name", "address", "status", "labels", "resources", "in flight", "done", "failed",
                   "cpu %", "memory", "breaker", "last seen"):
        table.add_column(column)
    for w in workers:
        mem = w.metrics.get("memory")
        resources = {k: v for k, v in w.resources.items() if k != "MEMORY"}
        table.add_row(w.name, w.address, w.status, _pairs(dict(w.labels)), _pairs(dict(resources)),
                      str(w.inflight), str(w.completed), str(w.failed), f"{w.metrics.get('cpu', 0):.0f}",
                      f"{mem / 2**20:.0f} MiB" if mem else "-", w.breaker,
                      f"{time.time() - w.last_seen:.0f} s ago")
    out.print(table)


def _find(name: str) -> WorkerRecord:
    workers = client().workers()
    for w in workers:
        if name in (w.name, w.address) and w.status != "gone":
            return w
    known = ", ".join(w.name for w in workers if w.status != "gone") or "(none)"
    raise BadInput(f"no live worker named {name!r}; live workers: {known}")


@workers_app.command("show")
@errors_to_exit_codes
def workers_show(name: str) -> None:
    """One worker in full."""
    out.print_json(json.dumps(_record_dict(_find(name))))


def _command(name: str, action: str, wait: float) -> None:
    outcome = client().command_worker(name, action, wait)
    if outcome is None:
        err.print(f"worker {name}: {action} requested; the coordinator has not acted on it within "
                  f"{wait:g} s (is the cluster up?). It will when it runs.")
        raise typer.Exit(EXIT_UNAVAILABLE)
    out.print(f"worker {name}: {outcome}")


def _action_command(action: str, summary: str, default_wait: float) -> None:
    def command(name: str = typer.Argument(..., help="worker name or address"),
                wait: float = typer.Option(default_wait, "--wait", min=0,
                                           help="seconds to wait for the coordinator")) -> None:
        _command(name, action, wait)

    command.__doc__ = summary
    workers_app.command(action)(errors_to_exit_codes(command))


_action_command("drain", "Let the worker finish its running jobs and give it no new ones.", 10.0)
_action_command("undrain", "Put a drained worker back in rotation.", 10.0)
_action_command("remove", "Drain the worker, then retire it from the cluster once its jobs are done.", 60.0)
_action_command("restart", "Restart the worker process through its nanny (its running jobs are retried elsewhere).",
                60.0)


@workers_app.command("roll")
@errors_to_exit_codes
def workers_roll(names: list[str] = typer.Argument(None, help="workers to restart (default: every ready one)"),
                 drain_timeout: float = typer.Option(600.0, "--drain-timeout", min=1,
                                                     help="seconds a worker may take to finish its jobs"),
                 ready_timeout: float = typer.Option(180.0, "--ready-timeout", min=1,
                                                     help="seconds a worker may take to come back ready")) -> None:
    """Restart workers one at a time (drain, restart, wait until ready): new code or settings with no
    job lost or run twice."""
    rolled = roll_workers(client(), names or (), drain_timeout=drain_timeout, ready_timeout=ready_timeout,
                          say=lambda line: out.print(line, highlight=False))
    out.print(f"rolled {len(rolled)} worker(s)")
