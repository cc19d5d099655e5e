"""The video part of `clusterai demo`: synthetic clips with known object counts, the
`video-analysis` pipeline over them, and a long camera count with checkpoints, each result
printed beside its ground truth."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from clusterai.core import logline as loglines
from clusterai.core.media_policy import DEFAULT_MEDIA_DIR
from clusterai.sdk.local import Client
from clusterai.workloads.synth import ClipTruth, make_clip

# (name, seconds, crossings, noise): clean clips are counted exactly, the noisy one within 1
CLIPS = (("lobby", 8, 3, 0.0), ("gate", 10, 5, 0.0), ("platform", 8, 2, 0.0), ("corridor", 12, 6, 0.0),
         ("yard-noisy", 10, 4, 0.06))
CAMERA = ("street-camera", 40, 10)
# inside media.sources' default folder, so the workers may open them
CLIPS_DIR = Path(DEFAULT_MEDIA_DIR) / "demo" / "clips"
LOG_NAME = "video"  # the log video.logline writes by default: NAME.log in logline.dir
KEY = ".clusterai/logline.key"


def available() -> bool:
    """Whether this installation has the video extra (OpenCV, NumPy)."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def make_demo_clips(folder: Path) -> tuple[list[ClipTruth], ClipTruth]:
    folder.mkdir(parents=True, exist_ok=True)
    clips = [make_clip(folder / f"{name}.avi", seconds=seconds, crossings=crossings, noise=noise, seed=i)
             for i, (name, seconds, crossings, noise) in enumerate(CLIPS)]
    name, seconds, crossings = CAMERA
    camera = make_clip(folder.parent / f"{name}.avi", seconds=seconds, crossings=crossings, seed=99)
    return clips, camera


def start_video_work(client: Client, clips: list[ClipTruth], camera: ClipTruth) -> tuple[dict[str, Any], int]:
    """The pipeline run over the clips (fresh: the demo shows the work, not the reuse) and the camera job."""
    items = []
    for c in clips:
        stat = os.stat(c.path)
        items.append({"source": str(Path(c.path).resolve()), "version": f"{stat.st_size}-{stat.st_mtime_ns}"})
    run = client.pipelines.run("video-analysis", {"videos": items}, fresh=True)
    job = client.submit("camera.count", {"source": str(Path(camera.path).resolve()), "checkpoint_every": 4.0,
                                         "camera": CAMERA[0]})
    return run, job.id


def _stages_table(status: dict[str, Any], camera: dict[str, Any] | None) -> Table:
    table = Table(title=f"video-analysis run {status['id']}: {status['state']}")
    for column in ("stage", "task", "done", "of", "states"):
        table.add_column(column)
    for s in status["stages"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(s["counts"].items()))
        table.add_row(s["name"], s["task"], str(s["done"]), "?" if s["total"] is None else str(s["total"]), states)
    if camera:
        table.caption = (f"{CAMERA[0]}: {camera['total']} crossings counted by {camera['video_time']:.0f} s of "
                         f"video ({camera['points']} checkpoints)")
    return table


def follow_video(client: Client, run_id: int, camera_job: int, console: Console, timeout: float = 600.0
                 ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with Live(console=console, auto_refresh=False) as live:
        while True:
            status = client.pipelines.status(run_id)
            series = client.camera_counts(job=camera_job)["series"]
            live.update(_stages_table(status, series[0] if series else None), refresh=True)
            finished = status["state"] != "running" and client.get(camera_job).state.terminal
            if finished or time.monotonic() > deadline:
                return status
            time.sleep(0.25)


def video_tables(client: Client, run_id: int, camera_job: int, clips: list[ClipTruth], camera: ClipTruth
                 ) -> tuple[list[Table | str], bool]:
    """The results beside the ground truth; True when every count is within what the demo promises."""
    outputs = {stage: {o["item"]: o for o in client.pipelines.outputs(run_id, stage)}
               for stage in ("summarize", "count", "logline")}
    names = {w.address: w.name for w in client.store.list_workers()}
    per_video = Table(title="Videos: counted crossings beside the ground truth")
    for column in ("video", "seconds", "scenes", "counted", "truth", "", "counted on"):
        per_video.add_column(column)
    texts = []
    accurate = True
    for i, truth in enumerate(clips):
        summary = (outputs["summarize"].get(i) or {}).get("result") or {}
        count = outputs["count"].get(i) or {}
        counted = (count.get("result") or {}).get("total")
        allowed = 1 if truth.noise else 0
        ok = counted is not None and abs(counted - truth.crossings) <= allowed
        accurate &= ok
        worker = client.get(count["job"]).worker if count else None
        texts.append(f"[bold]{Path(truth.path).name}[/]: {summary.get('text') or 'no summary'}")
        per_video.add_row(Path(truth.path).name, f"{truth.frames / truth.fps:.0f}", str(summary.get("scenes", "-")),
                          str(counted), str(truth.crossings),
                          ("[green]exact[/]" if counted == truth.crossings else "[yellow]within 1[/]") if ok
                          else "[red]off[/]", f"worker {names.get(worker or '', worker or '?')}")
    camera_job_state = client.get(camera_job)
    result = camera_job_state.result or {}
    series = client.camera_counts(job=camera_job, limit=10_000)["points"]
    cam = Table(title=f"Camera count: {CAMERA[0]} ({camera.frames / camera.fps:.0f} s, checkpoint every 4 s)")
    cam.add_column("measure")
    cam.add_column("value", justify="right")
    cam.add_row("counted (left to right / right to left)",
                f"{result.get('total')} ({result.get('left_to_right')} / {result.get('right_to_left')})")
    cam.add_row("ground truth", f"{camera.crossings} ({camera.left_to_right} / {camera.right_to_left})")
    cam.add_row("time series points stored", str(len(series)))
    cam.add_row("series", " ".join(f"{p['video_time']:.0f}s:{p['total']}" for p in series[:12]))
    accurate &= result.get("total") == camera.crossings
    return [per_video, *texts, cam, *_log_tables(client, run_id, outputs["logline"])], accurate


def _log_tables(client: Client, run_id: int, written: dict[int, Any]) -> list[Table]:
    """The signed log, verified: how many lines check out, and who and what this run's lines stand for."""
    log = loglines.log_path(LOG_NAME, client.config.logline.dir)
    report = loglines.verify(log, loglines.load_key(KEY)) if log.exists() and Path(KEY).exists() else None
    logs = Table(title="Signed log lines")
    logs.add_column("measure")
    logs.add_column("value", justify="right")
    logs.add_row("file", str(log))
    logs.add_row("lines written by this run", str(len(written)))
    if report is None:
        return [logs]
    logs.add_row("lines verified (HMAC-SHA256, chained)", f"{report.ok} of {report.lines}")
    logs.add_row("tampering found", "none" if report.valid else
                 "; ".join(f"line {n}: {why}" for n, why in report.problems[:3]))
    mine = Table(title=f"Verified lines of run {run_id}: who asked, about what")
    for column in ("line", "job", "owner", "run", "source", "source sha256"):
        mine.add_column(column)
    for line in loglines.check_lines(log, loglines.load_key(KEY)):
        record = line.record or {}
        if record.get("run") == run_id:
            mine.add_row(str(line.number), str(record.get("job")), str(record.get("owner") or "local"),
                         str(record.get("run")), Path(str(record.get("source"))).name,
                         str(record.get("source_digest") or "-")[:16] + "…")
    return [logs, mine]
