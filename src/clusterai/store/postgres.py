"""PostgreSQL job store, for clusters of several machines: psycopg 3 with a connection pool,
`FOR UPDATE SKIP LOCKED` claims, and `LISTEN/NOTIFY` so a coordinator wakes the moment work arrives.

The SQL is the shared store's (`sql_store.py`), translated here. Two things differ in substance:

- Event ids must follow commit order (an SSE client resumes from the last id it saw), but a
  sequence hands out ids when rows are inserted, not when they commit. So a transaction writes its
  events last, under a transaction-level advisory lock held to its commit: two transactions never
  interleave their event ids and commits.
- A server restart breaks every pooled connection. A connection found dead when a transaction
  begins (or before a read) is discarded and another taken; anything else unavailable — the
  server down, a lock held past the timeout — is `StoreUnavailable` (the API answers 503 and the
  coordinator keeps its outcomes and tries again).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from clusterai.errors import ConfigError, StoreUnavailable
from clusterai.store.migrations import POSTGRES_MIGRATIONS
from clusterai.store.sql_store import SqlStore
from clusterai.store.urls import redact

try:
    import psycopg
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # a light worker never opens a store
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("clusterai.store")

CHANNEL = "clusterai_jobs"
# advisory lock keys (any fixed 64-bit numbers, unique to clusterai)
EVENTS_LOCK = 7_219_450_001
MIGRATION_LOCK = 7_219_450_002
COORDINATOR_LOCK = 7_219_450_003
# how long to wait for a pooled connection before asking the server directly (see _connection)
POOL_WAIT = 0.5


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite spelling → PostgreSQL: drop index hints, `?` → `%s` (and escape a literal `%`)."""
    return re.sub(r"\s+INDEXED BY \w+", "", sql).replace("%", "%%").replace("?", "%s")


