"""`clusterai sweep run|status|best|list|cancel|resume` and `clusterai registry list|show|alias|download`.

`models` stays the LLM gateway's command (model servers and what each serves); trained models live
in the registry, so their command is `registry`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.live import Live
from rich.table import Table

from clusterai.cli.common import client, err, errors_to_exit_codes, out, settings
from clusterai.errors import EXIT_FAILED, BadInput

sweep_app = typer.Typer(help="Hyper-parameter sweeps: trials of a training task, each a durable job.",
                        no_args_is_help=True)
registry_app = typer.Typer(help="The model registry: versions of trained models, their aliases and bytes.",
                           no_args_is_help=True)


def read_document(text: str, what: str) -> Any:
    """JSON or YAML given inline or as @file (YAML is a superset of JSON)."""
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BadInput(f"{what}: not valid JSON or YAML: {str(exc).splitlines()[0]}") from None


def definition_from(name: str | None, file: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """A sweep's definition: cluster.yaml's `sweeps.NAME`, or a file, or only the options; options win."""
    base: dict[str, Any] = {}
    if name is not None and file is not None:
        raise BadInput("give a sweep name from cluster.yaml or --file, not both")
    if name is not None:
        known = settings.config().sweeps
        if name not in known:
            raise BadInput(f"no sweep named {name!r} in cluster.yaml; known: {', '.join(sorted(known)) or 'none'}")
        base = {"name": name, **known[name]}
    elif file is not None:
        loaded = read_document(f"@{file}", "--file")
        if not isinstance(loaded, dict):
            raise BadInput("--file: a sweep definition is a mapping with objective, space and trials")
        base = loaded
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    if "objective" not in merged:
        raise BadInput("a sweep needs an objective: --objective TASK, --file, or a name from cluster.yaml")
    return merged


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def _trials_table(status: dict[str, Any]) -> Table:
    counts = status["counts"]
    table = Table(title=f"sweep {status['id']} ({status['name']}): {status['state']}, {counts['done']}/"
                        f"{status['trials_wanted']} done, {counts['running']} running")
    for column in ("trial", "state", status["metric"], "steps", "job", "params"):
        table.add_column(column)
    best = (status.get("best") or {}).get("number")
    for t in status["trials"]:
        mark = " *" if t["number"] == best else ""
        table.add_row(f"{t['number']}{mark}", t["state"], _value(t["value"]), str(t["steps"]), str(t["job_id"]),
                      _params(t["params"]))
    return table


def _print_best(status: dict[str, Any]) -> None:
    best = status.get("best")
    if best is None:
        out.print(f"sweep {status['id']} {status['state']}: no trial has succeeded yet")
        return
    out.print(f"sweep {status['id']} {status['state']}: best trial {best['number']} {status['metric']}="
              f"{_value(best['value'])} ({_params(best['params'])})")
    if status.get("note"):
        out.print(f"[dim]{status['note']}[/]", highlight=False)


def _follow(c: Any, status: dict[str, Any], timeout: float | None, quiet: bool) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    live = None if quiet else Live(_trials_table(status), console=err, auto_refresh=False)
    try:
        if live is not None:
            live.start()
        while status["state"] == "running":
            if deadline is not None and time.monotonic() >= deadline:
                err.print(f"still running after {timeout} s: `clusterai sweep status {status['id']}`")
                raise typer.Exit(EXIT_FAILED)
            time.sleep(1.0)
            status = c.sweeps.status(status["id"], curves=False)
            if live is not None:
                live.update(_trials_table(status), refresh=True)
    finally:
        if live is not None:
            live.stop()
    return status


@sweep_app.command("run")
@errors_to_exit_codes
def sweep_run(
    name: str | None = typer.Argument(None, help="a sweep defined under sweeps: in cluster.yaml"),
    file: str | None = typer.Option(None, "--file", "-f", help="a sweep definition (YAML or JSON)"),
    objective: str | None = typer.Option(None, "--objective", "-o", help="the task each trial runs"),
    space: str | None = typer.Option(None, "--space", "-s", help="the search space as JSON/YAML, or @file"),
    trials: int | None = typer.Option(None, "--trials", "-n", min=1, help="how many trials"),
    sampler: str | None = typer.Option(None, "--sampler", help="grid, random or tpe"),
    metric: str | None = typer.Option(None, "--metric", help="what to optimise (a result or report field)"),
    mode: str | None = typer.Option(None, "--mode", help="max or min"),
    pruner: str | None = typer.Option(None, "--pruner", help="none, median or halving"),
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="trials at once"),
    register: str | None = typer.Option(None, "--register", help="register the best model under this name"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the sweep until it ends"),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help="stop waiting after this long"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a sweep; by default follow its trials until it ends and print the best one."""
    overrides = {"objective": objective, "trials": trials, "sampler": sampler, "metric": metric, "mode": mode,
                 "pruner": pruner, "concurrency": concurrency, "register": register,
                 "space": read_document(space, "--space") if space is not None else None}
    c = client()
    status = c.sweeps.start(definition_from(name, file, overrides))
    if wait:
        status = _follow(c, status, timeout, quiet=as_json)
        status = c.sweeps.status(status["id"])
    if as_json:
        out.print_json(json.dumps(status))
    elif not wait:
        out.print(f"sweep {status['id']} started: `clusterai sweep status {status['id']}`")
    else:
        out.print(_trials_table(status))
        _print_best(status)
    if wait and status["state"] != "succeeded":
        raise typer.Exit(EXIT_FAILED)


