"""`clusterai autoscale status|enable|disable`: the autoscaler's report and the operator's switch.

Changes go through the store (or the API with --url); the head applies them at its next round, so
they work from any machine that reaches the cluster, and hold across a restart of the head."""

from __future__ import annotations

import datetime
import json
from typing import Any

import typer
from rich.table import Table

from clusterai.cli.common import client, err, errors_to_exit_codes, out

autoscale_app = typer.Typer(help="The autoscaler: status, enable (with bounds), disable.", no_args_is_help=True)


def _when(at: float | None) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%H:%M:%S") if at else "-"


def _show(report: dict[str, Any], decisions: int) -> None:
    state = report.get("state")
    head = "enabled" if report["enabled"] else "disabled"
    if not report["running"]:
        head += " (no fresh report: is the cluster up?)"
    out.print(f"autoscaler: {head}" + (f", provider {state['provider']}" if state else ""))
    if state is None:
        return
    table = Table(title=f"profiles (reported {_when(report['reported_at'])})")
    for column in ("profile", "bounds", "ready", "starting", "draining", "busy", "desired", "why"):
        table.add_column(column)
    for p in state["profiles"]:
        table.add_row(p["name"], f"{p['min']}..{p['max']}", str(p["ready"]), str(p["starting"]), str(p["draining"]),
                      str(p["busy"]), str(p["desired"]), p["reason"])
    out.print(table)
    if state.get("unmanaged"):
        out.print(f"{state['unmanaged']} worker(s) not managed by the autoscaler (never retired by it)")
    for u in state.get("unschedulable", []):
        needs = ", ".join([*(f"{k}={v:g}" for k, v in u["requires"].items()), *u["labels"]]) or "nothing special"
        err.print(f"{u['queued']} queued job(s) in {u['queue']!r} need {needs}: no profile can run them")
    if state.get("error"):
        err.print(f"provider: {state['error']}")
    rows = report.get("decisions", [])[:decisions]
    if rows:
        log = Table(title="recent decisions")
        for column in ("at", "profile", "from", "to", "why"):
            log.add_column(column)
        for r in rows:
            log.add_row(_when(r["at"]), r["profile"], str(r["from"]), str(r["to"]), r["reason"])
        out.print(log)


@autoscale_app.command("status")
@errors_to_exit_codes
def autoscale_status(as_json: bool = typer.Option(False, "--json"),
                     decisions: int = typer.Option(10, "--decisions", min=0, max=1000,
                                                   help="how many recent decisions to show")) -> None:
    """Per profile: workers ready, starting and draining, desired and why; the decision log."""
    report = client().autoscale(decisions)
    if as_json:
        out.print_json(json.dumps(report))
        return
    _show(report, decisions)


@autoscale_app.command("enable")
@errors_to_exit_codes
def autoscale_enable(minimum: int | None = typer.Option(None, "--min", min=0, help="fewest workers"),
                     maximum: int | None = typer.Option(None, "--max", min=0, help="most workers"),
                     profile: str | None = typer.Option(None, "--profile", help="which profile (when several)")
                     ) -> None:
    """Let the autoscaler act, optionally with new bounds (kept until changed again)."""
    override = client().set_autoscale(True, minimum=minimum, maximum=maximum, profile=profile)
    bounds = ", ".join(f"{name} {b['min']}..{b['max']}" for name, b in override["profiles"].items())
    out.print("autoscaler enabled" + (f": {bounds}" if bounds else ""))


@autoscale_app.command("disable")
@errors_to_exit_codes
def autoscale_disable() -> None:
    """Stop deciding: the workers stay as they are (draining ones go back to work)."""
    client().set_autoscale(False)
    out.print("autoscaler disabled: workers stay as they are")
