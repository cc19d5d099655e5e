"""API tokens and the audit log in the job store (SQLite or PostgreSQL). Tokens are kept as hashes only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from clusterai.core.model import AuditEntry, TokenRecord
from clusterai.errors import BadInput

_TOKEN_COLUMNS = "id, name, role, secret_hash, created_at, created_by, expires_at, revoked_at, uses_left"


class AccessTables:
    """Mixed into SqlStore, whose `_write` and `_read` it uses."""

    _write: Callable[[], AbstractContextManager[Any]]
    _read: Callable[..., list[tuple[Any, ...]]]

    def add_token(self, record: TokenRecord) -> None:
        with self._write() as cur:
            cur.execute(
                f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (record.id, record.name, record.role, record.secret_hash, record.created_at,
                 record.created_by, record.expires_at, record.revoked_at, record.uses_left),
            )

    def get_token(self, token_id: str) -> TokenRecord | None:
        rows = self._read(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id=?", (token_id,))
        return TokenRecord(*rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        return [TokenRecord(*r) for r in self._read(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at")]

    def use_token(self, token_id: str, now: float) -> bool:
        """Spend one use of a join token, if it has one left and is neither revoked nor expired:
        one statement, so two machines racing for a token's last use cannot both get it."""
        with self._write() as cur:
            row = cur.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id=? AND uses_left > 0 AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > ?) RETURNING id", (token_id, now)).fetchone()
            return row is not None

    def revoke_token(self, token_id: str, now: float) -> TokenRecord:
        with self._write() as cur:
            cur.execute("UPDATE tokens SET revoked_at=COALESCE(revoked_at, ?) WHERE id=?", (now, token_id))
            if cur.rowcount == 0:
                raise BadInput(f"no token with id {token_id!r}")
        record = self.get_token(token_id)
        assert record is not None
        return record

    def revoke_certificate(self, serial: str, node: str | None, role: str | None, now: float,
                           by: str | None = None) -> bool:
        """Refuse a certificate from now on; False when it was refused already."""
        with self._write() as cur:
            cur.execute("INSERT INTO revoked_certs (serial, node, role, revoked_at, revoked_by) VALUES (?,?,?,?,?)"
                        " ON CONFLICT (serial) DO NOTHING", (serial, node, role, now, by))
            return bool(cur.rowcount)

    def revoked_certificates(self) -> dict[str, dict[str, Any]]:
        """Serial -> {node, role, revoked_at, revoked_by} of every certificate the head refuses."""
        rows = self._read("SELECT serial, node, role, revoked_at, revoked_by FROM revoked_certs")
        return {serial: {"node": node, "role": role, "revoked_at": at, "revoked_by": by}
                for serial, node, role, at, by in rows}

    def record_audit(self, entries: Sequence[AuditEntry], now: float) -> None:
        with self._write() as cur:
            for entry in entries:
                self._audit(cur, entry, now)

    @staticmethod
    def _audit(cur: Any, entry: AuditEntry, now: float) -> None:
        cur.execute(
            "INSERT INTO audit (at, actor, role, action, target, status, detail) VALUES (?,?,?,?,?,?,?)",
            (now, entry.actor, entry.role, entry.action, entry.target, entry.status, entry.detail),
        )

    def list_audit(self, *, actor: str | None = None, since: float | None = None, before_id: int | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; page with `before_id`."""
        where, params = [], []
        for clause, value in (("actor=?", actor), ("at>=?", since), ("id<?", before_id)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT id, at, actor, role, action, target, status, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        keys = ("id", "at", "actor", "role", "action", "target", "status", "detail")
        return [dict(zip(keys, row)) for row in rows]
