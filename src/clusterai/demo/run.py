"""`clusterai demo`: start an embedded cluster; run the video-analysis pipeline over synthetic
clips with known object counts, a camera count, a hyper-parameter sweep whose best model lands in
the registry, and a mix of CPU-bound jobs across its worker processes; embed the clips' summaries
through the LLM gateway and rank them against a question; show progress, results beside the
ground truth and a summary; then keep the cluster and its dashboard up until Ctrl-C."""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clusterai.autoscale import parse_autoscale
from clusterai.config import ClusterConfig
from clusterai.core.model import Job, State
from clusterai.demo import llm as demo_llm
from clusterai.demo import training as demo_training
from clusterai.demo import video as demo_video
from clusterai.head.runtime import BackgroundRuntime
from clusterai.head.serve import start_api
from clusterai.sdk.local import Client
from clusterai.sdk.remote import read_token_file


def demo_workload(jobs: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """A reproducible mix of real jobs: image filtering, prime sieves, hash chains, a few flaky ones."""
    rng = random.Random(seed)
    work: list[tuple[str, dict[str, Any]]] = []
    for i in range(jobs):
        kind = i % 20
        if kind < 9:
            work.append(("image.filter", {"seed": i, "size": rng.choice([192, 256, 320]),
                                          "blur_passes": rng.randint(2, 5)}))
        elif kind < 15:
            work.append(("primes.count", {"limit": rng.randint(300_000, 2_000_000)}))
        elif kind < 19:
            work.append(("hash.chain", {"data": f"block-{i}", "rounds": rng.randint(20_000, 60_000)}))
        else:
            work.append(("demo.flaky", {"fail_attempts": 1}))
    return work


def submit_workload(client: Client, work: list[tuple[str, dict[str, Any]]]) -> list[int]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for name, payload in work:
        by_task.setdefault(name, []).append(payload)
    ids: list[int] = []
    for name, payloads in by_task.items():
        ids.extend(job.id for job in client.submit_many(name, payloads))
    return ids


def follow(client: Client, ids: list[int], console: Console, timeout: float = 600.0) -> float:
    """Show a progress bar until every job is finished; return the seconds it took."""
    started = time.monotonic()
    columns = (TextColumn("[bold]jobs"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("jobs", total=len(ids), detail="")
        while True:
            states = Counter(s.value for s in client.store.states_of(ids).values())
            done = states["succeeded"] + states["dead"] + states["cancelled"]
            detail = "  ".join(f"{k} {v}" for k, v in sorted(states.items()))
            progress.update(bar, completed=done, detail=detail)
            if done == len(ids) or time.monotonic() - started > timeout:
                break
            time.sleep(0.1)
    return time.monotonic() - started


def summary_tables(client: Client, ids: list[int], elapsed: float) -> list[Table]:
    jobs: list[Job] = [client.store.get(i) for i in ids]
    names = {w.address: w.name for w in client.store.list_workers()}
    states = Counter(j.state.value for j in jobs)
    per_worker = Counter(names.get(j.worker or "", j.worker or "?") for j in jobs
                         if j.state is State.SUCCEEDED)
    per_task = Counter(j.task for j in jobs)
    retries = sum(j.failures for j in jobs)
    lost = sum(1 for j in jobs for a in j.attempts if a.outcome and a.outcome.value in
               ("lost", "expired", "abandoned"))

    by_state = Table(title="Jobs per state")
    by_state.add_column("state")
    by_state.add_column("jobs", justify="right")
    for state in State:
        by_state.add_row(state.value, str(states.get(state.value, 0)))

    by_worker = Table(title="Jobs per worker")
    by_worker.add_column("worker")
    by_worker.add_column("succeeded", justify="right")
    by_worker.add_column("share", justify="right")
    total_ok = sum(per_worker.values()) or 1
    for worker, count in sorted(per_worker.items()):
        by_worker.add_row(f"worker {worker}", str(count), f"{100 * count / total_ok:.0f}%")

    totals = Table(title="Run")
    totals.add_column("measure")
    totals.add_column("value", justify="right")
    totals.add_row("jobs", str(len(jobs)))
    for task, count in sorted(per_task.items()):
        totals.add_row(f"  {task}", str(count))
    # from the first submission to the last finish: the jobs ran while the demo showed the videos
    finished = [j.finished_at for j in jobs if j.finished_at is not None]
    if finished:
        elapsed = max(finished) - min(j.created_at for j in jobs)
    totals.add_row("wall time", f"{elapsed:.1f} s")
    totals.add_row("throughput", f"{len(jobs) / max(elapsed, 1e-9):.1f} jobs/s")
    totals.add_row("retries", str(retries))
    totals.add_row("attempts lost to workers", str(lost))
    return [by_state, by_worker, totals]


def run_demo(config: ClusterConfig, *, jobs: int = 300, keep_running: bool = True,
             console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    c = config.cluster
    model_server = None
    if config.api.enabled and demo_llm.available():
        model_server, config = demo_llm.serve_model(config)
        console.print(f"serving all-MiniLM-L6-v2 to the cluster's LLM gateway from {model_server.url}")
    if config.autoscale is not None:
        bounds = ", ".join(f"{p.name} {p.min}..{p.max}" for p in parse_autoscale(config.autoscale).profiles)
        size = f"autoscaled worker processes ({bounds}; watch them with `clusterai autoscale status`)"
    else:
        size = f"{c.workers} worker processes"
    console.print(f"[bold]clusterai demo[/]: starting an embedded cluster with {size} "
                  f"({c.threads_per_worker} thread each), store {config.store}")
    runtime = BackgroundRuntime(config)
    runtime.start()
    assert runtime.runtime.store is not None
    client = Client(runtime.runtime.store, config, runtime)
    api = None
    try:
        if config.api.enabled:
            api, written = _start_api(runtime, config)
            console.print(f"  [bold]dashboard: {api.url}/[/]  (live while the demo runs; sign in with the admin "
                          f"token in {config.api.token_file})")
        video = demo_video.available()
        if video:
            clips, camera = demo_video.make_demo_clips(demo_video.CLIPS_DIR)
            console.print(f"made {len(clips)} synthetic clips with known crossings in {demo_video.CLIPS_DIR} "
                          "and a longer street-camera clip (inside media.sources' default folder)")
            run, camera_job = demo_video.start_video_work(client, clips, camera)
            console.print(f"started pipeline run {run['id']} (video-analysis: scan, count, summarize, logline, "
                          f"report) and camera job {camera_job}")
        else:
            console.print("[yellow]OpenCV is not installed (extra clusterai[video]): the video part is skipped[/]")
        sweep = demo_training.start_sweep(client) if demo_training.available() else None
        if sweep is not None:
            console.print(f"started sweep {sweep['id']}: {demo_training.TRIALS} trials of train.sgd_digits "
                          "(scikit-learn on digits), its best model to the registry as digits@staging")
        else:
            console.print("[yellow]scikit-learn or Optuna is not installed (extra clusterai[train]): the sweep is "
                          "skipped[/]")
        work = demo_workload(jobs)
        ids = submit_workload(client, work)
        console.print(f"submitted {len(ids)} CPU jobs beside them (image filters, prime sieves, hash chains, "
                      "a few that fail once)")
        outcome: dict[str, Any] = {}
        if video:
            status = demo_video.follow_video(client, run["id"], camera_job, console)
            tables, accurate = demo_video.video_tables(client, run["id"], camera_job, clips, camera)
            for table in tables:
                console.print(table)
            outcome["video"] = {"state": status["state"], "accurate": accurate}
            if model_server is not None and api is not None:
                token = read_token_file(config.api.token_file) or ""
                table, outcome["llm"] = demo_llm.search(client, run["id"], [Path(clip.path).name for clip in clips],
                                                        api.url, token)
                console.print(table)
        elapsed = follow(client, ids, console)
        for table in summary_tables(client, ids, elapsed):
            console.print(table)
        if sweep is not None:
            swept = demo_training.follow_sweep(client, sweep["id"], console)
            sweep_tables, outcome["sweep"] = demo_training.sweep_tables(client, swept)
            for sweep_table in sweep_tables:
                console.print(sweep_table)
        outcome["jobs"] = dict(Counter(s.value for s in client.store.states_of(ids).values()))
        if keep_running:
            _serve_until_interrupted(runtime, config, console, api, written if api is not None else None)
        return outcome
    finally:
        if api is not None:
            runtime.call(api.stop())  # while the cluster's event loop still runs
        client.close()
        if model_server is not None:
            model_server.stop()


def _cli_path() -> str:
    """How to call clusterai from this folder: `make demo` installs it in .venv, not on PATH."""
    beside = Path(sys.executable).with_name("clusterai")
    if not beside.exists():
        return "clusterai"
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def _start_api(runtime: BackgroundRuntime, config: ClusterConfig) -> tuple[Any, Path | None]:
    """The REST API (and the dashboard, and the LLM gateway) beside the demo's cluster; on a free
    port if the configured one is taken. Started first: the LLM jobs find the gateway through it."""
    api, written = runtime.call(start_api(config, runtime.runtime, ports=(config.api.port, 0)))
    return api, written


def _serve_until_interrupted(runtime: BackgroundRuntime, config: ClusterConfig, console: Console,
                             api: Any, written: Path | None) -> None:
    link = runtime.runtime.dashboard_link
    console.print("\n[bold green]The cluster stays up.[/] Where to look:")
    if link:
        console.print(f"  Dask dashboard (tasks, workers): {link}")
    if api is not None:
        url = api.url
        console.print(f"  [bold]dashboard: {url}/[/]  (sign in with the admin token below)")
        console.print(f"  REST API: {url}/docs  (metrics at {url}/metrics); Ollama and OpenAI clients: {url}")
        token_note = f"written to {written}" if written else f"in {config.api.token_file} (made earlier)"
        console.print(f"  admin token {token_note}; use it with: {_cli_path()} --url {url} status")
    console.print(f"  job store: {config.store}")
    cli = _cli_path()
    console.print("  in another terminal, from this folder:")
    console.print(f"    {cli} status      # jobs per state, workers, throughput")
    console.print(f"    {cli} jobs list   # recent jobs;  {cli} jobs show ID")
    console.print(f"    {cli} pipeline list;  {cli} pipeline status 1;  {cli} counts")
    console.print(f"    {cli} pipeline run video-analysis {demo_video.CLIPS_DIR}   # again: every stage reused")
    console.print(f"    {cli} sweep list;  {cli} sweep status 1;  {cli} registry show digits staging")
    console.print(f"    {cli} logline verify {demo_video.LOG_NAME}   # who asked for each line, and about what")
    console.print(f"    {cli} submit primes.count --payload '{{\"limit\": 100000}}' --wait",
                  markup=False)
    if api is not None:
        console.print(f"    {cli} --url {api.url} models   # the LLM gateway's model servers")
    console.print("Press Ctrl-C to stop.")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        console.print("stopping the cluster...")
