"""Ollama's `keep_alive`: how long a model stays loaded after a request. Ollama takes a Go duration
("5m", "1h30m", "300ms"), a number of seconds, 0 (unload now) or a negative value (keep it loaded
for good); the gateway and clusterai's model server read it the same way."""

from __future__ import annotations

import math
import re
from typing import Any

from clusterai.errors import BadInput

FOREVER = math.inf
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: Any) -> float:
    """Seconds to stay loaded: 0 unloads, FOREVER for a negative value; BadInput for anything else."""
    if isinstance(value, bool):
        raise BadInput(f"keep_alive {value!r}: expected a duration such as '5m', seconds, 0 or a negative number")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text)
            parts = _PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise BadInput(f"keep_alive {value!r}: expected a duration such as '5m', '1h30m' or '300ms', "
                               "seconds, 0 or a negative number") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise BadInput(f"keep_alive {value!r}: expected a duration such as '5m', seconds, 0 or a negative number")
    if math.isnan(seconds):
        raise BadInput("keep_alive is not a number")
    return FOREVER if seconds < 0 else seconds


def as_ollama(seconds: float) -> str | int:
    """What to send an Ollama server for these seconds."""
    if seconds == FOREVER:
        return -1
    if seconds == 0:
        return 0
    return f"{seconds:g}s"
