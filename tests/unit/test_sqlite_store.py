"""clusterai.store.sqlite (and open_store's SQLite spellings): what only the SQLite store does. The
JobStore contract itself runs against SQLite and PostgreSQL in test_store_contract.py."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from clusterai.core.model import JobSpec, State
from clusterai.errors import ConfigError, StoreUnavailable
from clusterai.store import sqlite as sqlite_module
from clusterai.store.migrations import SQLITE_MIGRATIONS
from clusterai.store.open import open_store
from clusterai.store.sqlite import SQLiteStore

T0 = 1_000.0


def spec(task: str = "unit.job", payload: dict | None = None, **options) -> JobSpec:
    return JobSpec(task=task, payload=payload if payload is not None else {}, **options)


def submit(store: SQLiteStore, *specs: JobSpec, now: float = T0) -> list[int]:
    return [job.id for job in store.submit_many(specs or [spec()], now)]


def row_count(path: Path, table: str = "jobs") -> int:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


# -- several processes on one file ------------------------------------------------------------



def _submit_from_process(path: str, index: int, count: int, barrier, results) -> None:
    """Runs in a spawned process: its own store object, `count` one-job transactions."""
    errors: list[str] = []
    ids: list[int] = []
    store = None
    try:
        store = SQLiteStore(path)
        barrier.wait(timeout=60)
        for n in range(count):
            try:
                (job,) = store.submit_many([JobSpec(task="unit.proc", payload={"p": index, "n": n})], T0)
                ids.append(job.id)
            except Exception as exc:  # noqa: BLE001 - sent back to the test
                errors.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - sent back to the test
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if store is not None:
            store.close()
        results.put((index, ids, errors))


@pytest.mark.timeout(120)
def test_concurrent_submits_from_several_processes(db_path: Path):
    SQLiteStore(db_path).close()
    ctx = multiprocessing.get_context("spawn")
    procs, per_proc = 4, 200
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_submit_from_process, args=(str(db_path), i, per_proc, barrier, results))
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    try:
        answers = [results.get(timeout=90) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * procs
    errors = [e for _, _, errs in answers for e in errs]
    assert errors == [], errors[:3]
    ids = [i for _, got, _ in answers for i in got]
    assert len(ids) == len(set(ids)) == procs * per_proc
    assert row_count(db_path) == procs * per_proc
    with sqlite3.connect(db_path) as db:
        per = dict(db.execute("SELECT json_extract(payload, '$.p'), COUNT(*) FROM jobs GROUP BY 1"))
    assert per == {i: per_proc for i in range(procs)}



@pytest.mark.timeout(30)
def test_write_blocked_past_busy_timeout_is_store_unavailable(db_path: Path):
    s = SQLiteStore(db_path, busy_timeout=0.2)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        submit(s)
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="is unavailable: database is locked"):
            submit(s)
        assert s.job_counts()["queued"] == 1  # WAL: reads go on while another connection writes
        blocker.execute("ROLLBACK")
        submit(s)  # usable again once the lock is gone
        assert s.job_counts()["queued"] == 2
    finally:
        blocker.close()
        s.close()


# -- schema ---------------------------------------------------------------------------------------



def test_reopening_keeps_data_and_does_not_rerun_migrations(db_path: Path, monkeypatch):
    probe = ["CREATE TABLE IF NOT EXISTS probe (n INTEGER)", "INSERT INTO probe VALUES (1)"]
    extra = [*SQLITE_MIGRATIONS, probe]
    monkeypatch.setattr(sqlite_module, "SQLITE_MIGRATIONS", extra)
    first = SQLiteStore(db_path)
    (job_id,) = submit(first)
    assert first.schema_version() == len(extra)
    first.close()
    for _ in range(2):
        again = SQLiteStore(db_path)
        assert again.schema_version() == len(extra)
        assert again.get(job_id).state is State.QUEUED
        again.close()
    assert row_count(db_path, "probe") == 1  # migration 2 ran exactly once


def test_older_store_is_upgraded(db_path: Path, monkeypatch):
    SQLiteStore(db_path).close()  # at the current version
    extra = [*SQLITE_MIGRATIONS, ["CREATE TABLE added_later (x TEXT)"]]
    monkeypatch.setattr(sqlite_module, "SQLITE_MIGRATIONS", extra)
    upgraded = SQLiteStore(db_path)
    try:
        assert upgraded.schema_version() == len(SQLITE_MIGRATIONS) + 1
        assert row_count(db_path, "added_later") == 0
    finally:
        upgraded.close()


def test_store_with_newer_schema_is_refused(db_path: Path):
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(len(SQLITE_MIGRATIONS) + 1),))
    with pytest.raises(StoreUnavailable, match="newer than this clusterai"):
        SQLiteStore(db_path)


def test_unopenable_file_is_store_unavailable(tmp_path: Path):
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="cannot open SQLite store"):
        SQLiteStore(not_a_db)


# -- open_store -------------------------------------------------------------------------------


def _open(url) -> SQLiteStore:
    s = open_store(url)
    assert isinstance(s, SQLiteStore)
    return s


def test_open_store_relative_url(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _open("sqlite:///sub/rel.db")
    s.close()
    assert s.path == "sub/rel.db"
    assert (tmp_path / "sub" / "rel.db").is_file()
    assert s.url == "sqlite:///sub/rel.db"


def test_open_store_absolute_url(tmp_path: Path):
    target = tmp_path / "abs" / "x.db"
    url = f"sqlite:///{target}"  # tmp_path is absolute: sqlite:////tmp/...
    assert url.startswith("sqlite:////")
    s = _open(url)
    s.close()
    assert s.path == str(target)
    assert target.is_file()
    assert s.url == url  # the URL round-trips


def test_open_store_plain_path(tmp_path: Path):
    s = _open(tmp_path / "plain.db")
    s.close()
    assert s.path == str(tmp_path / "plain.db")
    assert (tmp_path / "plain.db").is_file()


def test_open_store_in_memory():
    s = _open("sqlite://:memory:")
    try:
        assert s.path == ":memory:"
        assert s.schema_version() == len(SQLITE_MIGRATIONS)
    finally:
        s.close()


@pytest.mark.parametrize("url", ["mysql://host/db", "redis://localhost:6379/0", "http://x/y.db"])
def test_open_store_unknown_scheme(url: str):
    with pytest.raises(ConfigError, match="unknown scheme"):
        open_store(url)


def _wal_frames_left(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of them already in the database), read on a connection of our own."""
    with sqlite3.connect(path) as db:
        _, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return log, done


