"""Long id lists in pieces: one SQL `IN (...)` or one look at job states per piece, so a call on
100,000 ids neither builds one enormous statement nor exceeds SQLite's limit on parameters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
ID_CHUNK = 500


def chunked(items: Sequence[T], size: int = ID_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