@sweep_app.command("status")
@errors_to_exit_codes
def sweep_status(sweep_id: int, as_json: bool = typer.Option(False, "--json"),
                 watch: bool = typer.Option(False, "--watch", help="follow it until it ends")) -> None:
    """A sweep's trials (state, value, steps, parameters) and its best trial so far."""
    c = client()
    status = c.sweeps.status(sweep_id, curves=as_json)
    if watch and status["state"] == "running":
        status = _follow(c, status, None, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(status))
        return
    out.print(_trials_table(status))
    _print_best(status)


@sweep_app.command("best")
@errors_to_exit_codes
def sweep_best(sweep_id: int, as_json: bool = typer.Option(False, "--json")) -> None:
    """The best finished trial: its value and parameters."""
    c = client()
    status = c.sweeps.status(sweep_id, curves=False)
    if as_json:
        out.print_json(json.dumps(status["best"]))
        return
    _print_best(status)
    if status["best"] is None:
        raise typer.Exit(EXIT_FAILED)


@sweep_app.command("list")
@errors_to_exit_codes
def sweep_list(state: str | None = typer.Option(None, "--state"),
               limit: int = typer.Option(20, "--limit", min=1, max=1000),
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Sweeps, newest first."""
    sweeps = client().sweeps.list(state=state, limit=limit)
    if as_json:
        out.print_json(json.dumps(sweeps))
        return
    table = Table(title="sweeps")
    for column in ("id", "name", "objective", "state", "done", "best", "started"):
        table.add_column(column)
    for s in sweeps:
        best = s["best"]
        table.add_row(str(s["id"]), s["name"], s["objective"], s["state"],
                      f"{s['counts']['done']}/{s['trials_wanted']}",
                      "-" if best is None else f"{s['metric']}={_value(best['value'])} (trial {best['number']})",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created_at"])))
    out.print(table)


@sweep_app.command("cancel")
@errors_to_exit_codes
def sweep_cancel(sweep_id: int) -> None:
    """Stop making trials and cancel the unfinished ones (their checkpoints stay for `resume`)."""
    status = client().sweeps.cancel(sweep_id)
    out.print(f"sweep {sweep_id} {status['state']}: {status['counts']['done']} trials done")


@sweep_app.command("resume")
@errors_to_exit_codes
def sweep_resume(sweep_id: int) -> None:
    """Run a cancelled or failed sweep on: its unfinished trials resume from their checkpoints."""
    status = client().sweeps.resume(sweep_id)
    out.print(f"sweep {sweep_id} {status['state']}: `clusterai sweep status {sweep_id} --watch`")


@registry_app.command("list")
@errors_to_exit_codes
def registry_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Registered models: latest version, how many versions, aliases."""
    models = client().registry.models()
    if as_json:
        out.print_json(json.dumps(models))
        return
    table = Table(title="model registry")
    for column in ("model", "latest", "versions", "aliases", "metrics"):
        table.add_column(column)
    for m in models:
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(m["aliases"].items())) or "-"
        metrics = ", ".join(f"{k}={_value(v)}" for k, v in sorted(m["metrics"].items())) or "-"
        table.add_row(m["name"], f"v{m['latest']}", str(m["versions"]), aliases, metrics)
    out.print(table)


@registry_app.command("show")
@errors_to_exit_codes
def registry_show(name: str, version: str | None = typer.Argument(None, help="a number, an alias, or latest"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """One version: where it came from (sweep, trial, job, parameters), its metrics and artifact."""
    c = client()
    if version is None and not as_json:
        for v in c.registry.versions(name):
            aliases = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
            out.print(f"{name} v{v['version']}{aliases}: " + ", ".join(
                f"{k}={_value(x)}" for k, x in sorted(v["metrics"].items())), highlight=False)
        return
    shown = c.registry.show(name, version)
    out.print_json(json.dumps(shown))


@registry_app.command("alias")
@errors_to_exit_codes
def registry_alias(name: str, alias: str,
                   version: str | None = typer.Argument(None, help="the version (or alias) to point at"),
                   remove: bool = typer.Option(False, "--remove", help="remove the alias")) -> None:
    """Point an alias (production, staging, ...) at a version, or --remove it."""
    if (version is None) != remove:
        raise BadInput("give the version to point the alias at, or --remove")
    shown = client().registry.set_alias(name, alias, None if remove else version)
    if remove:
        out.print(f"{name}: alias {alias} removed")
    else:
        out.print(f"{name}: {alias} -> v{shown['version']}")


@registry_app.command("download")
@errors_to_exit_codes
def registry_download(name: str, version: str | None = typer.Argument(None, help="a number, an alias, or latest"),
                      output: Path = typer.Option(..., "--output", "-o", help="where to write the model's bytes"),
                      force: bool = typer.Option(False, "--force", help="overwrite an existing file")) -> None:
    """A version's bytes, checked against its SHA-256, written to --output."""
    if output.exists() and not force:
        raise BadInput(f"{output} exists; --force to overwrite it")
    shown, data = client().registry.download(name, version)
    partial = output.with_name(output.name + ".part")
    partial.write_bytes(data)
    partial.replace(output)  # a reader never sees half a model
    out.print(f"{name} v{shown['version']}: {len(data)} bytes, sha256 {shown['artifact']['sha256']} -> {output}")
