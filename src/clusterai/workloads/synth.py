"""Synthetic clips with known ground truth for camera.count: shapes crossing a counting line.

A clip is a static textured background with filled circles and rectangles moving over it along
polylines; the ground truth (which object crosses the line, when, in which direction) is computed
from the same geometry the counter uses (`counting.signed_distance`), with the centroid exact.
Objects never come close to one another, and never turn around near the line, so every crossing is
unambiguous. The scene comes from `seed`; the noise from its own stream, so a noisy clip has exactly
the clean clip's scene and truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from clusterai.workloads.counting import (
    LEFT_TO_RIGHT,
    RIGHT_TO_LEFT,
    Line,
    along,
    check_line,
    default_line,
    direction_of,
    signed_distance,
)

Shape = Literal["circle", "rect"]

# Saturated colours (BGR) that stand out against the grey background (and are not mistaken for its shadows).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 215, 255),
    (255, 120, 0),
    (50, 40, 230),
    (245, 245, 245),
    (40, 200, 40),
    (210, 40, 210),
    (15, 15, 15),
)
SIZES = (9, 11, 13, 15, 10, 12, 14)  # radius, or half the width of a rectangle: distinct sizes
MIN_GAP = 16  # px between any two objects' bounding circles: blobs never merge
MIN_TURN_DISTANCE = 10.0  # px from the line for every waypoint: a crossing always goes well past it
LANE_SPACING = 60  # px between auto-generated lanes along the line
HEADWAY = 90  # px between two objects following each other in a lane
_SHIFT = 4  # sub-pixel drawing: smooth motion at slow speeds


@dataclass(frozen=True)
class ObjectPath:
    """An object whose centroid moves along `waypoints` at `speed` px/frame, from `start_frame` until it reaches
    the last waypoint (then it is gone). Waypoints may lie off-screen: objects enter and leave through the edges."""

    waypoints: tuple[tuple[float, float], ...]
    speed: float
    start_frame: int = 0
    shape: Shape = "circle"
    size: int = 12  # radius, or half the width of a rectangle (whose height is 0.7 of its width)
    color: tuple[int, int, int] | None = None  # BGR; None picks from the palette by the object's index

    def __post_init__(self) -> None:
        if len(self.waypoints) < 2:
            raise ValueError("an object path needs at least two waypoints")
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        if self.start_frame < 0:
            raise ValueError("start_frame must be >= 0")
        if self.size < 4:
            raise ValueError("size must be >= 4 px")
        if self.shape not in ("circle", "rect"):
            raise ValueError(f"shape must be 'circle' or 'rect', got {self.shape!r}")

    @property
    def half_height(self) -> int:
        return self.size if self.shape == "circle" else max(2, round(self.size * 0.7))

    @property
    def radius(self) -> float:
        """Radius of the bounding circle."""
        return float(self.size) if self.shape == "circle" else math.hypot(self.size, self.half_height)

    @property
    def length(self) -> float:
        return sum(math.dist(a, b) for a, b in zip(self.waypoints, self.waypoints[1:]))

    @property
    def last_frame(self) -> int:
        return self.start_frame + math.ceil(self.length / self.speed)

    def position(self, frame: int) -> tuple[float, float] | None:
        """The centroid at `frame`, or None when the object has not started or is gone."""
        if frame < self.start_frame or frame > self.last_frame:
            return None
        s = min((frame - self.start_frame) * self.speed, self.length)
        for a, b in zip(self.waypoints, self.waypoints[1:]):
            seg = math.dist(a, b)
            if s <= seg and seg > 0:
                f = s / seg
                return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)
            s -= seg
        return self.waypoints[-1]

    def visible(self, frame: int, size: tuple[int, int]) -> bool:
        pos = self.position(frame)
        if pos is None:
            return False
        w, h = size
        return -self.size < pos[0] < w + self.size and -self.half_height < pos[1] < h + self.half_height


@dataclass(frozen=True)
class CrossingTruth:
    frame: int  # first frame with the centroid on the new side
    direction: str
    x: float
    y: float


@dataclass(frozen=True)
class ObjectTruth:
    id: int
    shape: str
    size: int
    color: tuple[int, int, int]
    speed: float
    first_frame: int
    last_frame: int
    visible: tuple[tuple[int, int], ...]  # inclusive frame ranges with any part of it on screen
    crossings: tuple[CrossingTruth, ...]


@dataclass(frozen=True)
class ClipTruth:
    path: str
    frames: int
    fps: int
    size: tuple[int, int]
    line: Line
    crossings: int
    left_to_right: int
    right_to_left: int
    crossing_frames: tuple[int, ...]  # every crossing's frame, sorted
    objects: tuple[ObjectTruth, ...]
    motion_ranges: tuple[tuple[int, int], ...]  # inclusive frame ranges with at least one object on screen
    noise: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _ranges(frames: list[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for f in sorted(frames):
        if out and f == out[-1][1] + 1:
            out[-1] = (out[-1][0], f)
        else:
            out.append((f, f))
    return tuple(out)


def _crossings(obj: ObjectPath, line: Line) -> tuple[CrossingTruth, ...]:
    out = []
    side = 0
    for frame in range(obj.start_frame, obj.last_frame + 1):
        pos = obj.position(frame)
        assert pos is not None
        d = signed_distance(line, *pos)
        new = 1 if d > 0 else -1 if d < 0 else 0
        if new and new != side:
            if side and 0.0 <= along(line, *pos) <= 1.0:
                out.append(CrossingTruth(frame, direction_of(side, new), round(pos[0], 2), round(pos[1], 2)))
            side = new
    return tuple(out)


def _check_objects(objects: list[ObjectPath], line: Line, frames: int) -> None:
    for i, obj in enumerate(objects):
        for wp in obj.waypoints:
            if abs(signed_distance(line, *wp)) < MIN_TURN_DISTANCE:
                raise ValueError(f"object {i}: waypoint {wp} is within {MIN_TURN_DISTANCE} px of the line")
    for frame in range(frames):
        present = [(o, p) for o in objects if (p := o.position(frame)) is not None]
        for a in range(len(present)):
            for b in range(a + 1, len(present)):
                (oa, pa), (ob, pb) = present[a], present[b]
                if math.dist(pa, pb) < oa.radius + ob.radius + MIN_GAP:
                    raise ValueError(
                        f"objects {objects.index(oa)} and {objects.index(ob)} come too close at frame {frame}"
                    )


def _ray_span(
    origin: tuple[float, float], normal: tuple[float, float], size: tuple[int, int], pad: float
) -> tuple[float, float]:
    """The parameters t where origin + t * normal is inside the frame grown by `pad` (slab method)."""
    lo, hi = -math.inf, math.inf
    for o, n, extent in ((origin[0], normal[0], size[0]), (origin[1], normal[1], size[1])):
        if abs(n) < 1e-9:
            continue
        t1, t2 = (-pad - o) / n, (extent + pad - o) / n
        lo, hi = max(lo, min(t1, t2)), min(hi, max(t1, t2))
    return lo, hi


def _auto_objects(
    crossings: int, line: Line, size: tuple[int, int], frames: int, fps: int, rng: np.random.Generator
) -> list[ObjectPath]:
    """`crossings` objects, each crossing once, in lanes perpendicular to the line. One lane keeps one speed,
    so objects following each other never catch up; objects going the other way wait until the lane is empty."""
    x1, y1, x2, y2 = line
    seg = math.hypot(x2 - x1, y2 - y1)
    normal = ((y2 - y1) / seg, -(x2 - x1) / seg)  # towards the right side
    lanes = max(1, round(seg / LANE_SPACING) - 1)
    points = [(x1 + (x2 - x1) * (j + 1) / (lanes + 1), y1 + (y2 - y1) * (j + 1) / (lanes + 1)) for j in range(lanes)]
    speeds = [float(rng.choice([6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0])) for _ in range(lanes)]
    # per lane: (direction, start frame, last frame) of its latest object
    latest: list[tuple[int, int, int] | None] = [None] * lanes
    lead_in = max(fps, 12)  # an empty scene first: the counter's background model learns it
    sizes = [int(s) for s in rng.permutation(SIZES)]
    out: list[ObjectPath] = []
    previous_start = lead_in
    for i in range(crossings):
        direction = int(rng.choice([-1, 1]))
        size_px = sizes[i % len(sizes)]
        shape: Shape = "circle" if i % 2 == 0 else "rect"
        pad = math.hypot(size_px, size_px) + 1  # off-screen whatever the shape
        best: tuple[int, int] | None = None
        for lane in range(lanes):
            earliest = max(lead_in, previous_start + 2)
            prior = latest[lane]
            if prior is not None:
                p_dir, p_start, p_last = prior
                follow = p_start + math.ceil(HEADWAY / speeds[lane])
                earliest = max(earliest, follow if p_dir == direction else p_last + 1)
            if best is None or earliest < best[1]:
                best = (lane, earliest)
        assert best is not None
        lane, start = best
        lo, hi = _ray_span(points[lane], normal, size, pad)
        a = (points[lane][0] + normal[0] * lo, points[lane][1] + normal[1] * lo)
        b = (points[lane][0] + normal[0] * hi, points[lane][1] + normal[1] * hi)
        waypoints = (a, b) if direction > 0 else (b, a)
        obj = ObjectPath(waypoints, speeds[lane], start, shape, size_px, PALETTE[i % len(PALETTE)])
        # it may still be on screen when the clip ends, but well past the line: the crossing is complete
        to_line = -lo if direction > 0 else hi
        done = start + math.ceil((to_line + 2 * pad) / obj.speed)
        if done >= frames:
            raise ValueError(f"{crossings} crossings do not fit in {frames} frames: make the clip longer")
        latest[lane] = (direction, start, obj.last_frame)
        previous_start = start
        out.append(obj)
    return out


def _background(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A static, textured, mostly grey scene: blotches, a fine grain, a few darker slabs and thin lines."""
    w, h = size
    low = rng.uniform(80, 160, (6, 8, 1)) + rng.uniform(-12, 12, (6, 8, 3))
    image = cv2.resize(low.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 10, (h, w, 3)).astype(np.float32), (0, 0), 1.0)
    slabs = np.zeros((h, w), np.float32)  # darker slabs and brighter thin lines, added on top of the rest
    for _ in range(4):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.rectangle(slabs, (x, y), (x + int(rng.integers(20, 70)), y + int(rng.integers(10, 40))), -25.0, -1)
    for _ in range(3):
        cv2.line(slabs, (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h))), 30.0, 1)
    image = image + grain + slabs[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw(frame: np.ndarray, obj: ObjectPath, pos: tuple[float, float], color: tuple[int, int, int]) -> None:
    scale = 1 << _SHIFT
    cx, cy = round(pos[0] * scale), round(pos[1] * scale)
    if obj.shape == "circle":
        cv2.circle(frame, (cx, cy), obj.size * scale, color, -1, cv2.LINE_AA, _SHIFT)
    else:
        hw, hh = obj.size * scale, obj.half_height * scale
        cv2.rectangle(frame, (cx - hw, cy - hh), (cx + hw, cy + hh), color, -1, cv2.LINE_AA, _SHIFT)


def _writer(path: Path, fps: int, size: tuple[int, int]) -> cv2.VideoWriter:
    fourcc = cv2.VideoWriter.fourcc(*"MJPG")
    # OpenCV's built-in MJPEG writer first: always compiled in, and its bytes do not depend on an FFmpeg version
    for api in (cv2.CAP_OPENCV_MJPEG, cv2.CAP_ANY):
        writer = cv2.VideoWriter(str(path), api, fourcc, float(fps), size)
        if writer.isOpened():
            return writer
        writer.release()
    raise RuntimeError(f"cannot write {path}: this OpenCV build has no MJPG .avi writer")


def make_clip(
    path: str | Path,
    *,
    seconds: float,
    fps: int = 15,
    size: tuple[int, int] = (320, 240),
    objects: list[ObjectPath] | None = None,
    crossings: int | None = None,
    noise: float = 0.0,
    seed: int = 0,
    line: tuple[int, int, int, int] | None = None,
) -> ClipTruth:
    """Write an MJPG .avi of shapes crossing `line` (default: vertical at the middle) and return its ground truth.

    Give either `objects` (explicit paths, which may cross several times) or `crossings` (that many objects,
    each crossing once in a seeded direction; 3 when neither is given). `noise` is the sd, in intensity levels,
    of per-pixel Gaussian noise, with a brightness flicker of a third of it per frame. Raises ValueError when the
    crossings do not fit in `seconds` (objects wait for a free lane) or explicit objects come close to each other
    or turn around near the line, RuntimeError when no MJPG writer opens."""
    path = Path(path)
    if path.suffix.lower() != ".avi":
        raise ValueError(f"{path}: an MJPG clip is written as .avi")
    if objects is not None and crossings is not None:
        raise ValueError("give objects or crossings, not both")
    if fps <= 0 or seconds <= 0:
        raise ValueError("fps and seconds must be positive")
    if noise < 0:
        raise ValueError("noise must be >= 0")
    if crossings is not None and crossings < 0:
        raise ValueError("crossings must be >= 0")
    if min(size) < 64:
        raise ValueError(f"size {size!r} is too small for moving shapes")
    width, height = size
    frames = round(seconds * fps)
    counting_line = check_line(line) if line is not None else default_line(size)
    scene_rng = np.random.default_rng([seed, 0])
    noise_rng = np.random.default_rng([seed, 1])  # separate, so noise never changes the scene

    if objects is None:
        objects = _auto_objects(3 if crossings is None else crossings, counting_line, size, frames, fps, scene_rng)
    _check_objects(objects, counting_line, frames)
    colors = [o.color or PALETTE[i % len(PALETTE)] for i, o in enumerate(objects)]

    truths = []
    for i, obj in enumerate(objects):
        crossed = tuple(c for c in _crossings(obj, counting_line) if c.frame < frames)
        seen = [f for f in range(obj.start_frame, min(obj.last_frame, frames - 1) + 1) if obj.visible(f, size)]
        last = min(obj.last_frame, frames - 1)
        truths.append(
            ObjectTruth(i, obj.shape, obj.size, colors[i], obj.speed, obj.start_frame, last, _ranges(seen), crossed)
        )
    all_crossings = [c for t in truths for c in t.crossings]
    motion = _ranges([f for f in range(frames) if any(o.visible(f, size) for o in objects)])

    background = _background(size, scene_rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _writer(path, fps, size)
    try:
        for frame_no in range(frames):
            frame = background.copy()
            for obj, color in zip(objects, colors):
                pos = obj.position(frame_no)
                if pos is not None:
                    _draw(frame, obj, pos, color)
            if noise > 0:
                flicker = noise_rng.normal(0.0, noise / 3)
                grain = noise_rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(noise)
                noisy = frame.astype(np.float32) + grain + np.float32(flicker)
                frame = np.clip(noisy, 0, 255).astype(np.uint8)
            writer.write(frame)
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"the MJPG writer produced no file at {path}")

    return ClipTruth(
        path=str(path),
        frames=frames,
        fps=fps,
        size=(width, height),
        line=counting_line,
        crossings=len(all_crossings),
        left_to_right=sum(c.direction == LEFT_TO_RIGHT for c in all_crossings),
        right_to_left=sum(c.direction == RIGHT_TO_LEFT for c in all_crossings),
        crossing_frames=tuple(sorted(c.frame for c in all_crossings)),
        objects=tuple(truths),
        motion_ranges=motion,
        noise=noise,
        seed=seed,
    )


def make_corrupt(path: str | Path) -> Path:
    """Write a file named and headed like an AVI that is not a video (for error tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(b"RIFF\x00\x10\x00\x00AVI LIST" + junk)
    return path
