"""`key=value` command-line options, shared by the full CLI and the light worker command."""

from __future__ import annotations

from typing import Any

from clusterai.errors import BadInput


def parse_pairs(what: str, pairs: list[str], numbers: bool = False) -> dict[str, Any]:
    """`key=value` options (--label region=eu, --requires GPU=1) as a mapping."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"{what}: expected key=value, got {pair!r}")
        if numbers:
            try:
                out[key.strip()] = float(value)
            except ValueError:
                raise BadInput(f"{what}: {key.strip()} must be a number, got {value!r}") from None
        else:
            out[key.strip()] = value.strip()
    return out
