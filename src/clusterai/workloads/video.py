"""Video scanning: sample frames, find scene changes, motion, people and faces; summarise the scan.

Pure functions, no tasks and no storage: `scan_video` returns a JSON-able timeline and the key frames as JPEG
bytes, and whoever wires it into a task decides where they go. `summarize_scan` turns a timeline into a
deterministic summary (facts and a plain English paragraph) that needs nothing but the timeline.

Choices worth knowing:
- Frames are sampled by frame index from the source's frame rate, not by seeking: seeking is inexact for
  inter-frame codecs, so every frame is decoded (`grab`) and only sampled ones are converted (`retrieve`).
- MOG2 is fed the samples, not every decoded frame. The motion score is then "how much of the picture changed
  over one sampling interval", the granularity the timeline reports at, and the per-frame cost (colour
  conversion, resize, model update) is paid only for samples. The model restarts at each scene change: a
  hard cut is not motion, and the old scene's background says nothing about the new one.
- Analysis (histograms, MOG2) runs on a copy at most `_ANALYSIS_WIDTH` wide; people and faces on copies at
  most `_HOG_WIDTH` / `_FACE_WIDTH` wide. Boxes are reported in source pixel coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cv2 import data as cv2_data

from clusterai.workloads.sources import describe, open_video

# Frames wider than this are shrunk before histograms and MOG2: detail beyond it only adds noise and cost.
_ANALYSIS_WIDTH = 320
# HOG's window is 64x128, so people much shorter than ~130 px in the resized frame are missed; 400 px wide
# keeps most standing people in a typical frame while making HOG (the slowest step) affordable.
_HOG_WIDTH = 400
# HOG's SVM margins below this are mostly texture (railings, foliage); above it detections are usually people.
_HOG_MIN_WEIGHT = 0.5
_HOG_NMS_OVERLAP = 0.3
_FACE_WIDTH = 640
_FACE_MIN_SIZE = 24
_CASCADE = "haarcascade_frontalface_default.xml"
# Scene changes compare HSV histograms tile by tile over a 3x3 grid, averaging the tiles' distances: two shots
# with the same overall palette (two angles on one room) differ tile by tile, and a thing moving only changes
# the tiles it crosses. On test clips a cut between two random blob textures scored 0.68 this way and 0.28
# with one global histogram, while a moving shape stayed under 0.2 both ways.
_GRID = 3
# HSV bins: hue matters most for telling scenes apart; value is kept so a dark/bright cut is still seen.
_HIST_BINS = [16, 8, 8]
_HIST_RANGES = [0, 180, 0, 256, 0, 256]
# The MOG2 background forgets over about this many seconds of samples.
_MOG2_HISTORY_S = 20.0
# A scene's peak-motion frame is a key frame only if something actually moved.
_KEYFRAME_MIN_MOTION = 0.01
_JPEG_QUALITY = 85
# Used when the container does not say (0, NaN) or says something absurd; the timeline marks it as assumed.
_DEFAULT_FPS = 25.0
_MAX_FPS = 1000.0
# For remote sources: give up rather than hang on an unreachable host or a stalled stream.
_OPEN_TIMEOUT_MS = 15_000  # open and each read
# A damaged stretch can make a few reads fail before decoding resumes; this many in a row means the end.
_MAX_FAILED_READS = 25
# Codecs FFmpeg "decodes" from things that are not video (its tty demuxer renders .txt/.nfo files as ANSI art).
_NOT_VIDEO_CODECS = {"ansi"}


@dataclass(frozen=True)
class KeyFrame:
    """A thumbnail worth keeping: the first frame, a scene change or a scene's peak of motion."""

    time: float
    reason: str  # "first" | "scene_change" | "peak_motion"
    jpeg: bytes
    scene: int = 0
    frame: int = 0  # index of the source frame


@dataclass(frozen=True)
class ScanResult:
    timeline: dict[str, Any]  # JSON-able; see scan_video
    keyframes: list[KeyFrame]  # in time order; timeline["keyframes"] describes them in the same order


def _check_args(sample_fps: float, thumb_width: int, scene_threshold: float, max_frames: int | None) -> None:
    if not (math.isfinite(sample_fps) and sample_fps > 0):
        raise ValueError(f"sample_fps must be a positive number, got {sample_fps!r}")
    if thumb_width < 8:
        raise ValueError(f"thumb_width must be at least 8 pixels, got {thumb_width!r}")
    if not (0.0 < scene_threshold <= 1.0):
        raise ValueError(f"scene_threshold must be in (0, 1], got {scene_threshold!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames!r}")


