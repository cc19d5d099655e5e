"""The autoscaler's tables in the SQL store: the decision log (one row per change of a profile's
size, and why), and small JSON documents by key: the operator's override (`clusterai autoscale
enable|disable`), written by the API or CLI and read by the head, and the head's last report
(workers and desired per profile, recent samples), read by the API, the CLI and the metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

DECISIONS_KEPT = 10_000


class AutoscaleTables:
    """Mixed into SqlStore, whose `_write` and `_read` it uses."""

    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]

    def add_scale_decisions(self, rows: Sequence[Mapping[str, Any]], kept: int = DECISIONS_KEPT) -> None:
        """Append decision rows ({"at", "profile", "from", "to", "reason", "inputs"}); only the
        newest `kept` stay."""
        if not rows:
            return
        with self._write() as cur:
            cur.executemany(
                "INSERT INTO scale_decisions (at, profile, from_workers, to_workers, reason, inputs)"
                " VALUES (?,?,?,?,?,?)",
                [(float(r["at"]), str(r["profile"]), int(r["from"]), int(r["to"]), str(r["reason"]),
                  json.dumps(r.get("inputs") or {}, sort_keys=True)) for r in rows])
            cur.execute("DELETE FROM scale_decisions WHERE id <= (SELECT MAX(id) FROM scale_decisions) - ?",
                        (kept,))

    def list_scale_decisions(self, *, limit: int = 100, profile: str | None = None,
                             since: float | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if profile is not None:
            where.append("profile = ?")
            params.append(profile)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        rows = self._read(
            "SELECT id, at, profile, from_workers, to_workers, reason, inputs FROM scale_decisions"
            f" WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [{"id": int(i), "at": float(at), "profile": p, "from": int(f), "to": int(t), "reason": reason,
                 "inputs": json.loads(inputs)} for i, at, p, f, t, reason, inputs in rows]

    def put_autoscale(self, key: str, value: Mapping[str, Any], now: float) -> None:
        with self._write() as cur:
            cur.execute("INSERT INTO autoscale (key, value, updated_at) VALUES (?,?,?) ON CONFLICT(key)"
                        " DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                        (key, json.dumps(dict(value), sort_keys=True), now))

    def get_autoscale(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The document under `key` and when it was written; None when there is none."""
        rows = self._read("SELECT value, updated_at FROM autoscale WHERE key = ?", (key,))
        return (json.loads(rows[0][0]), float(rows[0][1])) if rows else None
