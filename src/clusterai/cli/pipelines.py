"""`clusterai pipeline list|run|status|outputs|cancel|retry` and `clusterai counts`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from clusterai.cli.common import client, err, errors_to_exit_codes, out, settings
from clusterai.core.media_policy import SourcePolicy
from clusterai.core.tasks import parse_payload_text
from clusterai.errors import EXIT_FAILED, BadInput
from clusterai.workloads.sources import is_url

pipeline_app = typer.Typer(help="Pipelines: stages of tasks run as jobs across the cluster.", no_args_is_help=True)


def source_items(args: list[str], glob: str) -> list[dict[str, Any]]:
    """Command-line sources as pipeline items: a URL as it is; a file by its absolute path, with a
    version (size and modification time) so that a changed file is processed again; a folder as
    its files matching `glob`, sorted, hidden ones skipped."""
    items: list[dict[str, Any]] = []
    for arg in args:
        if is_url(arg):
            items.append({"source": arg})
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.glob(glob) if p.is_file() and not p.name.startswith("."))
            if not files:
                raise BadInput(f"{arg}: no files matching {glob!r} in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise BadInput(f"{arg}: no such file or folder (and not an http(s), rtsp or s3 URL)")
        for f in files:
            stat = f.stat()
            items.append({"source": str(f.resolve()), "version": f"{stat.st_size}-{stat.st_mtime_ns}"})
    return items


def check_allowed(items: list[dict[str, Any]], sources: list[str]) -> None:
    """Say up front when a local file is outside `media.sources`, rather than make jobs that die; the
    workers check again (that check is the one that counts: they may see other folders)."""
    policy = SourcePolicy.parse(sources)
    outside = [item["source"] for item in items if not is_url(item["source"])
               and policy.local_file(item["source"]) is None]
    if outside:
        more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
        raise BadInput(f"{outside[0]}{more}: outside the folders media.sources allows ({', '.join(sources)}); "
                       "add the folder to media.sources in cluster.yaml, or move the files into one of those")


def _progress_table(status: dict[str, Any]) -> Table:
    table = Table(title=f"pipeline run {status['id']} ({status['pipeline']}): {status['state']}")
    for column in ("stage", "task", "done", "total", "reused", "states"):
        table.add_column(column)
    for s in status["stages"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items())) or "-"
        table.add_row(s["name"], s["task"], str(s["done"]), "?" if s["total"] is None else str(s["total"]),
                      str(s["reused"]), states)
    return table


def _show_problems(status: dict[str, Any]) -> None:
    for where, problem in sorted(status["problems"].items()):
        err.print(f"[yellow]{where}:[/] {problem}", highlight=False)
    for job in status["jobs"]:
        if job["state"] in ("dead", "cancelled") and job["error"]:
            first = job["error"].splitlines()[0]
            err.print(f"[yellow]{job['stage']}/{job['item']} (job {job['job']}) {job['state']}:[/] {first}",
                      highlight=False)


@pipeline_app.command("list")
@errors_to_exit_codes
def pipeline_list(as_json: bool = typer.Option(False, "--json"),
                  runs: int = typer.Option(10, "--runs", min=0, max=1000, help="recent runs to show")) -> None:
    """Pipelines (built in and from cluster.yaml), and the most recent runs."""
    c = client()
    pipelines = c.pipelines.list()
    recent = c.pipelines.runs(limit=runs) if runs else []
    if as_json:
        out.print_json(json.dumps({"pipelines": pipelines, "runs": recent}))
        return
    table = Table(title="pipelines")
    for column in ("name", "stages", "input", "description"):
        table.add_column(column)
    for p in pipelines:
        stages = " -> ".join(s["name"] + ("*" if p["fan_out"][s["name"]] else "") for s in p["stages"])
        table.add_row(p["name"], stages, p.get("args") or "-", p.get("description", ""))
    out.print(table)
    out.print("[dim]* runs once per item of its fan-out[/]")
    if recent:
        runs_table = Table(title="recent runs")
        for column in ("id", "pipeline", "state", "started", "took"):
            runs_table.add_column(column)
        for r in recent:
            took = (r["finished_at"] or time.time()) - r["created_at"]
            runs_table.add_row(str(r["id"]), r["pipeline"], r["state"],
                               time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])), f"{took:.1f} s")
        out.print(runs_table)


@pipeline_app.command("run")
@errors_to_exit_codes
def pipeline_run(
    name: str = typer.Argument(..., help="a pipeline name (see `clusterai pipeline list`)"),
    sources: list[str] = typer.Argument(None, help="files, folders or URLs: they fill the pipeline's list input"),
    input_text: str | None = typer.Option(None, "--input", "-i", help="the input as JSON, or @file.json"),
    glob: str = typer.Option("*", "--glob", help="which files of a folder to take"),
    fresh: bool = typer.Option(False, "--fresh", help="run every stage again, even those done for this input"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the run until it ends"),
    timeout: float | None = typer.Option(None, "--timeout", min=0.1, help="stop waiting after this long"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a pipeline run, follow its stages, and print what its last stage produced."""
    c = client()
    run_input: dict[str, Any] = {}
    if input_text is not None:
        parsed = parse_payload_text(input_text)
        if not isinstance(parsed, dict):
            raise BadInput("--input must be a JSON object")
        run_input = parsed
    if sources:
        found = {p["name"]: p for p in c.pipelines.list()}
        if name not in found:
            raise BadInput(f"no pipeline named {name!r}; known: {', '.join(sorted(found)) or 'none'}")
        key = found[name].get("args")
        if not key:
            raise BadInput(f"pipeline {name!r} takes no positional sources; give --input")
        items = source_items(sources, glob)
        check_allowed(items, settings.config().media.sources)
        run_input[key] = [*run_input.get(key, []), *items]
    status = c.pipelines.run(name, run_input, fresh=fresh)
    if not wait:
        out.print_json(json.dumps(status)) if as_json else out.print(f"pipeline run {status['id']} started")
        return
    status = _follow(c, status, timeout, quiet=as_json)
    if as_json:
        out.print_json(json.dumps({**status, "outputs": c.pipelines.outputs(status["id"])}))
    else:
        _print_outputs(c, status)
    if status["state"] != "succeeded":
        raise typer.Exit(EXIT_FAILED)


