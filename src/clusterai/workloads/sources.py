"""Opening a video source (a file, or an http(s)/rtsp URL) for the video and camera workloads: one
place for the checks OpenCV does not make and the timeouts that keep a dead camera from hanging a
worker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import cv2


def describe(source: str) -> str:
    """The source for messages, without the password an RTSP/HTTP URL may carry."""
    return re.sub(r"://[^/@]*@", "://***@", source)


def is_url(source: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


def open_video(source: str, timeout_s: float = 15.0) -> cv2.VideoCapture:
    """An opened capture, or ValueError naming the source (never a silent unopened capture)."""
    import cv2  # here, so that naming and checking sources (the CLI) needs no OpenCV

    if not is_url(source):
        # OpenCV only logs a warning and returns an unopened capture for these
        path = Path(source)
        if not path.exists():
            raise ValueError(f"video source {describe(source)!r} does not exist (no such file)")
        if not path.is_file():
            raise ValueError(f"video source {describe(source)!r} is not a file")
        if path.stat().st_size == 0:
            raise ValueError(f"video source {describe(source)!r} is empty")
    # FFmpeg explicitly: CAP_ANY would also try the image-sequence and camera backends on a plain string
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    ms = int(timeout_s * 1000)
    cap = cv2.VideoCapture(source, backend, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"cannot open video source {describe(source)!r}: not a video, an unsupported format, "
                         "or unreachable")
    return cap
