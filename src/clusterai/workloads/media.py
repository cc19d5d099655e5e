"""The video and camera tasks (extra `clusterai[video]`): `video.scan`, `video.summarize`,
`video.logline` and `camera.count`, over the analysis in video.py and counting.py.

Results hold references to artifacts (the scan's timeline, key-frame thumbnails, a summary, a camera
job's checkpoint), never the blobs themselves. A source that is not a readable video is a
non-retryable error: retrying cannot fix the file, and its siblings carry on.

What a submitter sends is checked here as at the edge: sources against `media.sources` (sources.py),
numbers against the bounds in each signature (a 422 at submit), a log by name inside `logline.dir`.
A signed line vouches only for what the cluster computed: `video.logline` signs a summary it reads
from the store (made by `video.summarize` from a `video.scan` timeline), with who asked (the job's
owner and pipeline run, told by the head) and the source's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Annotated, Any

from clusterai.core import logline as loglines
from clusterai.core.artifacts import ArtifactCorrupt, ArtifactStore
from clusterai.core.pipelines import Pipeline
from clusterai.core.tasks import Check, Length, Range, task
from clusterai.errors import BadInput, NonRetryableError
from clusterai.worker import counts
from clusterai.worker.execute import current_job
from clusterai.workloads import counting, sources, video
from clusterai.workloads.sources import describe

LOGLINE_KEY_ENV = "CLUSTERAI_LOGLINE_KEY"
DEFAULT_LOGLINE_KEY = ".clusterai/logline.key"
SUMMARY_KIND = "clusterai.video.summary/1"
SUMMARIES = "summaries"
_HEX = re.compile(r"[0-9a-f]{64}")
_FOLDER = re.compile(r"[0-9a-f]{20}")


def _namespace(kind: str, source: str) -> str:
    # one folder per source: the same video scanned again lands in the same place
    return f"{kind}/{hashlib.sha256(source.encode()).hexdigest()[:20]}"


def check_ref(ref: Any) -> dict[str, Any]:
    """An artifact reference as results hold them: exactly artifact, size and sha256."""
    if not isinstance(ref, dict) or set(ref) != {"artifact", "size", "sha256"}:
        shown = sorted(ref) if isinstance(ref, dict) else type(ref).__name__
        raise ValueError(f"an artifact reference {{artifact, size, sha256}} (e.g. a video.summarize result's "
                         f"`summary`), got {shown}")
    if not isinstance(ref["artifact"], str) or isinstance(ref["size"], bool) or not isinstance(ref["size"], int) \
            or not isinstance(ref["sha256"], str) or not _HEX.fullmatch(ref["sha256"]):
        raise ValueError("an artifact reference has a URL string, a size in bytes and a sha256 of 64 hex digits")
    return ref


ArtifactRef = Annotated[dict[str, Any], Check(check_ref, description="an artifact reference {artifact, size, "
                                                                     "sha256} from a video.summarize result")]
LogName = Annotated[str, Check(loglines.check_name, description=loglines.NAME_RULE, pattern=loglines.NAME_PATTERN)]
Line = Annotated[list[Annotated[float, Range(-100_000, 100_000)]], Length(4, 4)]


@task("video.scan", retries=2, timeout=3600)
def video_scan(source: str, sample_fps: Annotated[float, Range(gt=0, le=120)] = 2.0,
               thumb_width: Annotated[int, Range(16, 1920)] = 160, detect_people: bool = True,
               detect_faces: bool = True, scene_threshold: Annotated[float, Range(gt=0, le=1)] = 0.4,
               max_frames: Annotated[int, Range(1, 100_000_000)] | None = None,
               version: str | None = None) -> dict[str, Any]:
    """Sample a video; scene changes, motion, people and faces as a timeline, key frames as JPEGs.
    The timeline records the source's SHA-256 (`digest`; null for a URL). `max_frames` bounds a
    live stream. `version` (for example the file's size and modification time) is not read: it
    makes the payload, and so a pipeline's input hash, change when the file does."""
    try:
        digest = sources.digest(source)
        result = video.scan_video(source, sample_fps=sample_fps, thumb_width=thumb_width,
                                  detect_people=detect_people, detect_faces=detect_faces,
                                  scene_threshold=scene_threshold, max_frames=max_frames)
    except ValueError as exc:
        raise NonRetryableError(str(exc)) from None
    result.timeline["source"]["digest"] = digest
    store = ArtifactStore()
    folder = _namespace("video", source)
    timeline = store.put_bytes(folder, "timeline.json", json.dumps(result.timeline, sort_keys=True).encode())
    keyframes = [
        {**store.put_bytes(folder, f"keyframe-{i:03d}-{frame.reason}.jpg", frame.jpeg),
         "time": frame.time, "reason": frame.reason}
        for i, frame in enumerate(result.keyframes)
    ]
    meta = result.timeline["source"]
    return {"source": meta["uri"], "digest": digest, "timeline": timeline, "keyframes": keyframes,
            "duration": meta.get("duration"), "scenes": len(result.timeline["scenes"]),
            "totals": result.timeline["totals"]}


@task("video.summarize", retries=2)
def video_summarize(scan: dict[str, Any]) -> dict[str, Any]:
    """A scene summary (counts, durations, busiest moments, a text) of a `video.scan` result, stored as
    an artifact (`summary`: what video.logline signs) and inline beside it (for video.report)."""
    store = ArtifactStore()
    try:
        ref = check_ref(scan["timeline"])
        namespace, name = store.locate(ref)
        if not (namespace.startswith("video/") and _FOLDER.fullmatch(namespace[6:]) and name == "timeline.json"):
            raise ValueError(f"{ref['artifact']} is not a video.scan timeline")
        timeline = json.loads(store.get_bytes(ref))
        facts = video.summarize_scan(timeline)
    except (KeyError, TypeError, ValueError, BadInput, ArtifactCorrupt) as exc:
        raise NonRetryableError(f"not a video.scan result: {exc}") from None
    meta = timeline["source"]
    summary = {"kind": SUMMARY_KIND, "source": meta.get("uri"), "digest": meta.get("digest"),
               "timeline": ref["sha256"], **facts}
    body = json.dumps(summary, sort_keys=True, allow_nan=False).encode()
    # named by content: a reference handed to video.logline stays valid whatever is summarised later
    stored = store.put_bytes(_namespace(SUMMARIES, str(summary["source"])), f"{hashlib.sha256(body).hexdigest()}.json",
                             body)
    return {**{k: v for k, v in summary.items() if k not in ("kind", "timeline")}, "summary": stored}


@task("video.logline", retries=2, provenance=True)
def video_logline(summary: ArtifactRef, log: LogName = "video") -> dict[str, Any]:
    """Append one signed, chained line (HMAC-SHA256) for a video's summary to the log `log` (a name:
    NAME.log in logline.dir). `summary` is the `summary` reference of a video.summarize result; the
    line holds what the summary says, its sha256, the source's digest, and who asked for it: the
    job, its owner and the pipeline run that made it (null when submitted directly). `clusterai
    logline verify NAME` later shows them, and detects any edited, removed or inserted line."""
    try:
        path = loglines.log_path(log)  # checked here too: a light worker's payload had no model
        record = _summary_record(check_ref(summary))
    except (ValueError, BadInput, ArtifactCorrupt) as exc:  # retrying cannot make a forged summary true
        raise NonRetryableError(f"video.logline: {exc}") from None
    job = current_job()
    record.update(job=job.job_id if job else None, owner=job.owner if job else None, run=job.run if job else None)
    key = loglines.load_or_create_key(os.environ.get(LOGLINE_KEY_ENV, DEFAULT_LOGLINE_KEY))
    line = loglines.append(path, record, key)
    return {"log": loglines.check_name(log), "line": line}


def _summary_record(ref: dict[str, Any]) -> dict[str, Any]:
    """What a line says of a summary read from the store (its size and sha256 checked), refused
    unless it is a video.summarize artifact."""
    store = ArtifactStore()
    namespace, _ = store.locate(ref)
    if not (namespace.startswith(f"{SUMMARIES}/") and _FOLDER.fullmatch(namespace[len(SUMMARIES) + 1:])):
        raise ValueError(f"{ref['artifact']} is not a video.summarize summary")
    try:
        data = json.loads(store.get_bytes(ref))
    except ValueError:
        raise ValueError(f"{ref['artifact']} is not a video.summarize summary (not JSON)") from None
    shape: dict[str, type | tuple[type, ...]] = {"source": str, "text": str, "scenes": int,
                                                 "duration": (int, float), "timeline": str}
    if not (isinstance(data, dict) and data.get("kind") == SUMMARY_KIND
            and all(isinstance(data.get(k), t) for k, t in shape.items())
            and (data.get("digest") is None or isinstance(data["digest"], str))):
        raise ValueError(f"{ref['artifact']} is not a video.summarize summary")
    return {"source": data["source"], "source_digest": data.get("digest"), "summary": ref["sha256"],
            "scenes": data["scenes"], "duration": data["duration"], "text": data["text"]}


@task("camera.count", retries=5)
def camera_count(source: str, line: Line | None = None,
                 checkpoint_every: Annotated[float, Range(0.5, 3600)] = 5.0,
                 max_frames: Annotated[int, Range(1, 100_000_000)] | None = None,
                 fps: Annotated[float, Range(gt=0, le=1000)] | None = None,
                 camera: Annotated[str, Length(1, 200)] | None = None,
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


VIDEO_ANALYSIS = Pipeline.from_dict("video-analysis", {
    "description": "Per video: scan (scenes, motion, people, faces, key frames) -> summary -> signed log "
                   "line, and a line-crossing count beside them; then one report over all videos.",
    "args": "videos",
    "stages": [
        {"name": "scan", "task": "video.scan", "each": "input.videos",
         "inputs": {"source": "item.source", "version": "item.version?"}},
        {"name": "count", "task": "camera.count", "each": "input.videos",
         "inputs": {"source": "item.source", "version": "item.version?"}},
        {"name": "summarize", "task": "video.summarize", "inputs": {"scan": "scan"}},
        {"name": "logline", "task": "video.logline", "inputs": {"summary": "summarize.summary"}},
        {"name": "report", "task": "video.report", "gather": True,
         "inputs": {"summaries": "summarize", "loglines": "logline", "counts": "count",
                    "sources": "input.videos"}},
    ],
})

PIPELINES = (VIDEO_ANALYSIS,)  # the built-in pipelines of this task module (core/pipelines.declared_pipelines)
