"""How deep JSON may nest: request bodies at the API and the gateway, and job payloads.

64 levels. Real payloads, pipeline definitions and LLM requests (messages, content parts, a tool's
JSON schema) nest a handful of levels, rarely twenty; 64 leaves room for all of them and stays far
below Python's recursion limit (1,000), which the code that later handles a stored value runs into
one level at a time: canonical JSON, pydantic, a task's own code on a worker. Without a bound a
body 100,000 deep broke the parser (a 500), and one 5,000 deep parsed but broke later.

Standard library only: the light model server uses it.
"""

from __future__ import annotations

import json
from typing import Any

from clusterai.errors import NestedTooDeep

MAX_DEPTH = 64


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when containers (dicts, lists, tuples) nest more than `limit` levels. Recursion is
    bounded by `limit` itself, and only containers are descended into: about 1 µs for a small payload."""
    if limit <= 0:
        return isinstance(value, (dict, list, tuple))
    kind = type(value)
    if kind is dict:
        children: Any = value.values()
    elif kind is list or kind is tuple:
        children = value
    else:
        return False
    for child in children:
        t = type(child)
        if (t is dict or t is list or t is tuple) and deeper_than(child, limit - 1):
            return True
    return False


def loads(raw: bytes | str, what: str = "JSON body", limit: int = MAX_DEPTH) -> Any:
    """json.loads with the depth bound: NestedTooDeep past it (json's ValueError for malformed text)."""
    try:
        value = json.loads(raw)
    except RecursionError:  # deeper than the parser's own recursion allows: past our limit anyway
        raise NestedTooDeep(limit, what) from None
    # fewer opening brackets than the limit cannot nest past it: most bodies skip the walk
    text = raw.encode() if isinstance(raw, str) else raw
    if text.count(b"[") + text.count(b"{") > limit and deeper_than(value, limit):
        raise NestedTooDeep(limit, what)
    return value
