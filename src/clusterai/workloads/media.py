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
from clusterai.engine.execute import current_job
from clusterai.errors import NonRetryableError
from clusterai.tasks import task
from clusterai.workloads import counting, video

LOGLINE_KEY_ENV = "CLUSTERAI_LOGLINE_KEY"
DEFAULT_LOGLINE_KEY = ".clusterai/logline.key"


def _namespace(kind: str, source: str) -> str:
    # one folder per source: the same video scanned again lands in the same place
    return f"{kind}/{hashlib.sha256(source.encode()).hexdigest()[:20]}"


@task("video.scan", retries=2, timeout=3600)
def video_scan(source: str, sample_fps: float = 2.0, thumb_width: int = 160, detect_people: bool = True,
               detect_faces: bool = True, scene_threshold: float = 0.4) -> dict[str, Any]:
    """Sample a video; scene changes, motion, people and faces as a timeline, key frames as JPEGs."""
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
                 max_frames: int | None = None, fps: float | None = None) -> dict[str, Any]:
    """Count objects crossing `line` in a file or stream. Checkpoints its state to an artifact every
    `checkpoint_every` seconds of video; a retry after a lost worker resumes from the last one."""
    job = current_job()
    store = ArtifactStore()
    folder = f"camera/job-{job.job_id}" if job is not None else None
    state = None
    if folder is not None and store.exists(store.url(folder, "checkpoint.json")):
        state = json.loads(store.get_bytes(store.url(folder, "checkpoint.json")))

    def save(checkpoint: dict[str, Any]) -> None:
        if folder is not None:
            store.put_bytes(folder, "checkpoint.json", json.dumps(checkpoint).encode())

    try:
        result = counting.count_stream(source, line=line, state=state, checkpoint_every_s=checkpoint_every,
                                       on_checkpoint=save, max_frames=max_frames, fps=fps)
    except ValueError as exc:
        raise NonRetryableError(str(exc)) from None
    return {**result, "resumed_from_frame": state.get("frame_index") if state else None}
