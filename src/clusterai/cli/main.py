"""The `clusterai` command (Typer + Rich). Bad input exits 2 with a message that says what is wrong."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from clusterai.autoscale import parse_autoscale
from clusterai.cli.autoscale import autoscale_app
from clusterai.cli.certs import certs_app
from clusterai.cli.common import (
    client,
    err,
    errors_to_exit_codes,
    out,
    parse_pairs,
    settings,
)
from clusterai.cli.head import join, join_code, scheduler, serve_model, worker
from clusterai.cli.logline import logline_app
from clusterai.cli.models import models_app
from clusterai.cli.pipelines import counts, pipeline_app
from clusterai.cli.sweeps import registry_app, sweep_app
from clusterai.cli.tokens import audit, token_app
from clusterai.cli.workers import workers_app
from clusterai.core.model import Job, State
from clusterai.core.tasks import import_task_modules, parse_payload_text
from clusterai.errors import EXIT_FAILED, BadInput, ClusterAIError
from clusterai.head.runtime import ClusterRuntime
from clusterai.head.serve import serve
from clusterai.service.submission import build_spec
from clusterai.store.leader import leadership_for
from clusterai.store.urls import redact

app = typer.Typer(help="clusterai: pool your machines into one cluster and run AI work across it.",
                  no_args_is_help=True, add_completion=False)
jobs_app = typer.Typer(help="Inspect and act on jobs.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: jobs that exhausted their attempts.", no_args_is_help=True)
config_app = typer.Typer(help="cluster.yaml.", no_args_is_help=True)
tasks_app = typer.Typer(help="Registered tasks.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(dlq_app, name="dlq")
app.add_typer(workers_app, name="workers")
app.add_typer(autoscale_app, name="autoscale")
app.add_typer(config_app, name="config")
app.add_typer(tasks_app, name="tasks")
app.add_typer(token_app, name="token")
app.add_typer(certs_app, name="certs")
app.add_typer(logline_app, name="logline")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(sweep_app, name="sweep")
app.add_typer(registry_app, name="registry")
app.command("counts")(counts)
app.add_typer(models_app, name="models")
app.command("audit")(audit)
app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                        "help_option_names": []})(worker)
app.command("scheduler")(scheduler)
app.command("join", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                      "help_option_names": []})(join)
app.command("join-code")(join_code)
app.command("serve-model", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                             "help_option_names": []})(serve_model)

@app.callback()
def _global(
    config: Path | None = typer.Option(None, "--config", "-c", help="cluster.yaml to use",
                                          envvar="CLUSTERAI_CONFIG"),
    store: str | None = typer.Option(None, "--store", help="job store URL (overrides config)",
                                        envvar="CLUSTERAI_STORE"),
    tasks: list[str] = typer.Option([], "--tasks", help="task module to import (repeatable)"),
    url: str | None = typer.Option(None, "--url", help="reach a cluster over its REST API, e.g. "
                                   "https://head:8000", envvar="CLUSTERAI_URL"),
    token: str | None = typer.Option(None, "--token", help="API token (default: the admin token file)",
                                     envvar="CLUSTERAI_TOKEN"),
    ca_cert: str | None = typer.Option(None, "--ca-cert", help="PEM file to trust for the API's HTTPS "
                                       "(a self-signed certificate)", envvar="CLUSTERAI_CA_CERT"),
) -> None:
    settings.config_path, settings.store, settings.tasks = config, store, list(tasks)
    settings.url, settings.token, settings.ca_cert = url, token, ca_cert


# -- running a cluster --------------------------------------------------------------------------

@app.command()
@errors_to_exit_codes
def up(
    workers: int | None = typer.Option(None, "--workers", "-w", help="local worker processes"),
    scheduler: str | None = typer.Option(None, "--scheduler", help="use this Dask scheduler"),
    api_host: str | None = typer.Option(None, "--api-host", help="API bind address (default 127.0.0.1)"),
    api_port: int | None = typer.Option(None, "--api-port", min=0, max=65535, help="API port (0: any free one)"),
    no_api: bool = typer.Option(False, "--no-api", help="do not serve the REST API"),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: serve the API over HTTPS"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
) -> None:
    """Start the cluster (Dask workers + coordinator + REST API) in the foreground until Ctrl-C."""
    conf = settings.config(**{"cluster.workers": workers, "cluster.scheduler": scheduler, "api.host": api_host,
                              "api.port": api_port, "api.enabled": False if no_api else None,
                              "api.tls_cert": str(tls_cert) if tls_cert else None,
                              "api.tls_key": str(tls_key) if tls_key else None})
    # two coordinators on one store would both place its jobs: refuse the second
    leadership = leadership_for(conf.store)
    if not leadership.try_acquire():
        raise ClusterAIError(f"another clusterai coordinator is active on the store {redact(conf.store)}; stop it "
                             "first (or run `clusterai scheduler`, which stands by until it stops)")
    try:
        asyncio.run(serve(ClusterRuntime(conf), out, err, leadership=leadership))
    finally:
        leadership.release()


@app.command()
@errors_to_exit_codes
def demo(
    exit_when_done: bool = typer.Option(False, "--exit", help="return when the jobs are done"),
    jobs: int = typer.Option(120, "--jobs", min=1, max=100_000, help="how many CPU jobs to run beside the videos"),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, max=64),
    autoscale: str | None = typer.Option(None, "--autoscale", metavar="MIN:MAX",
                                         help="let the autoscaler size the cluster between MIN and MAX workers"),
) -> None:
    """Run the demo: a video-analysis pipeline, a camera count, CPU-bound jobs and an embedding model
    behind the LLM gateway, across a local cluster."""
    # imported here, not above: the demo's clips need OpenCV, ~0.2 s that no other command should pay
    from clusterai.demo.run import run_demo

    overrides: dict[str, Any] = {"cluster.workers": workers}
    if autoscale is not None:
        low, _, high = autoscale.partition(":")
        if not (low.isdigit() and high.isdigit()):
            raise BadInput(f"--autoscale takes MIN:MAX, e.g. 1:4; got {autoscale!r}")
        # short cooldowns: a demo's load changes in seconds, not minutes
        overrides["autoscale"] = {"min": int(low), "max": int(high), "up_cooldown_s": 2, "down_cooldown_s": 10}
    conf = settings.config(**overrides)
    outcome = run_demo(conf, jobs=jobs, keep_running=not exit_when_done, console=out)
    if outcome["jobs"].get("succeeded", 0) != jobs:
        err.print(f"[red]not every demo job succeeded:[/] {outcome['jobs']}")
        raise typer.Exit(EXIT_FAILED)
    video = outcome.get("video")
    if video is not None and (video["state"] != "succeeded" or not video["accurate"]):
        err.print(f"[red]the video pipeline did not succeed, or a count missed its ground truth:[/] {video}")
        raise typer.Exit(EXIT_FAILED)
    llm = outcome.get("llm")
    if llm is not None and llm["failed"]:
        err.print(f"[red]embedding jobs through the LLM gateway failed:[/] {llm}")
        raise typer.Exit(EXIT_FAILED)


# -- submitting -----------------------------------------------------------------------------

@app.command()
@errors_to_exit_codes
def submit(
    task: str = typer.Argument(..., help="task name, e.g. primes.count"),
    payload: str = typer.Option("{}", "--payload", "-p", help="JSON object, or @file.json"),
    wait: bool = typer.Option(False, "--wait", help="wait for the result and print it"),
    wait_timeout: float | None = typer.Option(None, "--wait-timeout", min=0),
    priority: str | None = typer.Option(None, "--priority", help="low|normal|high|critical"),
    queue: str | None = typer.Option(None, "--queue"),
    delay: float | None = typer.Option(None, "--delay", min=0, help="seconds before it may run"),
    timeout: float | None = typer.Option(None, "--timeout", help="per-attempt timeout, seconds"),
    retries: int | None = typer.Option(None, "--retries", min=0),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key"),
    requires: list[str] = typer.Option([], "--requires", help="resource it needs, e.g. GPU=1 (repeatable)"),
    label: list[str] = typer.Option([], "--label", help="label a worker must have, e.g. region=eu"),
    prefer: list[str] = typer.Option([], "--prefer", help="soft preference, e.g. model=llama3 or zone=a"),
) -> None:
    """Submit one job; prints its id (and with --wait its result as JSON)."""
    text = Path(payload[1:]).read_text(encoding="utf-8") if payload.startswith("@") else payload
    data = parse_payload_text(text)
    c = client()
    job = c.submit(task, data, priority=priority, queue=queue, delay=delay, timeout=timeout,
                   retries=retries, idempotency_key=idempotency_key,
                   requires=parse_pairs("--requires", requires, numbers=True),
                   labels=parse_pairs("--label", label), prefers=parse_pairs("--prefer", prefer))
    if not wait:
        out.print(job.id)
        return
    err.print(f"job {job.id} submitted; waiting (the cluster must be up: clusterai up)")
    result = c.result(job, timeout=wait_timeout)
    out.print_json(json.dumps(result))


# -- jobs -----------------------------------------------------------------------------------

def _state(value: str | None) -> State | None:
    if value is None:
        return None
    try:
        return State(value)
    except ValueError:
        allowed = ", ".join(s.value for s in State)
        raise BadInput(f"invalid state {value!r}; allowed: {allowed}") from None


def _jobs_table(jobs: list[Job], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "task", "state", "priority", "queue", "attempt", "worker", "updated"):
        table.add_column(column)
    for j in jobs:
        table.add_row(str(j.id), j.task, j.state.value, j.priority.name.lower(), j.queue,
                      str(j.attempt), j.worker or "-", time.strftime("%H:%M:%S",
                                                                     time.localtime(j.updated_at)))
    return table


@jobs_app.command("list")
@errors_to_exit_codes
def jobs_list(
    state: str | None = typer.Option(None, "--state"),
    task: str | None = typer.Option(None, "--task"),
    queue: str | None = typer.Option(None, "--queue"),
    worker: str | None = typer.Option(None, "--worker"),
    after: int | None = typer.Option(None, "--after", help="ids greater than this (paging)"),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List jobs, oldest first, with filters."""
    jobs = client().list(state=_state(state), task=task, queue=queue, worker=worker, after_id=after, limit=limit)
    if as_json:
        out.print_json(json.dumps([j.to_dict() for j in jobs]))
    else:
        out.print(_jobs_table(jobs, f"{len(jobs)} jobs"))


