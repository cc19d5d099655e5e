"""camera.count: line counting on synthetic clips with known ground truth, checkpoints and resume."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import pytest

from clusterai.core.media_policy import use_policy
from clusterai.workloads.counting import (
    LEFT_TO_RIGHT,
    RIGHT_TO_LEFT,
    CounterConfig,
    LineCounter,
    count_stream,
    default_line,
    signed_distance,
)
from clusterai.workloads.synth import ClipTruth, ObjectPath, make_clip, make_corrupt

# A scene written by hand: a circle that crosses and comes back, a diagonal rectangle, and a circle that stops
# short of the line and turns back (which must not count).
BACK_AND_FORTH = [
    ObjectPath(((-20.0, 60.0), (240.0, 60.0), (-20.0, 60.0)), speed=9.0, start_frame=15, size=12),
    ObjectPath(((340.0, 160.0), (-20.0, 200.0)), speed=7.0, start_frame=20, shape="rect", size=14),
    ObjectPath(((-20.0, 110.0), (130.0, 110.0), (-20.0, 110.0)), speed=8.0, start_frame=18, size=9),
]

CLEAN = {
    "three": {"seconds": 4, "crossings": 3, "seed": 1},
    "six": {"seconds": 6, "crossings": 6, "seed": 2},
    "ten": {"seconds": 8, "crossings": 10, "seed": 3},
    "horizontal": {"seconds": 5, "crossings": 5, "seed": 4, "line": (0, 120, 319, 120)},
    "diagonal": {"seconds": 6, "crossings": 6, "seed": 5, "line": (40, 230, 280, 10)},
    "back_and_forth": {"seconds": 6, "objects": BACK_AND_FORTH},
    # a segment over the lower half only: the crossing at y=60 is outside it and must not count
    "segment": {"seconds": 6, "objects": BACK_AND_FORTH, "line": (160, 239, 160, 90)},
}
NOISY = {
    "three_sd8": {"seconds": 4, "crossings": 3, "seed": 11, "noise": 8.0},
    "six_sd10": {"seconds": 6.5, "crossings": 6, "seed": 12, "noise": 10.0},
    "eight_sd12": {"seconds": 7, "crossings": 8, "seed": 13, "noise": 12.0},
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClipTruth]:
    root = tmp_path_factory.mktemp("clips")
    specs: dict[str, dict[str, Any]] = {**CLEAN, **NOISY}
    return {name: make_clip(root / f"{name}.avi", **spec) for name, spec in specs.items()}


@pytest.fixture(autouse=True)
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """media.sources: every folder these tests write clips in, as a worker's cluster.yaml would say."""
    with use_policy([str(tmp_path_factory.getbasetemp())]):
        yield


def _count(truth: ClipTruth, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("checkpoint_every_s", 1.0)
    return count_stream(truth.path, line=truth.line, **kwargs)


def _json(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state))  # what a checkpoint store gives back


