"""Camera count series: a counting task reports its totals at every checkpoint; the coordinator
stores them (table `counts`), so they can be read while the job runs (`/api/v1/counts`).

Reports travel over Dask's event stream (worker -> scheduler -> the coordinator's client), so
they need no store access on the worker. Only the attempt that holds the job's lease is heard: a
late report from a worker that lost its job is dropped. A resumed job reports the frame of its
checkpoint again; the store keeps the first report of each frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from clusterai.core.model import CountPoint
from clusterai.errors import StoreUnavailable
from clusterai.store.protocol import JobStore

_MAX_BUFFERED = 100_000
log = logging.getLogger("clusterai.counts")


class CountCollector:
    def __init__(self, store: JobStore, holds_lease: Callable[[int, int], bool]):
        self.store = store
        self.holds_lease = holds_lease
        self._buffer: list[CountPoint] = []

    def on_event(self, event: tuple[float, Any]) -> None:
        """Dask's topic handler, on the coordinator's loop."""
        _, msg = event
        try:
            point = CountPoint(job_id=int(msg["job_id"]), camera=str(msg["camera"])[:200], frame=int(msg["frame"]),
                               video_time=float(msg["video_time"]), at=float(msg["at"]), total=int(msg["total"]),
                               left_to_right=int(msg["left_to_right"]), right_to_left=int(msg["right_to_left"]))
            attempt = int(msg["attempt"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignored a malformed count report: %r", msg)
            return
        if not self.holds_lease(point.job_id, attempt):
            log.info("ignored a count report from job %d attempt %d, which no longer holds the lease",
                     point.job_id, attempt)
            return
        self._buffer.append(point)
        self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        try:
            self.store.add_count_points(self._buffer)
        except StoreUnavailable as exc:
            log.warning("store unavailable; keeping %d count reports: %s", len(self._buffer), exc)
            del self._buffer[:-_MAX_BUFFERED]
            return
        self._buffer = []