class _Cursor:
    """A psycopg cursor that speaks the shared SQL and holds events back until commit."""

    def __init__(self, cur: Any):
        self._cur = cur
        self._events: list[tuple[str, list[tuple[Any, ...]]]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._cur.execute(translate(sql), params)
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> _Cursor:
        if rows:
            self._cur.executemany(translate(sql), rows)
        return self

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def defer_events(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._events.append((sql, rows))

    def commit(self) -> None:
        """Write the held-back events and commit, in one pipeline: one round trip for the lock, the
        events, the notification and the commit (the lock is held for no longer than that)."""
        conn = self._cur.connection
        with conn.pipeline():
            if self._events:
                self._cur.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
                wake = False
                for sql, rows in self._events:
                    self._cur.executemany(translate(sql), rows)
                    # job rows are (at, job, state, worker, detail): new or returning work wakes coordinators
                    wake = wake or any(len(r) == 5 and r[2] in ("queued", "pending") for r in rows)
                if wake:
                    self._cur.execute(f"NOTIFY {CHANNEL}")
            conn.execute("COMMIT")


class PostgresStore(SqlStore):
    _skip_locked = " FOR UPDATE SKIP LOCKED"
    _one_writer = False  # concurrent writers: a key may be taken between a look-up and an insert
    _minute_of_finish = "FLOOR(finished_at / 60) * 60"

    def __init__(self, url: str, *, busy_timeout: float = 30.0, connect_timeout: float = 5.0,
                 pool_size: int = 8):
        if psycopg is None:
            raise ConfigError(
                "the PostgreSQL store needs psycopg 3: pip install 'clusterai[server]'"
            )
        self._conninfo = url
        self.url = redact(url)
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout)),
            "application_name": "clusterai",
            # a lock held past the busy timeout is "unavailable", as SQLite's busy timeout is
            "options": f"-c lock_timeout={int(busy_timeout * 1000)}",
        }
        try:
            # one direct connection first: it fails with the server's own reason (bad password,
            # no such database, refused), which the pool would hide behind a timeout
            with psycopg.connect(url, **self._connect_kwargs) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open PostgreSQL store {self.url}: {_reason(exc)}") from None
        self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, kwargs=self._connect_kwargs,
                                    timeout=busy_timeout, name="clusterai", open=True)
        self._changed = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        self._suspect = threading.Event()  # a pooled connection broke: the server went away, maybe for good
        self._direct: set[Any] = set()  # connections made outside the pool: it was empty or reconnecting

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self) -> Any:
        wait = 0.05 if self._suspect.is_set() else POOL_WAIT
        try:
            conn = self._pool.getconn(timeout=wait)
            if self._suspect.is_set():  # clear() takes a lock: not on every call
                self._suspect.clear()
            return conn
        except PoolTimeout:
            pass
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL store {self.url} is unavailable: {_reason(exc)}") from None
        # Nothing pooled to hand: every connection is in use, or the pool is reconnecting (with
        # backoff) to a server that went away. Waiting the busy timeout would freeze the
        # coordinator's event loop (and the Dask scheduler and the API beside it) for 30 s while the
        # server is down. Ask the server itself: refused at once while it is down; while it is up
        # (the pool only busy) a connection of our own, closed after use.
        try:
            conn = psycopg.connect(self._conninfo, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL store {self.url} is unavailable: {_reason(exc)}") from None
        self._direct.add(conn)
        return conn

    def _release(self, conn: Any) -> None:
        if conn.broken:
            self._suspect.set()
        if conn in self._direct:
            self._direct.discard(conn)
            conn.close()
        else:
            self._pool.putconn(conn)

    @contextmanager
    def _write(self) -> Iterator[_Cursor]:
        conn = self._begin()
        try:
            cur = _Cursor(conn.cursor())
            try:
                yield cur
                cur.commit()
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, _unavailable()):
                    raise StoreUnavailable(f"PostgreSQL store {self.url}: {_reason(exc)}") from None
                raise
        finally:
            self._release(conn)

    def _begin(self) -> Any:
        """A connection inside BEGIN; connections that died while pooled are dropped, not reported."""
        for _ in range(self._pool.max_size + 1):
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                return conn
            except _unavailable() as exc:
                broken = conn.broken
                self._release(conn)
                if not broken:
                    raise StoreUnavailable(f"PostgreSQL store {self.url}: {_reason(exc)}") from None
        raise StoreUnavailable(f"PostgreSQL store {self.url}: no working connection")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        for _ in range(self._pool.max_size + 1):
            conn = self._connection()
            try:
                return list(conn.execute(translate(sql), params).fetchall())
            except _unavailable() as exc:
                # a connection that died while pooled: a read is safe to repeat on another
                if conn.broken:
                    continue
                raise StoreUnavailable(f"PostgreSQL store {self.url} is unavailable: {_reason(exc)}") from None
            finally:
                self._release(conn)
        raise StoreUnavailable(f"PostgreSQL store {self.url}: no working connection")

    def _migrate(self, conn: Any) -> None:
        with conn.transaction():
            # several processes may open a new database at once; one migrates, the others wait
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._apply_migrations(_Cursor(conn.cursor()), POSTGRES_MIGRATIONS)

    def _insert_ids(self, cur: _Cursor, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        return [int(row[0]) for row in self._each(cur, sql + " RETURNING id", rows) if row is not None]

    def _each(self, cur: _Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        if not rows:
            return []
        raw = cur._cur
        raw.executemany(translate(sql), rows, returning=True)  # pipelined: one round trip, not one per row
        out = []
        while True:
            out.append(raw.fetchone())
            if not raw.nextset():
                return out

    def _events_high(self) -> int:
        # the sequence may be ahead of what has committed; MAX(id) is what a reader can see
        high = self._read("SELECT MAX(id) FROM events")[0][0]
        if high is not None:
            return int(high)
        seq = self._read("SELECT pg_get_serial_sequence('events', 'id')")[0][0]
        last, called = self._read(f"SELECT last_value, is_called FROM {seq}")[0]
        return int(last) if called else 0

    # -- notifications ------------------------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from a background thread) whenever jobs become ready somewhere."""
        self._callbacks.append(callback)
        self._start_listener()

    def changed(self) -> bool:
        """True when work was queued since the last call (from LISTEN/NOTIFY; no table read)."""
        self._start_listener()
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False

    def _start_listener(self) -> None:
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="clusterai-pg-listen", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        delay = 0.2
        while not self._closing.is_set():
            try:
                with psycopg.connect(self._conninfo, **self._connect_kwargs) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.2
                    self._notify()  # anything sent while this connection was away
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._notify()
            except psycopg.Error as exc:
                if not self._closing.is_set():
                    log.debug("LISTEN connection lost (%s); reconnecting", _reason(exc))
                    self._closing.wait(delay)
                    delay = min(delay * 2, 5.0)

    def _notify(self) -> None:
        self._changed.set()
        for callback in self._callbacks:
            callback()

    def close(self) -> None:
        self._closing.set()
        self._pool.close()
        if self._listener is not None:
            self._listener.join(timeout=3)


@functools.cache
def _unavailable() -> tuple[type[BaseException], ...]:
    return (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def _rollback(conn: Any) -> None:
    try:
        if not conn.broken:
            conn.execute("ROLLBACK")
    except psycopg.Error:
        pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