def test_the_background_checkpointer_copies_the_wal_into_the_database(db_path: Path):
    store = SQLiteStore(str(db_path))
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # SQLite's, kept
        for _ in range(20):
            submit(store, *[spec(payload={"i": i, "pad": "x" * 200}) for i in range(200)])
        wait_until = time.monotonic() + 5
        while time.monotonic() < wait_until:
            log, done = _wal_frames_left(db_path)
            if log == done:
                break
        assert log == done, "the checkpointer moved every frame into the database"
    finally:
        store.close()


@pytest.mark.timeout(90)
def test_the_wal_stays_bounded_while_other_threads_write_and_read(db_path: Path):
    # a checkpoint on another thread never lets the log rewind while writers keep appending (it grew
    # to the size of everything written, 80 MiB in 2 s of API submissions on a head): the commits'
    # own automatic checkpoint rewinds it, and the background one leaves that little to copy
    store, reader = SQLiteStore(str(db_path)), SQLiteStore(str(db_path))
    wal = db_path.with_name(db_path.name + "-wal")
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            reader.states_of([1])
            time.sleep(0.001)

    try:
        threading.Thread(target=read, daemon=True).start()
        written, largest = 0, 0
        deadline = time.monotonic() + 40
        # enough written to tell a bounded log from one that grows (unbounded, it held all of it)
        while written * 500 < 24 * 2**20 and time.monotonic() < deadline:
            submit(store, *[spec(payload={"i": i, "pad": "x" * 500}) for i in range(20)])
            written += 20
            largest = max(largest, wal.stat().st_size)
        stop.set()
        assert written * 500 >= 24 * 2**20, f"only {written} jobs written in 40 s"
        assert largest < 8 * 2**20, f"the WAL reached {largest / 2**20:.1f} MiB after {written} jobs"
        assert reader.job_counts()["queued"] == written
    finally:
        stop.set()
        reader.close()
        store.close()


def test_the_checkpointer_truncates_a_large_wal(db_path: Path):
    store = SQLiteStore(str(db_path), background_checkpoint=False)
    try:
        store._db.execute("PRAGMA wal_autocheckpoint=0")
        for _ in range(5):
            submit(store, *[spec(payload={"i": i, "pad": "x" * 500}) for i in range(200)])
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.stat().st_size > 100_000
        checkpointer = sqlite_module.Checkpointer(str(db_path), interval=0.05, truncate_bytes=100_000)
        try:
            deadline = time.monotonic() + 5
            while wal.stat().st_size > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert wal.stat().st_size == 0, "TRUNCATE bounds the WAL"
        finally:
            checkpointer.close()
        assert row_count(db_path) == 1000
    finally:
        store.close()