def _outcome(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("total", LEFT_TO_RIGHT, RIGHT_TO_LEFT, "frame_index", "time_series", "video_seconds")
    return {k: result[k] for k in keys}


# --- the synthetic clips themselves ---


def test_truth_describes_the_scene(clips: dict[str, ClipTruth]) -> None:
    truth = clips["back_and_forth"]
    assert truth.line == default_line((320, 240)) == (160, 239, 160, 0)
    assert (truth.crossings, truth.left_to_right, truth.right_to_left) == (3, 1, 2)
    assert [len(o.crossings) for o in truth.objects] == [2, 1, 0]
    assert [c.direction for c in truth.objects[0].crossings] == [LEFT_TO_RIGHT, RIGHT_TO_LEFT]
    assert truth.motion_ranges[0][0] > 10  # an empty scene first, then motion
    assert len(truth.crossing_frames) == truth.crossings
    assert clips["segment"].crossings == 1  # only the rectangle at y=160-200 crosses the segment
    data = json.loads(truth.to_json())
    assert data["crossings"] == 3 and data["size"] == [320, 240] and truth.to_dict() == data
    for name, spec in CLEAN.items():
        if "crossings" in spec:
            assert clips[name].crossings == spec["crossings"], name


def test_make_clip_is_deterministic(tmp_path: Path) -> None:
    a = make_clip(tmp_path / "a.avi", seconds=3.5, crossings=2, seed=7, noise=10.0)
    b = make_clip(tmp_path / "b.avi", seconds=3.5, crossings=2, seed=7, noise=10.0)
    c = make_clip(tmp_path / "c.avi", seconds=3.5, crossings=2, seed=8, noise=10.0)
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    assert {**a.to_dict(), "path": ""} == {**b.to_dict(), "path": ""}
    assert Path(a.path).read_bytes() != Path(c.path).read_bytes()
    clean = make_clip(tmp_path / "clean.avi", seconds=3.5, crossings=2, seed=7)
    assert {**clean.to_dict(), "path": "", "noise": 10.0} == {**a.to_dict(), "path": ""}  # noise never moves the scene


def test_make_clip_rejects_ambiguous_scenes(tmp_path: Path) -> None:
    near_line = ObjectPath(((-20.0, 60.0), (155.0, 60.0)), speed=5.0)
    with pytest.raises(ValueError, match="within"):
        make_clip(tmp_path / "x.avi", seconds=2, objects=[near_line])
    head_on = [
        ObjectPath(((-20.0, 100.0), (340.0, 100.0)), speed=6.0),
        ObjectPath(((340.0, 100.0), (-20.0, 100.0)), speed=6.0),
    ]
    with pytest.raises(ValueError, match="too close"):
        make_clip(tmp_path / "x.avi", seconds=4, objects=head_on)
    with pytest.raises(ValueError, match="do not fit"):
        make_clip(tmp_path / "x.avi", seconds=2, crossings=12)
    with pytest.raises(ValueError, match=".avi"):
        make_clip(tmp_path / "x.mp4", seconds=2)


# --- accuracy ---


@pytest.mark.parametrize("name", list(CLEAN))
def test_exact_on_clean_clips(clips: dict[str, ClipTruth], name: str) -> None:
    truth = clips[name]
    result = _count(truth)
    assert (result["total"], result[LEFT_TO_RIGHT], result[RIGHT_TO_LEFT]) == (
        truth.crossings,
        truth.left_to_right,
        truth.right_to_left,
    )
    assert result["frames_processed"] == result["frame_index"] == truth.frames
    assert result["end_of_stream"] is True
    assert result["time_series"][0] == [0.0, 0]
    assert result["time_series"][-1] == [truth.frames / truth.fps, truth.crossings]
    counts = [c for _, c in result["time_series"]]
    assert counts == sorted(counts)
    # a crossing is counted a few frames after the centroid passes the line (the margin), never before
    first = min(truth.crossing_frames, default=0)
    assert all(t >= first / truth.fps for t, c in result["time_series"] if c > 0)


@pytest.mark.parametrize("name", list(NOISY))
def test_within_one_on_noisy_clips(clips: dict[str, ClipTruth], name: str) -> None:
    truth = clips[name]
    result = _count(truth)
    assert abs(result["total"] - truth.crossings) <= 1
    assert abs(result[LEFT_TO_RIGHT] - truth.left_to_right) <= 1
    assert abs(result[RIGHT_TO_LEFT] - truth.right_to_left) <= 1


# --- checkpoints and resume ---


def test_checkpoints_fall_on_video_time(clips: dict[str, ClipTruth]) -> None:
    truth = clips["six"]  # 90 frames at 15 fps
    states: list[dict[str, Any]] = []
    result = _count(truth, checkpoint_every_s=2.0, on_checkpoint=states.append)
    assert [s["frame_index"] for s in states] == [30, 60, 90]  # the last is also the end: not repeated
    assert result["checkpoints"] == 3
    assert states[-1]["total"] == result["total"]
    partial: list[dict[str, Any]] = []
    _count(truth, checkpoint_every_s=2.0, on_checkpoint=partial.append, max_frames=40)
    assert [s["frame_index"] for s in partial] == [30, 40]  # and once at the end, wherever it falls


def _on_the_line(truth: ClipTruth, state: dict[str, Any]) -> bool:
    return any(abs(signed_distance(truth.line, t["x"], t["y"])) < 12 for t in state["tracks"])


def _pending(truth: ClipTruth, state: dict[str, Any]) -> bool:
    """A track whose centroid is over the line but whose side is not committed yet (within the margin)."""
    return any(t["side"] and t["side"] * signed_distance(truth.line, t["x"], t["y"]) < 0 for t in state["tracks"])


@pytest.mark.parametrize("name", ["six", "back_and_forth", "six_sd10"])
def test_resume_equals_an_uninterrupted_run(clips: dict[str, ClipTruth], name: str) -> None:
    truth = clips[name]
    states: list[dict[str, Any]] = []
    # a checkpoint after every frame: any of them is a state a crashed worker may have left behind
    full = _count(truth, checkpoint_every_s=1 / truth.fps, on_checkpoint=states.append)
    at = {s["frame_index"]: _json(s) for s in states}
    assert sorted(at) == list(range(1, truth.frames + 1))
    # a cut between crossings; cuts as the first and the last crossing objects reach the line and just past it
    # (counted or not yet, depending on the margin); and one with a crossing pending, if the clip has one
    first, last = truth.crossing_frames[0], truth.crossing_frames[-1]
    cuts = [truth.frames // 2, first, first + 1, last, last + 1]
    cuts += [k for k in sorted(at) if _pending(truth, at[k])][:1]
    assert sum(_on_the_line(truth, at[k]) for k in cuts) >= 3
    for k in cuts:
        resumed = _count(truth, state=at[k])
        assert (resumed["start_frame"], resumed["frames_processed"]) == (k, truth.frames - k)
        assert _outcome(resumed) == _outcome(full), f"resumed at frame {k}"


def test_resume_at_the_end_and_past_it(clips: dict[str, ClipTruth]) -> None:
    truth = clips["three"]
    states: list[dict[str, Any]] = []
    full = _count(truth, on_checkpoint=states.append)
    again = _count(truth, state=_json(states[-1]))
    assert again["frames_processed"] == 0 and again["total"] == full["total"] == truth.crossings


def test_state_round_trips(clips: dict[str, ClipTruth]) -> None:
    truth = clips["six"]
    taken: list[dict[str, Any]] = []
    _count(truth, checkpoint_every_s=100.0, on_checkpoint=taken.append, max_frames=truth.crossing_frames[0] + 1)
    state = _json(taken[-1])
    assert state["tracks"], "an object on screen has a track"
    assert LineCounter.from_state(state).state() == state
    with pytest.raises(ValueError, match="malformed"):
        LineCounter.from_state({k: v for k, v in state.items() if k != "tracks"})
    with pytest.raises(ValueError, match="differs"):
        count_stream(truth.path, line=(100, 0, 100, 239), state=state)
    with pytest.raises(ValueError, match="differs"):
        count_stream(truth.path, state=state, config=CounterConfig(min_area=50))


def test_live_restart_keeps_totals_and_drops_tracks(clips: dict[str, ClipTruth]) -> None:
    truth = clips["three"]
    taken: list[dict[str, Any]] = []
    _count(truth, checkpoint_every_s=100.0, on_checkpoint=taken.append, max_frames=truth.frames)
    state = _json(taken[-1])
    # a camera cannot replay its past: start from the live position (here: the clip again), totals carry on
    again = _count(truth, state=state, start_frame=0)
    assert again["total"] == 2 * truth.crossings
    assert again["frame_index"] == 2 * truth.frames  # the counter's clock ran on
    times = [t for t, _ in again["time_series"]]
    assert times == sorted(times)


# --- bad sources ---


def test_corrupt_file_fails_fast(tmp_path: Path) -> None:
    bad = make_corrupt(tmp_path / "corrupt.avi")
    started = time.monotonic()
    with pytest.raises(ValueError, match="corrupt.avi"):
        count_stream(bad, line=(160, 239, 160, 0), checkpoint_every_s=1.0, on_checkpoint=lambda s: None)
    assert time.monotonic() - started < 5


def test_truncated_clip_fails_fast(clips: dict[str, ClipTruth], tmp_path: Path) -> None:
    stub = tmp_path / "stub.avi"
    stub.write_bytes(Path(clips["three"].path).read_bytes()[:2000])  # the header, no frame
    started = time.monotonic()
    with pytest.raises(ValueError, match="stub.avi"):
        count_stream(stub, checkpoint_every_s=1.0)
    assert time.monotonic() - started < 5


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.avi' cannot be read: not found, not a readable video file"):
        count_stream(tmp_path / "nope.avi", checkpoint_every_s=1.0)


def test_url_passwords_stay_out_of_errors() -> None:
    # port 9 (discard) on loopback, allowed: the open is tried and refused at once
    with use_policy(["http://127.0.0.1:9"]), pytest.raises(ValueError) as caught:
        count_stream("http://user:secret@127.0.0.1:9/stream.mjpg", checkpoint_every_s=1.0, open_timeout_s=2.0)
    assert "secret" not in str(caught.value) and "127.0.0.1:9" in str(caught.value)


# --- MJPEG over HTTP ---


def _ffmpeg() -> bool:
    info = cv2.getBuildInformation()
    return any(line.strip().startswith("FFMPEG:") and "YES" in line for line in info.splitlines())


@pytest.fixture
def mjpeg_server(clips: dict[str, ClipTruth]) -> Iterator[str]:
    """Serve the 'six' clip's frames as multipart/x-mixed-replace, the way IP cameras do."""
    capture = cv2.VideoCapture(clips["six"].path)
    parts = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        parts.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    capture.release()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for jpeg in parts:
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the reader went away: nothing to do

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows stderr on failures
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.skipif(not _ffmpeg(), reason="this OpenCV build has no FFMPEG backend: it cannot read MJPEG over HTTP")
def test_mjpeg_over_http_counts_like_the_file(clips: dict[str, ClipTruth], mjpeg_server: str) -> None:
    truth = clips["six"]
    from_file = _count(truth)
    states: list[dict[str, Any]] = []
    # the stream does not know its frame rate: say it, so the time series lines up with the file's
    with use_policy([mjpeg_server.rsplit("/", 1)[0]]):  # http://127.0.0.1:PORT
        streamed = count_stream(
            mjpeg_server, line=truth.line, fps=truth.fps, checkpoint_every_s=2.0, on_checkpoint=states.append
        )
    assert _outcome(streamed) == _outcome(from_file)
    assert streamed["source"] == mjpeg_server
    assert [s["frame_index"] for s in states] == [30, 60, 90]
