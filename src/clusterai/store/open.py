"""Opening a store by URL: PostgreSQL for several machines, SQLite (the embedded default) else."""

from __future__ import annotations

from pathlib import Path

from clusterai.errors import ConfigError
from clusterai.store.protocol import JobStore
from clusterai.store.sqlite import SQLiteStore


def open_store(url: str | Path, **options: object) -> JobStore:
    """Open a store by URL: `postgresql://user:password@host:port/db`, `sqlite:///path/to.db`, a
    plain path, or `sqlite://:memory:`."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        # imported here, not above: psycopg takes ~0.2 s to import, which no SQLite user should pay
        from clusterai.store.postgres import PostgresStore

        return PostgresStore(text, **options)  # type: ignore[arg-type]
    if text.startswith("sqlite://"):
        rest = text[len("sqlite://") :]
        # sqlite:///rel.db is relative, sqlite:////abs.db absolute (SQLAlchemy's spelling)
        path = rest[1:] if rest.startswith("/") else rest
    elif "://" in text:
        raise ConfigError(
            f"store {text!r}: unknown scheme; allowed: postgresql://USER:PASSWORD@HOST:PORT/DB, "
            "sqlite:///PATH or a file path"
        )
    else:
        path = text
    return SQLiteStore(path, **options)  # type: ignore[arg-type]
