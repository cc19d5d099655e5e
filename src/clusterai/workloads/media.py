"""The video and camera tasks (extra `clusterai[video]`): `video.scan`, `video.summarize`,
`video.logline` and `camera.count`, over the analysis in video.py and counting.py.

Results hold references to artifacts (the scan's timeline, key-frame thumbnails, a camera job's
checkpoint), never the blobs themselves. A source that is not a readable video is a non-retryable
error: retrying cannot fix the file, and its siblings carry on.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from clusterai import logline as loglines
from clusterai.artifacts import ArtifactStore
from clusterai.engine import counts
from clusterai.engine.execute import current_job
from clusterai.errors import NonRetryableError
from clusterai.pipelines import Pipeline, register_pipeline
from clusterai.tasks import task
from clusterai.workloads import counting, video
from clusterai.workloads.sources import describe

LOGLINE_KEY_ENV = "CLUSTERAI_LOGLINE_KEY"
DEFAULT_LOGLINE_KEY = ".clusterai/logline.key"


def _namespace(kind: str, source: str) -> str:
    # one folder per source: the same video scanned again lands in the same place
    return f"{kind}/{hashlib.sha256(source.encode()).hexdigest()[:20]}"


@task("video.scan", retries=2, timeout=3600)
def video_scan(source: str, sample_fps: float = 2.0, thumb_width: int = 160, detect_people: bool = True,
               detect_faces: bool = True, scene_threshold: float = 0.4, version: str | None = None) -> dict[str, Any]:
    """Sample a video; scene changes, motion, people and faces as a timeline, key frames as JPEGs.
    `version` (for example the file's size and modification time) is not read: it makes the
    payload, and so a pipeline's input hash, change when the file does."""
    try:
        result = video.scan_video(source, sample_fps=sample_fps, thumb_width=thumb_width,
                                  detect_people=detect_people, detect_faces=detect_faces,
                                  scene_threshold=scene_threshold)
    except ValueError as exc:
        raise NonRetryableError(str(exc)) from None
    store = ArtifactStore()
    folder = _namespace("video", source)
    timeline = store.put_bytes(folder, "timeline.json", json.dumps(result.timeline, sort_keys=True).encode())
    keyframes = [
        {**store.put_bytes(folder, f"keyframe-{i:03d}-{frame.reason}.jpg", frame.jpeg),
         "time": frame.time, "reason": frame.reason}
        for i, frame in enumerate(result.keyframes)
    ]
    meta = result.timeline["source"]
    return {"source": source, "timeline": timeline, "keyframes": keyframes,
            "duration": meta.get("duration"), "scenes": len(result.timeline["scenes"]),
            "totals": result.timeline["totals"]}


@task("video.summarize", retries=2)
def video_summarize(scan: dict[str, Any]) -> dict[str, Any]:
    """A scene summary (counts, durations, busiest moments) of a `video.scan` result."""
    try:
        timeline = json.loads(ArtifactStore().get_bytes(scan["timeline"]))
    except (KeyError, TypeError) as exc:
        raise NonRetryableError(f"not a video.scan result: {exc}") from None
    return {"source": scan.get("source"), **video.summarize_scan(timeline)}


@task("video.logline", retries=2)
def video_logline(summary: dict[str, Any], log: str = ".clusterai/loglines/video.log") -> dict[str, Any]:
    """Append one signed, chained line (HMAC-SHA256) for a video's summary to `log`; `clusterai
    logline verify FILE` later detects any edited, removed or inserted line."""
    key = loglines.load_or_create_key(os.environ.get(LOGLINE_KEY_ENV, DEFAULT_LOGLINE_KEY))
    record = {"source": summary.get("source"), "scenes": summary.get("scenes"), "text": summary.get("text")}
    line = loglines.append(log, record, key)
    return {"log": log, "line": line}


@task("camera.count", retries=5)
def camera_count(source: str, line: list[float] | None = None, checkpoint_every: float = 5.0,
                 max_frames: int | None = None, fps: float | None = None, camera: str | None = None,
                 version: str | None = None) -> dict[str, Any]:
    """Count objects crossing `line` in a file or stream. Checkpoints its state to an artifact every
    `checkpoint_every` seconds of video, and reports its totals then as the `camera` series (default:
    the source, without any password) that `/api/v1/counts` serves; a retry after a lost worker
    resumes from the last checkpoint. `version` is not read (see video.scan)."""
    job = current_job()
    name = camera or describe(source)
    store = ArtifactStore()
    folder = f"camera/job-{job.job_id}" if job is not None else None
    state = None
    if folder is not None and store.exists(store.url(folder, "checkpoint.json")):
        state = json.loads(store.get_bytes(store.url(folder, "checkpoint.json")))

    def save(checkpoint: dict[str, Any]) -> None:
        if folder is not None and job is not None:
            store.put_bytes(folder, "checkpoint.json", json.dumps(checkpoint).encode())
            counts.report(job.job_id, job.attempt, name, checkpoint)

    try:
        result = counting.count_stream(source, line=line, state=state, checkpoint_every_s=checkpoint_every,
                                       on_checkpoint=save, max_frames=max_frames, fps=fps)
    except ValueError as exc:
        raise NonRetryableError(str(exc)) from None
    return {**result, "camera": name, "resumed_from_frame": state.get("frame_index") if state else None}


@task("video.report", retries=2)
def video_report(summaries: list[dict[str, Any] | None], loglines: list[dict[str, Any] | None] | None = None,
                 counts: list[dict[str, Any] | None] | None = None, sources: list[Any] | None = None
                 ) -> dict[str, Any]:
    """One report over a batch of videos (a pipeline's fan-in): per video its summary text, signed
    log line and line count; null entries are videos whose earlier stages failed."""
    n = len(summaries)
    rows = []
    for i in range(n):
        summary, line, count = summaries[i], (loglines or [None] * n)[i], (counts or [None] * n)[i]
        rows.append({
            "source": (summary or {}).get("source") or _source_of(sources[i] if sources and i < len(sources) else None),
            "ok": summary is not None,
            "scenes": (summary or {}).get("scenes"), "duration": (summary or {}).get("duration"),
            "text": (summary or {}).get("text"),
            "logline": (line or {}).get("line"), "log": (line or {}).get("log"),
            "crossings": (count or {}).get("total"), "left_to_right": (count or {}).get("left_to_right"),
            "right_to_left": (count or {}).get("right_to_left"),
        })
    report = {"videos": n, "analysed": sum(1 for r in rows if r["ok"]),
              "crossings": sum(r["crossings"] or 0 for r in rows), "rows": rows}
    body = json.dumps(report, indent=2, sort_keys=True).encode()
    stored = ArtifactStore().put_bytes("reports", f"video-{hashlib.sha256(body).hexdigest()[:16]}.json", body)
    return {**{k: v for k, v in report.items() if k != "rows"}, "report": stored,
            "failed": [r["source"] for r in rows if not r["ok"]]}


def _source_of(item: Any) -> Any:
    return item.get("source") if isinstance(item, dict) else item


VIDEO_ANALYSIS = register_pipeline(Pipeline.from_dict("video-analysis", {
    "description": "Per video: scan (scenes, motion, people, faces, key frames) -> summary -> signed log "
                   "line, and a line-crossing count beside them; then one report over all videos.",
    "args": "videos",
    "stages": [
        {"name": "scan", "task": "video.scan", "each": "input.videos",
         "inputs": {"source": "item.source", "version": "item.version?"}},
        {"name": "count", "task": "camera.count", "each": "input.videos",
         "inputs": {"source": "item.source", "version": "item.version?"}},
        {"name": "summarize", "task": "video.summarize", "inputs": {"scan": "scan"}},
        {"name": "logline", "task": "video.logline", "inputs": {"summary": "summarize"}},
        {"name": "report", "task": "video.report", "gather": True,
         "inputs": {"summaries": "summarize", "loglines": "logline", "counts": "count",
                    "sources": "input.videos"}},
    ],
}))