@jobs_app.command("show")
@errors_to_exit_codes
def jobs_show(job_id: int, as_json: bool = typer.Option(False, "--json")) -> None:
    """One job in full: payload, result, error and every attempt."""
    job = client().get(job_id)
    if as_json:
        out.print_json(json.dumps(job.to_dict()))
        return
    data = job.to_dict()
    attempts = data.pop("attempts")
    table = Table(title=f"job {job.id}", show_header=False)
    for key, value in data.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        table.add_row(key, shown)
    out.print(table)
    history = Table(title="attempts")
    for column in ("#", "worker", "started", "seconds", "outcome", "error", "late answer"):
        history.add_column(column)
    for a in attempts:
        secs = f"{a['finished_at'] - a['started_at']:.3f}" if a["finished_at"] else "-"
        history.add_row(str(a["number"]), a["worker"] or "-",
                        time.strftime("%H:%M:%S", time.localtime(a["started_at"])), secs,
                        a["outcome"] or "running", (a["error"] or "")[:200], a["late"] or "")
    out.print(history)


@jobs_app.command("cancel")
@errors_to_exit_codes
def jobs_cancel(job_id: int) -> None:
    """Cancel a job: at once if waiting; if running, its attempt is abandoned and any late result ignored."""
    job = client().cancel(job_id)
    out.print(f"job {job.id} {job.state.value}")


