"""Ollama's /api/show, without where a backend keeps its files.

Ollama answers with a modelfile whose FROM (and ADAPTER) lines are paths on the backend's disk
(`FROM /usr/share/ollama/.ollama/models/blobs/sha256-...`), and other servers may put paths
elsewhere in the answer. A submitter has no business knowing the head's or the workers' file
layout, so the gateway gives everyone but an admin the answer with each FROM naming the model
instead, ADAPTER lines left out and any other path-like string emptied. What Ollama's clients use
(details, capabilities, parameters, template, model_info) is kept."""

from __future__ import annotations

import json
import re
from typing import Any

_PATH = re.compile(r"^(/|~|\.{1,2}/|[A-Za-z]:[\\/]|\\\\|file:)")
_TEXTS = frozenset({"template", "parameters", "license", "system", "modelfile"})  # prose, not names


def without_paths(content: bytes, model: str) -> bytes:
    """The /api/show answer with no file paths; an answer that is not a JSON object stays as it is
    (it is an error, which names no path of ours)."""
    try:
        answer = json.loads(content)
    except ValueError:
        return content
    if not isinstance(answer, dict):
        return content
    if isinstance(answer.get("modelfile"), str):
        answer["modelfile"] = modelfile_without_paths(answer["modelfile"], model)
    return json.dumps(_scrub(answer)).encode()


def modelfile_without_paths(text: str, model: str) -> str:
    lines = []
    for line in text.splitlines():
        word = line.split(maxsplit=1)[0].upper() if line.strip() else ""
        if word == "FROM":
            lines.append(f"FROM {model}")
        elif word != "ADAPTER":
            lines.append(line)
    return "\n".join(lines)


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, key) for v in value]
    if isinstance(value, str) and key not in _TEXTS and _PATH.match(value):
        return ""
    return value
