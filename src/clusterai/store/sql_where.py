"""The WHERE clause of a newest-first listing: equality filters that are set, and a keyset cursor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def listing_where(filters: Iterable[tuple[str, Any]], before_id: int | None) -> tuple[str, list[Any]]:
    """("WHERE a=? AND id<?" or "", params) for the filters whose value is not None."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in filters:
        if value is not None:
            where.append(f"{column}=?")
            params.append(value)
    if before_id is not None:
        where.append("id<?")
        params.append(before_id)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params
