"""Opening a video source (a file, or an http(s)/rtsp/rtmp URL) for the video and camera workloads:
the one place where a source named by a submitter is checked against `media.sources`
(clusterai.core.media_policy) and handed to FFmpeg, with the timeouts that keep a dead camera from
hanging a worker.

FFmpeg never sees the submitter's string. A local source is given as the real path that passed the
check (a plain string could carry `concat:`, `subfile:` or another protocol prefix); a URL is
rebuilt from its checked parts. While it opens, OPENCV_FFMPEG_CAPTURE_OPTIONS (which OpenCV reads at
every open) limits FFmpeg to that source's own protocols, to container formats that do not open
other files or URLs (no HLS/DASH playlists, no concat lists), and to no HTTP redirects.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clusterai.core.media_policy import SourcePolicy, current_policy, set_policy, use_policy

if TYPE_CHECKING:
    import cv2

__all__ = ["SourcePolicy", "current_policy", "describe", "digest", "is_url", "open_video", "resolve",
           "set_policy", "unreadable", "use_policy"]

CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
# What FFmpeg may open for each kind of source, nested opens included (protocol_whitelist is
# inherited by every context a demuxer opens).
PROTOCOLS = {"file": "file", "http": "http,tcp", "https": "https,tls,tcp", "rtsp": "rtsp,rtp,udp,tcp",
             "rtsps": "rtsps,rtp,tls,tcp,udp", "rtmp": "rtmp,tcp"}
# Container formats that read only the stream they were opened on: no hls, dash, concat, image2
# sequences from other folders, ffmetadata, sdp (which points FFmpeg at any address) or lavfi.
# image2 (a still image) and tty (text) are here so that those files get their own message.
FORMATS = ("avi,mov,matroska,webm,mpegts,mpeg,mpegvideo,m4v,h264,hevc,flv,live_flv,asf,ogg,mjpeg,mpjpeg,"
           "ivf,nut,mxf,dv,yuv4mpegpipe,rm,gif,image2,jpeg_pipe,png_pipe,webp_pipe,tty,rtsp")
_CHUNK = 1 << 20
# setenv, open, restore: tasks run in threads and the variable is the whole process's
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Target:
    """What is handed to FFmpeg for a source that passed the check."""

    uri: str  # the real path, or the rebuilt URL
    local: bool
    options: str  # OPENCV_FFMPEG_CAPTURE_OPTIONS while it opens


def describe(source: str) -> str:
    """The source for messages, without the password an RTSP/HTTP URL may carry."""
    return re.sub(r"://[^/@]*@", "://***@", source)


def is_url(source: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


def unreadable(source: str) -> ValueError:
    """The one error for a source refused by media.sources, missing, a folder or not openable:
    nothing in it tells those apart, so a submitter cannot map the worker's disk or network."""
    return ValueError(f"video source {describe(source)!r} cannot be read: not found, not a readable video "
                      "file, or not allowed by media.sources")


def resolve(source: str, policy: SourcePolicy | None = None) -> Target:
    """The checked target of a source under `policy` (default: the one in force), or `unreadable`."""
    policy = policy or current_policy()
    if not isinstance(source, str):
        raise unreadable(str(source))
    if is_url(source):
        url = policy.allowed_url(source)
        if url is None:
            raise unreadable(source)
        scheme = url.split("://", 1)[0]
        options = f"protocol_whitelist;{PROTOCOLS[scheme]}|format_whitelist;{FORMATS}"
        if scheme.startswith("http"):
            # FFmpeg follows a redirect to any host by default; this FFmpeg option turns that off
            options += "|max_redirects;0"
        if scheme.startswith("rtsp"):
            options += "|rtsp_transport;tcp"  # what OpenCV sets itself when the variable is unset
        return Target(url, False, options)
    path = policy.local_file(source)
    if path is None:
        raise unreadable(source)
    return Target(path, True, f"protocol_whitelist;file|format_whitelist;{FORMATS}")


def digest(source: str, policy: SourcePolicy | None = None) -> str | None:
    """SHA-256 of a local source's bytes (streamed), checked like an open; None for a URL, whose
    stream has no stable bytes."""
    target = resolve(source, policy)
    if not target.local:
        return None
    sha = hashlib.sha256()
    try:
        with open(target.uri, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
    except OSError:
        raise unreadable(source) from None
    return sha.hexdigest()


def open_video(source: str, timeout_s: float = 15.0) -> cv2.VideoCapture:
    """An opened capture of an allowed source, or ValueError naming the source (never a silent
    unopened capture)."""
    import cv2  # here, so that naming and checking sources (the CLI) needs no OpenCV

    target = resolve(source)
    # FFmpeg explicitly: CAP_ANY would also try the image-sequence and camera backends on a plain string
    backend = cv2.CAP_FFMPEG if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else cv2.CAP_ANY
    ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    with _OPEN_LOCK:
        before = os.environ.get(CAPTURE_OPTIONS_ENV)
        # an operator's own options first; ours after them win (FFmpeg keeps the last of a key)
        os.environ[CAPTURE_OPTIONS_ENV] = f"{before}|{target.options}" if before else target.options
        try:
            cap = cv2.VideoCapture(target.uri, backend, params)
        finally:
            if before is None:
                os.environ.pop(CAPTURE_OPTIONS_ENV, None)
            else:
                os.environ[CAPTURE_OPTIONS_ENV] = before
    if not cap.isOpened():
        cap.release()
        raise unreadable(source)
    return cap