def _fourcc(cap: cv2.VideoCapture) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    return code.to_bytes(4, "little").decode("ascii", errors="replace").strip("\x00 ")


def _resize_to_width(image: np.ndarray, width: int, *, upscale: bool = False) -> tuple[np.ndarray, float]:
    """The image at `width` pixels wide (aspect kept), and the factor that maps its coordinates back."""
    h, w = image.shape[:2]
    if w == width or (w < width and not upscale):
        return image, 1.0
    height = max(1, round(h * width / w))
    interpolation = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation), w / width


def _histograms(small_bgr: np.ndarray) -> list[np.ndarray]:
    """HSV histograms of the tiles of a _GRID x _GRID split, each normalised to sum 1."""
    hsv = cv2.cvtColor(small_bgr, cv2.COLOR_BGR2HSV)
    h, w = hsv.shape[:2]
    hists = []
    for i in range(_GRID):
        for j in range(_GRID):
            tile = hsv[h * i // _GRID : h * (i + 1) // _GRID, w * j // _GRID : w * (j + 1) // _GRID]
            hist = cv2.calcHist([tile], [0, 1, 2], None, _HIST_BINS, _HIST_RANGES)
            cv2.normalize(hist, hist, alpha=1.0, norm_type=cv2.NORM_L1)
            hists.append(hist)
    return hists


def _scene_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Mean Bhattacharyya distance over the tiles: 0 for the same picture, 1 for nothing in common."""
    return sum(cv2.compareHist(x, y, cv2.HISTCMP_BHATTACHARYYA) for x, y in zip(a, b)) / len(a)


def _new_subtractor(sample_fps: float) -> cv2.BackgroundSubtractorMOG2:
    history = max(10, round(_MOG2_HISTORY_S * sample_fps))
    # No shadow detection: it costs time and a shadow moving is motion for our purposes.
    return cv2.createBackgroundSubtractorMOG2(history=history, detectShadows=False)


_OPEN_KERNEL = np.ones((3, 3), np.uint8)


def _motion(subtractor: cv2.BackgroundSubtractorMOG2, small_bgr: np.ndarray) -> float:
    mask = subtractor.apply(small_bgr)
    # Opening drops isolated pixels (sensor noise, compression blocks) that are not things moving.
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _OPEN_KERNEL)
    return float(np.count_nonzero(mask == 255)) / mask.size


def _scaled_boxes(rects: Any, scale: float) -> list[list[int]]:
    return [[round(float(v) * scale) for v in rect] for rect in rects]


def _people(hog: cv2.HOGDescriptor, frame: np.ndarray) -> list[list[int]]:
    small, scale = _resize_to_width(frame, _HOG_WIDTH)
    if small.shape[0] < 128 or small.shape[1] < 64:
        return []  # smaller than one detection window
    rects, weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
    if len(rects) == 0:
        return []
    boxes = [[int(v) for v in r] for r in rects]
    scores = [float(w) for w in np.asarray(weights).reshape(-1)]
    # detectMultiScale's own grouping still leaves overlapping boxes on one person; NMS keeps the best of each.
    keep = cv2.dnn.NMSBoxes(boxes, scores, _HOG_MIN_WEIGHT, _HOG_NMS_OVERLAP)
    kept = [boxes[i] for i in sorted(int(i) for i in np.asarray(keep).reshape(-1))]
    return _scaled_boxes(kept, scale)


def _faces(cascade: cv2.CascadeClassifier, frame: np.ndarray) -> list[list[int]]:
    small, scale = _resize_to_width(frame, _FACE_WIDTH)
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    rects = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(_FACE_MIN_SIZE, _FACE_MIN_SIZE))
    return _scaled_boxes(sorted(tuple(int(v) for v in r) for r in rects), scale)


def _load_cascade() -> cv2.CascadeClassifier:
    # Loaded per scan rather than cached: a classifier shared by a worker's task threads is not known to be safe.
    path = str(Path(cv2_data.haarcascades) / _CASCADE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face cascade could not be loaded from {path}")
    return cascade


def _thumbnail(frame: np.ndarray, width: int) -> np.ndarray:
    thumb, _ = _resize_to_width(frame, width, upscale=True)
    return thumb.copy()


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding of a thumbnail failed")
    return buf.tobytes()


def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def scan_video(
    source: str,
    *,
    sample_fps: float = 2.0,
    thumb_width: int = 160,
    detect_people: bool = True,
    detect_faces: bool = True,
    scene_threshold: float = 0.4,
    max_frames: int | None = None,
) -> ScanResult:
    """Sample `source` (a file path or a URL that `media.sources` allows, see sources.py) at `sample_fps` and
    describe what happens in it.

    Per sample: time, scene change (mean Bhattacharyya distance between the HSV histograms of a 3x3 grid of
    tiles of this sample and of the previous one, above `scene_threshold`), motion (fraction of the picture
    MOG2 calls foreground), people (HOG) and faces (Haar) with their boxes, unless turned off (then counts are
    None).

    `max_frames` caps the source frames decoded (so the scan covers at most max_frames / fps seconds), which
    is also how to bound a live stream. A damaged or truncated file is scanned as far as it decodes.

    Raises ValueError, naming the source (without a URL's password): one and the same message when it is not
    allowed, missing or cannot be opened (sources.unreadable); its own when it opens but is not a video (text,
    a single still image) or yields no frame.

    The timeline: {"source": {uri, fps, fps_assumed, codec, frames (decoded), reported_frames, duration,
    width, height}, "params": {...}, "samples": [...], "scenes": [{index, start, end, duration, samples,
    peak_motion, peak_motion_time, max_people, max_faces}], "keyframes": [{time, reason, scene, frame}],
    "totals": {...}}. Times are in seconds from the start.
    """
    _check_args(sample_fps, thumb_width, scene_threshold, max_frames)
    cap = open_video(source, _OPEN_TIMEOUT_MS / 1000)
    try:
        return _scan(
            cap,
            source,
            sample_fps=sample_fps,
            thumb_width=thumb_width,
            detect_people=detect_people,
            detect_faces=detect_faces,
            scene_threshold=scene_threshold,
            max_frames=max_frames,
        )
    finally:
        cap.release()


@dataclass
class _Peak:
    motion: float
    time: float
    frame: int
    thumb: np.ndarray


def _scan(
    cap: cv2.VideoCapture,
    source: str,
    *,
    sample_fps: float,
    thumb_width: int,
    detect_people: bool,
    detect_faces: bool,
    scene_threshold: float,
    max_frames: int | None,
) -> ScanResult:
    codec = _fourcc(cap)
    if codec in _NOT_VIDEO_CODECS:
        raise ValueError(f"video source {describe(source)!r} is text, not a video")
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    reported = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    # Streams and some containers report 0, -1 or garbage (PNG reports INT64_MIN); None means "not known".
    reported_frames = int(reported) if math.isfinite(reported) and 0 < reported < 2**53 else None
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps_assumed = not (math.isfinite(fps) and 0 < fps <= _MAX_FPS)
    if fps_assumed:
        fps = _DEFAULT_FPS
    # Sample k is source frame floor(k * step + 0.5): no drift when fps / sample_fps is not a whole number, and
    # halves always round up (Python's round() alternates them, giving uneven intervals at 12.5 frames a sample).
    step = max(1.0, fps / sample_fps)

    hog: cv2.HOGDescriptor | None = None
    if detect_people:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))
    cascade = _load_cascade() if detect_faces else None

    samples: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    keyframes: list[KeyFrame] = []
    subtractor = _new_subtractor(sample_fps)
    prev_hists: list[np.ndarray] | None = None
    peak: _Peak | None = None
    scene = 0
    index = 0  # source frames decoded so far
    next_sample = 0
    samples_taken = 0
    failed_reads = 0

    def close_scene(end_time: float) -> None:
        current = scenes[-1]
        current["end"] = _r(end_time, 3)
        current["duration"] = _r(end_time - current["start"], 3)
        if peak is not None and peak.motion >= _KEYFRAME_MIN_MOTION:
            current["peak_motion"] = _r(peak.motion)
            current["peak_motion_time"] = _r(peak.time, 3)
            keyframes.append(KeyFrame(_r(peak.time, 3), "peak_motion", _jpeg(peak.thumb), current["index"], peak.frame))

    while max_frames is None or index < max_frames:
        if not cap.grab():
            # A damaged stretch mid-file can fail a few reads; past the reported end (or unknown) it is the end.
            failed_reads += 1
            if reported_frames is None or index >= reported_frames or failed_reads >= _MAX_FAILED_READS:
                break
            continue
        failed_reads = 0
        frame_index = index
        index += 1
        if frame_index < next_sample:
            continue
        ok, frame = cap.retrieve()
        if not ok or frame is None or frame.size == 0:
            continue
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        samples_taken += 1
        next_sample = math.floor(samples_taken * step + 0.5)
        t = frame_index / fps
        if not samples:
            # The container's size can differ from the decoded one (odd codecs, rotation); trust the frames.
            height, width = frame.shape[:2]

        small, _ = _resize_to_width(frame, _ANALYSIS_WIDTH)
        hists = _histograms(small)
        distance = 0.0 if prev_hists is None else _scene_distance(prev_hists, hists)
        prev_hists = hists
        changed = bool(samples) and distance > scene_threshold

        if not samples or changed:
            if changed:
                close_scene(t)
                scene += 1
                # A new scene starts a new background: the cut is not motion and the old model is useless.
                subtractor = _new_subtractor(sample_fps)
            peak = None
            scenes.append(
                {
                    "index": scene,
                    "start": _r(t, 3),
                    "samples": 0,
                    "peak_motion": 0.0,
                    "peak_motion_time": None,
                    "max_people": None,
                    "max_faces": None,
                }
            )
            reason = "scene_change" if changed else "first"
            keyframes.append(KeyFrame(_r(t, 3), reason, _jpeg(_thumbnail(frame, thumb_width)), scene, frame_index))
            # MOG2 marks every pixel of its first frame as foreground; with no background yet, motion is 0.
            subtractor.apply(small)
            motion = 0.0
        else:
            motion = _motion(subtractor, small)
            if peak is None or motion > peak.motion:
                peak = _Peak(motion, t, frame_index, _thumbnail(frame, thumb_width))

        people = _people(hog, frame) if hog is not None else None
        faces = _faces(cascade, frame) if cascade is not None else None
        current = scenes[-1]
        current["samples"] += 1
        if people is not None:
            current["max_people"] = max(current["max_people"] or 0, len(people))
        if faces is not None:
            current["max_faces"] = max(current["max_faces"] or 0, len(faces))
        samples.append(
            {
                "frame": frame_index,
                "time": _r(t, 3),
                "scene": scene,
                "scene_change": changed,
                "scene_distance": _r(distance),
                "motion": _r(motion),
                "people": None if people is None else len(people),
                "people_boxes": people,
                "faces": None if faces is None else len(faces),
                "face_boxes": faces,
            }
        )

    if not samples:
        raise ValueError(f"video source {describe(source)!r} has no decodable frames")
    stopped_at_max = max_frames is not None and index >= max_frames
    if index == 1 and not stopped_at_max and (reported_frames is None or reported_frames <= 1):
        raise ValueError(f"video source {describe(source)!r} is a single still image, not a video")
    duration = index / fps
    close_scene(duration)
    keyframes.sort(key=lambda k: (k.time, k.frame))

    people_counts = [s["people"] for s in samples if s["people"] is not None]
    face_counts = [s["faces"] for s in samples if s["faces"] is not None]
    timeline: dict[str, Any] = {
        "source": {
            "uri": describe(source),  # never a URL's password: the timeline is an artifact others read
            "fps": _r(fps, 3),
            "fps_assumed": fps_assumed,
            "codec": codec,
            "frames": index,
            "reported_frames": reported_frames,
            "duration": _r(duration, 3),
            "width": width,
            "height": height,
        },
        "params": {
            "sample_fps": sample_fps,
            "scene_threshold": scene_threshold,
            "detect_people": detect_people,
            "detect_faces": detect_faces,
            "max_frames": max_frames,
            "thumb_width": thumb_width,
            "motion": "MOG2 foreground fraction, fed every sample, restarted at each scene change",
        },
        "samples": samples,
        "scenes": scenes,
        "keyframes": [{"time": k.time, "reason": k.reason, "scene": k.scene, "frame": k.frame} for k in keyframes],
        "totals": {
            "frames_decoded": index,
            "samples": len(samples),
            "scenes": len(scenes),
            "scene_changes": len(scenes) - 1,
            "keyframes": len(keyframes),
            "mean_motion": _r(sum(s["motion"] for s in samples) / len(samples)),
            "peak_motion": _r(max(s["motion"] for s in samples)),
            "max_people": max(people_counts) if people_counts else None,
            "samples_with_people": sum(1 for c in people_counts if c > 0) if detect_people else None,
            "max_faces": max(face_counts) if face_counts else None,
            "samples_with_faces": sum(1 for c in face_counts if c > 0) if detect_faces else None,
            "stopped_at_max_frames": stopped_at_max,
        },
    }
    return ScanResult(timeline=timeline, keyframes=keyframes)


# --- summary -------------------------------------------------------------------------------------------------


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _detector_summary(samples: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Max count seen and when (first time it was reached), or None when the detector did not run."""
    counted = [s for s in samples if s.get(key) is not None]
    if not counted:
        return None
    best = max(counted, key=lambda s: (s[key], -s["time"]))
    return {
        "max": int(best[key]),
        "max_time": float(best["time"]) if best[key] > 0 else None,
        "samples_with": sum(1 for s in counted if s[key] > 0),
    }


def summarize_scan(timeline: dict[str, Any]) -> dict[str, Any]:
    """A deterministic scene summary of a `scan_video` timeline (also after a JSON round trip).

    Facts: scene count and durations, motion (mean, peak and when, `total` = motion x time in
    "whole-picture seconds"), the busiest moments (up to three sample times with the most motion, most first),
    people and faces (max at once, when, how many samples), and `text`, a short English paragraph of them.
    """
    try:
        samples: list[dict[str, Any]] = list(timeline["samples"])
        scenes: list[dict[str, Any]] = list(timeline["scenes"])
        duration = float(timeline["source"]["duration"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a scan_video timeline: missing {e}") from None

    fps = float(timeline["source"].get("fps") or _DEFAULT_FPS)
    sample_fps = float(timeline.get("params", {}).get("sample_fps") or 1.0)
    interval = max(1.0 / sample_fps, 1.0 / fps)
    motions = [float(s["motion"]) for s in samples]
    peak_sample = max(samples, key=lambda s: (s["motion"], -s["time"])) if samples else None
    # Most motion first, earlier first on ties; a moment with no motion is not busy.
    busiest = sorted((s for s in samples if s["motion"] > 0), key=lambda s: (-s["motion"], s["time"]))[:3]
    scene_durations = [float(s["duration"]) for s in scenes]
    longest = max(scenes, key=lambda s: (s["duration"], -s["start"])) if scenes else None

    summary: dict[str, Any] = {
        "duration": duration,
        "scenes": len(scenes),
        "scene_durations": scene_durations,
        "longest_scene": (
            None
            if longest is None
            else {"index": longest["index"], "start": longest["start"], "duration": longest["duration"]}
        ),
        "motion": {
            "mean": _r(sum(motions) / len(motions)) if motions else 0.0,
            "total": _r(sum(motions) * interval),
            "peak": float(peak_sample["motion"]) if peak_sample else 0.0,
            "peak_time": float(peak_sample["time"]) if peak_sample and peak_sample["motion"] > 0 else None,
        },
        "busiest_moments": [{"time": float(s["time"]), "motion": float(s["motion"])} for s in busiest],
        "people": _detector_summary(samples, "people"),
        "faces": _detector_summary(samples, "faces"),
    }
    summary["text"] = _summary_text(summary)
    return summary


def _summary_text(summary: dict[str, Any]) -> str:
    n = summary["scenes"]
    durations = summary["scene_durations"]
    parts = [f"The video lasts {_fmt_s(summary['duration'])} and has {_plural(n, 'scene')}"]
    if 1 < n <= 5:
        parts[0] += f" ({_join([_fmt_s(d) for d in durations])})."
    elif n > 5 and summary["longest_scene"] is not None:
        longest = summary["longest_scene"]
        parts[0] += f"; the longest runs {_fmt_s(longest['duration'])} from {_fmt_s(longest['start'])}."
    else:
        parts[0] += "."

    motion = summary["motion"]
    if motion["peak_time"] is None:
        parts.append("Nothing moves.")
    else:
        moments = _join([_fmt_s(m["time"]) for m in summary["busiest_moments"]])
        parts.append(
            f"Motion peaks at {_fmt_s(motion['peak_time'])} ({motion['peak'] * 100:.0f}% of the picture); "
            f"the busiest {'moment is' if len(summary['busiest_moments']) == 1 else 'moments are'} at {moments}."
        )

    for key, word in (("people", "person"), ("faces", "face")):
        found = summary[key]
        if found is None:
            continue
        label = "people" if key == "people" else "faces"
        if found["max"] == 0:
            parts.append(f"No {label} were detected.")
        else:
            parts.append(
                f"{label.capitalize()} appear in {_plural(found['samples_with'], 'sample')}, "
                f"up to {_plural(found['max'], word) if key == 'faces' else _people_count(found['max'])} at once "
                f"(first at {_fmt_s(found['max_time'])})."
            )
    return " ".join(parts)


def _people_count(n: int) -> str:
    return "1 person" if n == 1 else f"{n} people"