@jobs_app.command("retry")
@errors_to_exit_codes
def jobs_retry(job_id: int) -> None:
    """Run a dead, cancelled or succeeded job again."""
    job = client().retry(job_id)
    out.print(f"job {job.id} {job.state.value}")


# -- dead letters ---------------------------------------------------------------------------

@dlq_app.command("list")
@errors_to_exit_codes
def dlq_list(limit: int = typer.Option(50, "--limit", min=1, max=10_000),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Jobs in the dead-letter state, with their last error."""
    jobs = client().dead_letters(limit)
    if as_json:
        out.print_json(json.dumps([j.to_dict() for j in jobs]))
        return
    table = Table(title=f"{len(jobs)} dead letters")
    for column in ("id", "task", "attempts", "last error"):
        table.add_column(column)
    for j in jobs:
        table.add_row(str(j.id), j.task, str(j.attempt), (j.error or "").splitlines()[0][:120]
                      if j.error else "")
    out.print(table)


@dlq_app.command("requeue")
@errors_to_exit_codes
def dlq_requeue(job_ids: list[int] = typer.Argument(None),
                all_: bool = typer.Option(False, "--all", help="requeue every dead letter")) -> None:
    """Put dead letters back in the queue."""
    requeued = client().requeue_dead(job_ids or [], everything=all_)
    out.print(f"requeued {len(requeued)} jobs")


# -- workers, status, config, tasks ----------------------------------------------------------

@app.command()
@errors_to_exit_codes
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Jobs per state, workers, queues, throughput, latency and error rate over the last minute."""
    data = client().status()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title="cluster status", show_header=False)
    for state, n in data["jobs"].items():
        table.add_row(f"jobs {state}", str(n))
    w = data["workers"]
    table.add_row("workers", f"{w['total']} ({w['active']} ready, {w['breakers_open']} breakers open)")
    for q in data["queues"]:
        table.add_row(f"queue {q['queue']}", f"{q['queued']} queued, {q['pending']} pending, {q['running']} running")
    table.add_row("throughput (last minute)", f"{data['throughput']['per_second']:.1f} jobs/s")
    lat = data["latency"]
    if lat["samples"]:
        table.add_row("latency p50 / p95 / p99", f"{lat['p50'] * 1000:.1f} / {lat['p95'] * 1000:.1f} / "
                                                 f"{lat['p99'] * 1000:.1f} ms")
    table.add_row("error rate (last minute)", f"{data['error_rate']:.1%} of {data['finished_attempts']} attempts")
    out.print(table)


