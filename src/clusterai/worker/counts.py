"""Camera count reports, the worker's half: a counting task sends its totals at every checkpoint
over Dask's event stream (worker -> scheduler -> the coordinator), so the worker needs no store
access. The head's half, which stores them, is head/camera_counts.py."""

from __future__ import annotations

import time
from typing import Any

from clusterai.worker.execute import emit

TOPIC = "clusterai-counts"


def report(job_id: int, attempt: int, camera: str, state: dict[str, Any]) -> None:
    """Inside a worker: send a counter's checkpoint totals to the coordinator."""
    totals = state.get("totals") or {}
    fps = state.get("fps") or 0
    frame = int(state["frame_index"])
    emit(TOPIC, {
        "job_id": job_id, "attempt": attempt, "camera": camera, "frame": frame,
        "video_time": frame / fps if fps else 0.0, "at": time.time(), "total": int(state.get("total", 0)),
        "left_to_right": int(totals.get("left_to_right", 0)), "right_to_left": int(totals.get("right_to_left", 0)),
    })
