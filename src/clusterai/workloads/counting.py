"""Count objects crossing a line in a video stream (file, HTTP MJPEG or RTSP URL through OpenCV).

The pipeline is classic and cheap enough for any worker: MOG2 background subtraction, morphological
cleanup, contour centroids, a nearest-neighbour centroid tracker, and a crossing test on the sign of
each track's side of the line. `count_stream` drives it over a `cv2.VideoCapture` and checkpoints a
JSON-able state so a restarted worker resumes where it stopped.

Geometry. A line is `(x1, y1, x2, y2)` in pixels. Its *right* side is the one on your right when you
stand on (x1, y1) and look towards (x2, y2) on the image as displayed (y grows downwards); the
default line is vertical at the middle and drawn bottom to top, so its sides are the screen's left and
right. A line is a segment: a side change is counted only when the centroid that completes it
projects inside the segment.

Checkpoint timing. Checkpoints fall every `checkpoint_every_s` seconds of *video* time, on absolute
frame numbers (frame_index % round(checkpoint_every_s * fps) == 0), and once more at the end. Video
time makes runs deterministic (the same frames always checkpoint) and, on a live camera, is wall
time anyway.

Resume semantics. A state taken at frame k means frames [0, k) are counted and the totals include
every crossing completed in them. The state carries the tracks (id, centroid, velocity, committed
side, missed frames), so an object half-way over the line at k keeps its track and its committed
side: it is counted once, when its side flips after k, never again and never not at all. What it
cannot carry is the MOG2 model (OpenCV cannot serialise it); on resume the model is rebuilt from
the `rebuild_frames` frames before k (re-read from the source) with moving objects masked out by a
temporal median, so the model at k looks like the uninterrupted run's: a learned, empty background.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from clusterai.workloads.sources import describe, open_video

Line = tuple[int, int, int, int]

LEFT_TO_RIGHT = "left_to_right"
RIGHT_TO_LEFT = "right_to_left"
DIRECTIONS = (LEFT_TO_RIGHT, RIGHT_TO_LEFT)
STATE_VERSION = 1

# What a stream that does not say its frame rate (MJPEG over HTTP reports FFmpeg's guess of 25) is assumed to run at.
FALLBACK_FPS = 25.0


# --- geometry (shared with synth.py so the ground truth uses the same convention) ---


def default_line(size: tuple[int, int]) -> Line:
    """A vertical line at the middle of a `(width, height)` frame, drawn bottom to top (right side = screen right)."""
    width, height = size
    return (width // 2, height - 1, width // 2, 0)


def check_line(line: Sequence[float]) -> Line:
    if len(line) != 4:
        raise ValueError(f"a line is (x1, y1, x2, y2), got {line!r}")
    x1, y1, x2, y2 = (int(round(v)) for v in line)
    if (x1, y1) == (x2, y2):
        raise ValueError(f"line {tuple(line)!r} has no length")
    return (x1, y1, x2, y2)


def signed_distance(line: Line, x: float, y: float) -> float:
    """Distance of (x, y) from the line's infinite extension: positive on its right side, negative on its left."""
    x1, y1, x2, y2 = line
    dx, dy = x2 - x1, y2 - y1
    return (dx * (y - y1) - dy * (x - x1)) / math.hypot(dx, dy)


def along(line: Line, x: float, y: float) -> float:
    """Where (x, y) projects on the segment: 0 at (x1, y1), 1 at (x2, y2)."""
    x1, y1, x2, y2 = line
    dx, dy = x2 - x1, y2 - y1
    return ((x - x1) * dx + (y - y1) * dy) / (dx * dx + dy * dy)


def direction_of(old_side: int, new_side: int) -> str:
    return LEFT_TO_RIGHT if old_side < 0 < new_side else RIGHT_TO_LEFT


# --- the counter ---


@dataclass(frozen=True)
class CounterConfig:
    """Tuning knobs; the defaults suit 320x240 to 640x480 scenes with objects of a few hundred pixels."""

    min_area: float = 120.0  # px²; smaller blobs are noise
    max_distance: float = 40.0  # px between a track's predicted centroid and a detection it may take
    max_missed: int = 5  # frames a track survives without a detection (occlusion, a missed mask)
    margin: float = 2.0  # px; a side is committed only this far from the line, so jitter on it never counts
    warmup_frames: int = 10  # frames the background model learns before anything is detected
    rebuild_frames: int = 30  # frames re-read before a resume point to rebuild the background model
    history: int = 500  # MOG2 history
    var_threshold: float = 16.0  # MOG2 squared Mahalanobis threshold
    detect_shadows: bool = True  # shadows are found and then dropped, so they neither merge nor shift blobs
    blur: int = 5  # Gaussian kernel applied before subtraction (odd; 0 disables): sensor noise stays out of masks

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CounterConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown counter settings: {sorted(unknown)}")
        return cls(**data)