def _follow(c: Any, status: dict[str, Any], timeout: float | None, quiet: bool) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    with Live(_progress_table(status), console=err, refresh_per_second=4, transient=False,
              auto_refresh=False) if not quiet else _Silent() as live:
        while status["state"] == "running":
            if deadline is not None and time.monotonic() >= deadline:
                err.print(f"still running after {timeout} s: `clusterai pipeline status {status['id']}`")
                raise typer.Exit(EXIT_FAILED)
            time.sleep(0.5)
            status = c.pipelines.status(status["id"])
            live.update(_progress_table(status), refresh=True)
    if not quiet:
        err.print()
    _show_problems(status)
    return status


class _Silent:
    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _print_outputs(c: Any, status: dict[str, Any]) -> None:
    outputs = c.pipelines.outputs(status["id"])
    last = status["stages"][-1]["name"]
    for o in outputs:
        if o["state"] == "succeeded":
            out.print(f"[bold]{last} {o['item']}[/] (job {o['job']}):")
            out.print_json(json.dumps(o["result"]))
    out.print(f"run {status['id']} {status['state']}: `clusterai pipeline status {status['id']}` for every stage job")


@pipeline_app.command("status")
@errors_to_exit_codes
def pipeline_status(run_id: int, as_json: bool = typer.Option(False, "--json"),
                    watch: bool = typer.Option(False, "--watch", help="follow it until it ends")) -> None:
    """A run's state, per-stage progress, and its failed stage jobs."""
    c = client()
    status = c.pipelines.status(run_id)
    if watch and status["state"] == "running":
        status = _follow(c, status, None, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(status))
        return
    if not watch:
        out.print(_progress_table(status))
        _show_problems(status)


@pipeline_app.command("outputs")
@errors_to_exit_codes
def pipeline_outputs(run_id: int, stage: str | None = typer.Option(None, "--stage", help="default: the last")) -> None:
    """A stage's results, in item order, as JSON."""
    out.print_json(json.dumps(client().pipelines.outputs(run_id, stage)))


@pipeline_app.command("cancel")
@errors_to_exit_codes
def pipeline_cancel(run_id: int) -> None:
    """Cancel a running run: its unfinished stage jobs are cancelled."""
    status = client().pipelines.cancel(run_id)
    out.print(f"pipeline run {run_id}: {status['state']}")


@pipeline_app.command("retry")
@errors_to_exit_codes
def pipeline_retry(run_id: int) -> None:
    """Run a finished run's failed or cancelled stage jobs again; what succeeded is kept."""
    status = client().pipelines.retry(run_id)
    out.print(f"pipeline run {run_id}: {status['state']}")


@errors_to_exit_codes
def counts(
    job: int | None = typer.Option(None, "--job", min=1, help="one counting job"),
    camera: str | None = typer.Option(None, "--camera"),
    last: float | None = typer.Option(None, "--last", min=0, help="points of the last N seconds"),
    points: bool = typer.Option(False, "--points", help="also list every point"),
    limit: int = typer.Option(1000, "--limit", min=1, max=100_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Camera counts: the latest totals of each counting job, and their time series."""
    since = time.time() - last if last is not None else None
    data = client().camera_counts(job=job, camera=camera, since=since, limit=limit)
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title="camera counts")
    for column in ("job", "camera", "total", "left to right", "right to left", "video time", "points", "updated"):
        table.add_column(column)
    for s in data["series"]:
        table.add_row(str(s["job_id"]), s["camera"], str(s["total"]), str(s["left_to_right"]),
                      str(s["right_to_left"]), f"{s['video_time']:.1f} s", str(s["points"]),
                      time.strftime("%H:%M:%S", time.localtime(s["at"])))
    out.print(table)
    if points:
        series = Table(title="points")
        for column in ("job", "camera", "video time", "total", "at"):
            series.add_column(column)
        for p in data["points"]:
            series.add_row(str(p["job_id"]), p["camera"], f"{p['video_time']:.1f} s", str(p["total"]),
                           time.strftime("%H:%M:%S", time.localtime(p["at"])))
        out.print(series)
