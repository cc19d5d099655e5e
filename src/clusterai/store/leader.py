"""One active coordinator per store. A second `clusterai scheduler` on the same store waits as a
standby and takes over when the active one dies.

PostgreSQL: a session advisory lock held on a connection of its own. The server releases it the
moment that connection ends — the process killed, the machine gone — and the standby, trying every
`poll` seconds, gets it. A restart of PostgreSQL releases it too: the active scheduler then takes it
again, unless the standby was quicker, in which case the active one must stop coordinating.

SQLite (one machine): an exclusive `flock` on a file beside the database, released by the kernel
when the process ends.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("clusterai.store.leader")


class Leadership(Protocol):
    def try_acquire(self) -> bool:
        """Take the lead if nobody holds it; True when this process leads."""

    def still_held(self) -> bool | None:
        """True: still leading. False: lost to another process. None: cannot tell (store down)."""

    def release(self) -> None: ...


class PostgresLeadership:
    def __init__(self, url: str, key: int):
        self.url = url
        self.key = key
        self._conn: Any = None

    def try_acquire(self) -> bool:
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                   application_name="clusterai-leader")
        except psycopg.Error as exc:
            log.debug("cannot reach the store to take the lead: %s", exc)
            return False
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            got = bool(row and row[0])
        except psycopg.Error:
            got = False
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def still_held(self) -> bool | None:
        import psycopg

        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                self._conn.close()
                self._conn = None  # the session, and the lock with it, is gone
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
        except psycopg.Error:
            return None  # store down: nobody can take the lead meanwhile
        if self.try_acquire():
            log.warning("the store came back; this scheduler leads again")
            return True
        return False

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class FileLeadership:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool | None:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def leadership_for(store_url: str, conninfo: str | None = None) -> Leadership:
    """The lock that guards this store. `conninfo`: the PostgreSQL URL with its password (the
    store's `url` is redacted)."""
    if store_url.startswith(("postgresql://", "postgres://")):
        from clusterai.store.postgres import COORDINATOR_LOCK  # not above: psycopg is slow to import (open.py)

        return PostgresLeadership(conninfo or store_url, COORDINATOR_LOCK)
    path = store_url.removeprefix("sqlite:///")
    if path == ":memory:":
        path = f".clusterai/memory-{os.getpid()}"
    return FileLeadership(Path(path + ".coordinator.lock"))
