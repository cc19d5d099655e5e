"""Ollama's `keep_alive`: how long a model stays loaded after a request. Ollama takes a Go duration
("5m", "1h30m", "300ms"), a number of seconds, 0 (unload now) or a negative value (keep it loaded
for good); the gateway, clusterai's model server and their command lines read it the same way."""

from __future__ import annotations

import math
import re
from typing import Any

from clusterai.errors import BadInput

FOREVER = math.inf
OLLAMA_KEEP_ALIVE = 300.0  # Ollama's default: what a server does with a request that names none
GO_MAX_DURATION = (2**63 - 1) / 1e9  # Ollama's "forever" in expires_at: Go's longest duration, ~292 years
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d*\.?\d+)(ns|us|µs|μs|ms|s|m|h)")


def keep_alive_seconds(raw: Any) -> float:
    """Seconds a model stays loaded after a request: 0 unloads, FOREVER for a negative value;
    BadInput for anything else."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise BadInput(_bad(raw))
    seconds = _duration(raw.strip()) if isinstance(raw, str) else float(raw)
    if seconds is None or math.isnan(seconds):
        raise BadInput(_bad(raw))
    return FOREVER if seconds < 0 else seconds


def _duration(text: str) -> float | None:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    try:
        return sign * float(body)  # a bare number: seconds, as OLLAMA_KEEP_ALIVE reads it
    except ValueError:
        pass
    total, at = 0.0, 0
    for part in _PART.finditer(body):
        if part.start() != at:
            return None
        total += float(part[1]) * _UNITS[part[2]]
        at = part.end()
    return sign * total if body and at == len(body) else None


def _bad(raw: Any) -> str:
    return (f"invalid keep_alive {raw!r}: expected a duration such as \"5m\", \"30s\" or \"1h30m\", or a number "
            "of seconds (0 unloads the model, a negative value keeps it loaded)")


def as_ollama(seconds: float) -> str | int:
    """What to send an Ollama server for these seconds."""
    if seconds == FOREVER:
        return -1
    if seconds == 0:
        return 0
    return f"{seconds:g}s"