@config_app.command("validate")
@errors_to_exit_codes
def config_validate(path: Path | None = typer.Argument(None, help="default: ./cluster.yaml")) -> None:
    """Check cluster.yaml: every error names the key, the bad value and what is allowed."""
    settings.config_path = path or settings.config_path
    conf = settings.config()
    import_task_modules(conf.tasks)
    workers = f"{conf.cluster.workers} local workers"
    if conf.autoscale is not None:
        profiles = parse_autoscale(conf.autoscale).profiles
        workers = "autoscaled workers (" + ", ".join(f"{p.name} {p.min}..{p.max}" for p in profiles) + ")"
    out.print(f"[green]valid[/]: store {conf.store}, {workers}, task modules {conf.tasks or '(built-in only)'}")


@config_app.command("show")
@errors_to_exit_codes
def config_show() -> None:
    """Print the effective configuration (file + defaults) as JSON."""
    out.print_json(settings.config().model_dump_json())


@tasks_app.command("list")
@errors_to_exit_codes
def tasks_list() -> None:
    """Registered tasks and their payload fields."""
    table = Table(title="tasks")
    table.add_column("name")
    table.add_column("payload fields")
    for t in client().tasks():
        props = t["payload_schema"].get("properties", {})
        table.add_row(t["name"], ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items()))
    out.print(table)


@tasks_app.command("check")
@errors_to_exit_codes
def tasks_check(task: str, payload: str = typer.Option("{}", "--payload", "-p")) -> None:
    """Validate a payload against a task without submitting it."""
    conf = settings.config()
    import_task_modules(conf.tasks)
    spec = build_spec(conf, task, parse_payload_text(payload))
    out.print_json(json.dumps(spec.payload))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