@dataclass
class Track:
    id: int
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    side: int = 0  # committed side: -1 left, +1 right, 0 not yet away from the line
    missed: int = 0
    age: int = 1

    def predicted(self) -> tuple[float, float]:
        steps = self.missed + 1
        return self.x + self.vx * steps, self.y + self.vy * steps


@dataclass(frozen=True)
class Crossing:
    track_id: int
    direction: str
    frame: int
    x: float
    y: float


class LineCounter:
    """Counts tracked blobs whose committed side of `line` flips. Feed frames in order with `process`."""

    def __init__(self, line: Sequence[float], config: CounterConfig | None = None, *, fps: float | None = None):
        self.line = check_line(line)
        self.config = config or CounterConfig()
        if self.config.blur and self.config.blur % 2 == 0:
            raise ValueError(f"blur must be odd or 0, got {self.config.blur}")
        self.fps = fps
        self.frame_index = 0  # number of the next frame to process
        self.totals = {LEFT_TO_RIGHT: 0, RIGHT_TO_LEFT: 0}
        self.tracks: list[Track] = []
        self.next_track_id = 1
        self.time_series: list[list[float]] = [[0.0, 0]]
        self._fresh_model()
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))

    def _fresh_model(self) -> None:
        cfg = self.config
        self._subtractor = cv2.createBackgroundSubtractorMOG2(
            history=cfg.history, varThreshold=cfg.var_threshold, detectShadows=cfg.detect_shadows
        )
        self._learned = 0  # frames the current model has seen
        self._primed = False  # whether the model is good enough to detect against

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    # -- background model --

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        k = self.config.blur
        return cv2.GaussianBlur(frame, (k, k), 0) if k else frame

    def _learn(self, prepared: np.ndarray) -> np.ndarray:
        mask = self._subtractor.apply(prepared)
        self._learned += 1
        if self._learned >= self.config.warmup_frames:
            self._primed = True
        return mask

    def rebuild(self, frames: Sequence[np.ndarray]) -> None:
        """Rebuild the background model on resume from the frames just before `frame_index`.

        When the frames are the whole clip so far and it is still warming up, they are learned as they are:
        exactly what the uninterrupted run did. Otherwise every pixel that strays from the frames' temporal
        median (a moving object) is replaced by the median before learning, so objects passing during the
        rebuild neither burn into the background nor leave ghosts, and the model ends up primed."""
        self._fresh_model()
        if not frames:
            return
        prepared = [self._prepare(f) for f in frames]
        if self.frame_index <= self.config.warmup_frames and len(frames) == self.frame_index:
            for p in prepared:
                self._learn(p)
            return
        n = len(prepared)
        median = np.ascontiguousarray(np.partition(np.stack(prepared, axis=-1), n // 2, axis=-1)[..., n // 2])
        deviations = []
        for p in prepared:
            b, g, r = cv2.split(cv2.absdiff(p, median))
            deviations.append(cv2.max(cv2.max(b, g), r))  # the worst channel per pixel
        # sensor noise as a robust sd (MAD, on a sample of pixels), so only real objects are masked out,
        # never the noise MOG2 must learn
        noise_sd = 1.4826 * float(np.median(np.stack(deviations)[:, ::4, ::4]))
        threshold = max(25.0, 4.0 * noise_sd)
        for p, dev in zip(prepared, deviations):
            moving = cv2.dilate((dev > threshold).astype(np.uint8), self._close)
            self._learn(np.where(moving[..., None] > 0, median, p))
        self._primed = True

    # -- detection and tracking --

    def detect(self, mask: np.ndarray) -> list[tuple[float, float]]:
        """Centroids of the foreground blobs of at least `min_area` pixels."""
        mask = np.where(mask > 200, 255, 0).astype(np.uint8)  # MOG2 marks shadows 127: drop them
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        centroids = []
        for contour in contours:
            m = cv2.moments(contour)
            if m["m00"] >= self.config.min_area:
                centroids.append((m["m10"] / m["m00"], m["m01"] / m["m00"]))
        centroids.sort(key=lambda c: (c[1], c[0]))  # a stable order keeps runs deterministic
        return centroids

    def _side(self, x: float, y: float) -> int:
        d = signed_distance(self.line, x, y)
        if d > self.config.margin:
            return 1
        if d < -self.config.margin:
            return -1
        return 0

    def _match(self, centroids: list[tuple[float, float]]) -> dict[int, int]:
        """Greedy global nearest-neighbour: the closest (track, detection) pair first, within max_distance."""
        pairs = []
        for ti, track in enumerate(self.tracks):
            px, py = track.predicted()
            for di, (cx, cy) in enumerate(centroids):
                d = math.hypot(cx - px, cy - py)
                if d <= self.config.max_distance:
                    pairs.append((d, ti, di))
        pairs.sort()
        matched: dict[int, int] = {}
        taken: set[int] = set()
        for _, ti, di in pairs:
            if ti not in matched and di not in taken:
                matched[ti] = di
                taken.add(di)
        return matched

    def process(self, frame: np.ndarray) -> list[Crossing]:
        """Consume the next frame; return the crossings it completed."""
        index = self.frame_index
        self.frame_index += 1
        prepared = self._prepare(frame)
        if not self._primed:
            self._learn(prepared)
            return []
        centroids = self.detect(self._learn(prepared))
        matched = self._match(centroids)
        crossings: list[Crossing] = []
        survivors: list[Track] = []
        for ti, track in enumerate(self.tracks):
            if ti not in matched:
                track.missed += 1
                if track.missed <= self.config.max_missed:
                    survivors.append(track)
                continue
            cx, cy = centroids[matched[ti]]
            steps = track.missed + 1
            track.vx = 0.5 * track.vx + 0.5 * (cx - track.x) / steps
            track.vy = 0.5 * track.vy + 0.5 * (cy - track.y) / steps
            track.x, track.y, track.missed, track.age = cx, cy, 0, track.age + 1
            side = self._side(cx, cy)
            if side and side != track.side:
                if track.side and 0.0 <= along(self.line, cx, cy) <= 1.0:
                    direction = direction_of(track.side, side)
                    self.totals[direction] += 1
                    crossings.append(Crossing(track.id, direction, index, cx, cy))
                track.side = side
            survivors.append(track)
        taken = set(matched.values())
        for di, (cx, cy) in enumerate(centroids):
            if di not in taken:
                survivors.append(Track(self.next_track_id, cx, cy, side=self._side(cx, cy)))
                self.next_track_id += 1
        self.tracks = survivors
        if crossings:
            self._record(index)
        return crossings

    def _record(self, index: int) -> None:
        # One point per whole video second with a change: [end of that second, cumulative total]. Small on long
        # runs, and a crossing committed a frame earlier or later (noise) moves no point unless it straddles a
        # second. Without an fps the "seconds" are frames.
        t = float(int(index // self.fps) + 1) if self.fps else float(index + 1)
        if len(self.time_series) > 1 and self.time_series[-1][0] == t:
            self.time_series[-1] = [t, self.total]
        else:
            self.time_series.append([t, self.total])

    def drop_tracks(self) -> None:
        """Forget the tracks (the scene moved on while nobody watched); the totals stay."""
        self.tracks = []

    # -- checkpoints --

    def state(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON types (fresh objects: the caller may keep or mutate them)."""
        return {
            "version": STATE_VERSION,
            "line": list(self.line),
            "config": asdict(self.config),
            "fps": self.fps,
            "frame_index": self.frame_index,
            "totals": dict(self.totals),
            "total": self.total,
            "next_track_id": self.next_track_id,
            "tracks": [asdict(t) for t in self.tracks],
            "time_series": [list(p) for p in self.time_series],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LineCounter:
        """A counter that continues from `state`; its background model needs `rebuild` (or warms up on its own)."""
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"counter state version {state['version']!r}, expected {STATE_VERSION}")
            counter = cls(state["line"], CounterConfig.from_dict(state["config"]), fps=state["fps"])
            counter.frame_index = int(state["frame_index"])
            counter.totals = {d: int(state["totals"][d]) for d in DIRECTIONS}
            counter.next_track_id = int(state["next_track_id"])
            counter.tracks = [Track(**t) for t in state["tracks"]]
            counter.time_series = [[float(t), int(c)] for t, c in state["time_series"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed counter state: {e!r}") from e
        return counter


# --- driving a stream ---


def _seek(cap: cv2.VideoCapture, frame: int) -> bool:
    """Move to `frame`: seek where the source allows it (files), else read and drop frames (replayable streams).
    False when the source ends first."""
    if frame <= 0:
        return True
    if cap.set(cv2.CAP_PROP_POS_FRAMES, frame) and int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == frame:
        return True
    # a failed or inexact seek may have moved the stream: only a fresh start is a known position
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return all(cap.grab() for _ in range(frame))


def count_stream(
    source: str | os.PathLike[str],
    *,
    line: Sequence[float] | None = None,
    start_frame: int | None = None,
    state: dict[str, Any] | None = None,
    checkpoint_every_s: float = 5.0,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    max_frames: int | None = None,
    fps: float | None = None,
    config: CounterConfig | None = None,
    open_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Count line crossings in `source` (a file path, or an http(s)/rtsp URL `media.sources` allows).

    `line` defaults to a vertical line at the middle. To resume, pass the last checkpoint as `state`: the
    source is positioned at its `frame_index` (seeking, or reading and dropping frames where it cannot seek)
    and the background model rebuilt from the frames before it. A live camera cannot replay its past: pass
    `start_frame=0` there; the totals and the counter's clock carry on, the stale tracks are dropped and the
    model warms up again. `start_frame` without a state starts a fresh count mid-source.
    `fps` overrides what the source reports (MJPEG over HTTP does not know its rate). `on_checkpoint`
    gets `LineCounter.state()` every `checkpoint_every_s` seconds of video time and at the end.

    Returns the totals (`total`, `left_to_right`, `right_to_left`), `frames_processed` by this call,
    `frame_index` (the counter's clock: frames counted in all runs), `video_seconds`, `end_of_stream`,
    `checkpoints` made, and `time_series`: [second, cumulative total] points, one per whole video second in
    which the count changed (at that second's end), from [0, 0] to [video_seconds, total].
    Raises ValueError naming the source (without a URL's password): sources.unreadable's one message when
    `media.sources` does not allow it, it is missing or it cannot be opened; its own when it yields no frame.
    """
    if checkpoint_every_s <= 0:
        raise ValueError("checkpoint_every_s must be positive")
    if max_frames is not None and max_frames < 0:
        raise ValueError("max_frames must be >= 0")
    src = os.fspath(source)
    cap = open_video(src, open_timeout_s)
    try:
        if state is not None:
            counter = LineCounter.from_state(state)
            if line is not None and check_line(line) != counter.line:
                raise ValueError(f"line {tuple(line)!r} differs from the checkpoint's {counter.line!r}")
            if config is not None and config != counter.config:
                raise ValueError("counter config differs from the checkpoint's")
        else:
            if line is None:
                size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
                if min(size) <= 0:
                    raise ValueError(f"video source {describe(src)!r} does not report its frame size: give a line")
                line = default_line(size)
            counter = LineCounter(line, config)
        if counter.fps is None:
            reported = cap.get(cv2.CAP_PROP_FPS)
            counter.fps = float(fps or (reported if 0 < reported <= 1000 else FALLBACK_FPS))
        start = counter.frame_index if start_frame is None else start_frame
        if start < 0:
            raise ValueError("start_frame must be >= 0")
        if state is None:
            counter.frame_index = start  # a fresh count mid-source keeps the source's frame numbers
        # reading somewhere else than where the state stopped (a live camera after a restart): its tracks
        # belong to a scene that has moved on, and the counter's clock keeps running from the state
        same_timeline = start == counter.frame_index
        if not same_timeline:
            counter.drop_tracks()
        every = max(1, round(checkpoint_every_s * counter.fps))

        positioned = True
        if start > 0 and not same_timeline:
            positioned = _seek(cap, start)  # the counter warms its model up on its own
        elif start > 0:
            first = max(0, start - counter.config.rebuild_frames)
            positioned = _seek(cap, first)
            history: list[np.ndarray] = []
            while positioned and first + len(history) < start:
                ok, frame = cap.read()
                if not ok:
                    positioned = False
                    break
                history.append(frame)
            if positioned:
                counter.rebuild(history)

        processed = 0
        last_checkpoint = -1
        checkpoints = 0
        ended = not positioned  # resuming past the end: nothing left to count
        while not ended and (max_frames is None or processed < max_frames):
            ok, frame = cap.read()
            if not ok:
                ended = True
                break
            counter.process(frame)
            processed += 1
            if counter.frame_index % every == 0 and on_checkpoint is not None:
                on_checkpoint(counter.state())
                last_checkpoint = counter.frame_index
                checkpoints += 1
        if processed == 0 and start == 0 and max_frames != 0:
            raise ValueError(f"video source {describe(src)!r} yielded no frames (corrupt, empty or unreachable)")
        if on_checkpoint is not None and last_checkpoint != counter.frame_index:
            on_checkpoint(counter.state())
            checkpoints += 1
    finally:
        cap.release()

    assert counter.fps is not None
    seconds = round(counter.frame_index / counter.fps, 3)
    # the last second may be cut short by the end of the video
    series = [[min(t, seconds), c] for t, c in counter.time_series]
    if series[-1][0] < seconds:
        series.append([seconds, counter.total])
    return {
        "source": describe(src),
        "line": list(counter.line),
        "fps": counter.fps,
        "total": counter.total,
        LEFT_TO_RIGHT: counter.totals[LEFT_TO_RIGHT],
        RIGHT_TO_LEFT: counter.totals[RIGHT_TO_LEFT],
        "start_frame": start,
        "frames_processed": processed,
        "frame_index": counter.frame_index,
        "video_seconds": seconds,
        "end_of_stream": ended,
        "checkpoints": checkpoints,
        "time_series": series,
    }
