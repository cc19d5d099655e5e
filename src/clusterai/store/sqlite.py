"""SQLite job store: WAL mode, a busy timeout, and every write in one BEGIN IMMEDIATE transaction.

The hot queries name their partial index (INDEXED BY): without statistics the planner picks
the (state, id) index and sorts every queued row, which costs 4x at 100,000 queued jobs.

BEGIN IMMEDIATE takes the write lock up front, so two processes never deadlock on a
read-to-write upgrade (the cause of most "database is locked" errors); the busy timeout then
makes a second writer wait its turn instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clusterai.core.private_files import private_file, private_folder, tighten
from clusterai.errors import StoreUnavailable
from clusterai.store.migrations import SQLITE_MIGRATIONS
from clusterai.store.sql_store import SqlStore

# Locked past the busy timeout, a disk error, a file that is no database: the store is unavailable
# (an API answers 503), never an internal error. Constraint violations are bugs and stay loud.
_UNAVAILABLE = (sqlite3.OperationalError, sqlite3.DatabaseError)


def _make_private(path: Path) -> None:
    """The database file 0600 before SQLite opens it: SQLite makes its -wal and -shm files with the
    database file's mode, so they are private too (ones left looser by an older version are tightened);
    its folder 0700 when it is made here (private_files.py)."""
    try:
        private_folder(path.parent)
        private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            tighten(f"{path}{suffix}")
    except OSError as exc:
        raise StoreUnavailable(f"cannot make the SQLite store {str(path)!r} private: {exc}") from None


class Checkpointer:
    """Copies the WAL into the database on a thread and connection of its own, so that commits
    seldom pay for it. SQLite's automatic checkpoint runs inside whichever COMMIT takes the log past
    1000 pages; alone, it copies those 1000 pages there and then, which made the slow tail of a
    round trip.

    The automatic checkpoint stays on: it is what keeps the log short. A writer can rewind the log
    only once every frame is in the database, and a checkpoint on another thread never gets there
    while other threads keep writing (the log grew to 80 MiB in 2 s of API submissions with the
    automatic one off). So a PASSIVE checkpoint here every `interval` copies what the writers
    appended, and the one inside a commit finds little left to copy. Idle, the interval grows to
    `idle_interval`. TRUNCATE past `truncate_bytes` gives the disk back if readers ever kept the
    log from rewinding that long."""

    def __init__(self, path: str, *, interval: float = 0.02, idle_interval: float = 0.5,
                 truncate_bytes: int = 64 * 2**20):
        self.path = path
        self.interval = interval
        self.idle_interval = idle_interval
        self.truncate_bytes = truncate_bytes
        self._stop = threading.Event()
        self._db = sqlite3.connect(path, timeout=0.1, isolation_level=None, check_same_thread=False)
        self._thread = threading.Thread(target=self._run, name="clusterai-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wal = Path(f"{self.path}-wal")
        pause, last = self.interval, None
        while not self._stop.wait(pause):
            try:
                size = wal.stat().st_size if wal.exists() else 0
                mode = "TRUNCATE" if size > self.truncate_bytes else "PASSIVE"
                state = tuple(self._db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())
            except (sqlite3.Error, OSError):
                continue  # busy or locked now: the next round tries again
            # (busy, frames in the log, frames copied): unchanged means nobody wrote meanwhile
            pause = min(pause * 2, self.idle_interval) if state == last else self.interval
            last = state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass
        self._db.close()


_shared: dict[str, tuple[Checkpointer, int]] = {}  # one checkpointer per database file and process
_shared_lock = threading.Lock()


def _acquire_checkpointer(path: str) -> None:
    """The API and the coordinator each open the store: one thread checkpoints for both."""
    key = str(Path(path).resolve())
    with _shared_lock:
        found = _shared.get(key)
        _shared[key] = (found[0], found[1] + 1) if found else (Checkpointer(path), 1)


def _release_checkpointer(path: str) -> None:
    key = str(Path(path).resolve())
    with _shared_lock:
        checkpointer, users = _shared[key]
        if users > 1:
            _shared[key] = (checkpointer, users - 1)
            return
        del _shared[key]
    checkpointer.close()


class SQLiteStore(SqlStore):
    """One connection per store object, guarded by a lock: SQLite has a single writer anyway.
    Checkpoints run in the background (Checkpointer) unless `background_checkpoint=False`."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0, synchronous: str = "NORMAL",
                 background_checkpoint: bool = True):
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        if self.path not in (":memory:", "") and not self.path.startswith("file:"):
            _make_private(Path(self.path))
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._migrate()
            self._checkpointed = False
            if background_checkpoint and self.path not in (":memory:", "") and not self.path.startswith("file:"):
                _acquire_checkpointer(self.path)
                self._checkpointed = True
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from None
        self._data_version = -1

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(f"SQLite store {self.path!r} is unavailable: {exc}") from None
            try:
                yield cur
            except sqlite3.IntegrityError:
                self._db.rollback()
                raise
            except _UNAVAILABLE as exc:
                self._db.rollback()
                raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from None
            except BaseException:
                self._db.rollback()
                raise
            else:
                try:
                    cur.execute("COMMIT")
                except _UNAVAILABLE as exc:
                    self._db.rollback()
                    raise StoreUnavailable(f"commit failed on {self.path!r}: {exc}") from None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(f"SQLite store {self.path!r} is unavailable: {exc}") from None

    def _migrate(self) -> None:
        with self._write() as cur:
            self._apply_migrations(cur, SQLITE_MIGRATIONS)

    def changed(self) -> bool:
        """True when another connection committed since the last call (cheap: no table read)."""
        version = self._read("PRAGMA data_version")[0][0]
        changed, self._data_version = version != self._data_version, version
        return changed

    def close(self) -> None:
        if self._checkpointed:
            self._checkpointed = False
            _release_checkpointer(self.path)
        with self._lock:
            self._db.close()

    def _insert_ids(self, cur: sqlite3.Cursor, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        if len(rows) == 1:
            row = cur.execute(sql + " RETURNING id", rows[0]).fetchone()
            return [row[0]] if row else []
        cur.executemany(sql, rows)
        # this transaction is the only writer and ids autoincrement, so the rows got consecutive ids
        last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
        return list(range(last - len(rows) + 1, last + 1))

    def _events_high(self) -> int:
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name='events'")
        return int(rows[0][0]) if rows else 0

    def watch(self, callback: Callable[[], None]) -> None:
        """SQLite has no notifications: the coordinator polls `changed()` instead."""
