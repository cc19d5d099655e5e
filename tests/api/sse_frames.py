"""A small Server-Sent Events reader for the API tests: frames parsed by hand from the lines of an
httpx stream (id:, event:, data:, a blank line ends a frame, lines starting with ':' are comments)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Frame:
    id: int | None
    event: str
    data: Any
    raw: list[str] = field(default_factory=list)


def frames(lines: Iterator[str]) -> Iterator[Frame]:
    """Frames that carry data, in order; a frame with no data (a bare `retry:`) is not dispatched."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    raw: list[str] = []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                yield Frame(int(event_id) if event_id is not None else None, event, json.loads(text), raw)
            event_id, event, data, raw = None, "message", [], []
            continue
        raw.append(line)
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name != "retry":
            raise AssertionError(f"unexpected SSE field {name!r} in line {line!r}")


class EventStream:
    """An open /api/v1/events stream; `next()` gives the next frame or fails after the read timeout."""

    def __init__(self, response: httpx.Response):
        self.response = response
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        self._frames = frames(response.iter_lines())

    def next(self) -> Frame:
        return next(self._frames)

    def until(self, done: Callable[[Frame], bool], limit: int = 10_000) -> list[Frame]:
        """Frames up to and including the first for which `done` is true."""
        out = []
        for _ in range(limit):
            frame = self.next()
            out.append(frame)
            if done(frame):
                return out
        raise AssertionError(f"no matching frame in {limit}")


def open_events(client: httpx.Client, *, headers: dict[str, str] | None = None,
                params: dict[str, Any] | None = None, read_timeout: float = 5.0) -> Any:
    """A context manager for the stream: `with open_events(c) as s:`; a frame that does not come
    within `read_timeout` seconds raises httpx.ReadTimeout (a failure, not a hang)."""
    import contextlib

    @contextlib.contextmanager
    def opened() -> Iterator[EventStream]:
        timeout = httpx.Timeout(10.0, read=read_timeout)
        with client.stream("GET", "/api/v1/events", headers=headers, params=params, timeout=timeout) as r:
            yield EventStream(r)

    return opened()
