"""clusterai.store.postgres: what only the PostgreSQL store does (LISTEN/NOTIFY, credentials, the
server going away). The shared JobStore contract runs on both backends in test_store_contract.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from pgserver import PgServer, free_port

from clusterai.core.model import AuditEntry, JobSpec, State
from clusterai.errors import StoreUnavailable
from clusterai.store import postgres as postgres_module
from clusterai.store.migrations import POSTGRES_MIGRATIONS
from clusterai.store.open import open_store
from clusterai.store.postgres import PostgresStore, redact

T0 = 1_000.0


def spec(**options) -> JobSpec:
    return JobSpec(task="unit.job", payload=options.pop("payload", {}), **options)


def submit(store: PostgresStore, *specs: JobSpec) -> list[int]:
    return [job.id for job in store.submit_many(specs or [spec()], T0)]


def open_pg(url: str, **options: object) -> PostgresStore:
    s = open_store(url, **options)
    assert isinstance(s, PostgresStore)
    return s


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PostgresStore]:
    s = open_pg(pg_url)
    try:
        yield s
    finally:
        s.close()


# -- opening ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql://", "postgres://"])
def test_open_store_opens_postgresql_urls(pg_url: str, scheme: str):
    s = open_pg(scheme + pg_url.split("://", 1)[1])
    try:
        assert s.schema_version() == len(POSTGRES_MIGRATIONS)
        assert s.url.startswith(scheme)
    finally:
        s.close()


def test_password_is_redacted_in_the_url_and_in_errors(pg_server: PgServer, pg_url: str):
    assert pg_server.password in pg_url
    s = open_pg(pg_url)
    try:
        assert s.url == pg_url.replace(pg_server.password, "***")
        assert s.url == redact(pg_url)
    finally:
        s.close()
    wrong = pg_url.replace(pg_server.password, "Wr0ng-Secret")
    with pytest.raises(StoreUnavailable) as info:
        open_store(wrong)
    text = str(info.value)
    assert "Wr0ng-Secret" not in text and pg_server.password not in text
    assert f"{pg_server.user}:***@127.0.0.1:{pg_server.port}/" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained psycopg error
    assert redact("postgresql://host/db") == "postgresql://host/db"  # nothing to hide


def test_wrong_password_is_store_unavailable_at_once(pg_server: PgServer, pg_url: str):
    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"cannot open PostgreSQL store .*password authentication failed"):
        open_store(pg_url.replace(pg_server.password, "wrong"))
    assert time.monotonic() - began < 5


def test_closed_port_is_store_unavailable_at_once():
    port = free_port()  # nothing listens there
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store(f"postgresql://clusterai:s3cret@127.0.0.1:{port}/jobs", connect_timeout=2)
    assert time.monotonic() - began < 5
    text = str(info.value)
    assert text.startswith(f"cannot open PostgreSQL store postgresql://clusterai:***@127.0.0.1:{port}/jobs: ")
    assert "refused" in text.lower()
    assert "s3cret" not in text


def test_unknown_database_is_store_unavailable(pg_server: PgServer):
    with pytest.raises(StoreUnavailable, match='database "no_such_db" does not exist'):
        open_store(pg_server.url("no_such_db"))


# -- migrations -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_migrations_run_once_when_stores_open_a_new_database_at_once(pg_url: str, monkeypatch):
    probe = ["CREATE TABLE IF NOT EXISTS probe (n INTEGER)", "INSERT INTO probe VALUES (1)"]
    extra = [*POSTGRES_MIGRATIONS, probe]
    monkeypatch.setattr(postgres_module, "POSTGRES_MIGRATIONS", extra)
    barrier = threading.Barrier(4)
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            barrier.wait(timeout=30)
            stores.append(open_pg(pg_url))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    try:
        assert errors == []
        assert [s.schema_version() for s in stores] == [len(extra)] * 4
        (job_id,) = submit(stores[0])
    finally:
        for s in stores:
            s.close()
    again = open_pg(pg_url)
    try:
        assert again.get(job_id).state is State.QUEUED
    finally:
        again.close()
    assert count(pg_url, "probe") == 1  # the extra migration ran exactly once


def test_store_with_newer_schema_is_refused(pg_url: str):
    open_pg(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE meta SET value=%s WHERE key='schema_version'", (str(len(POSTGRES_MIGRATIONS) + 1),))
    with pytest.raises(StoreUnavailable, match="newer than this clusterai"):
        open_store(pg_url)


# -- LISTEN/NOTIFY ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_watch_fires_after_a_submit_from_another_store(pg_url: str, pg_store: PostgresStore):
    other = open_pg(pg_url)
    fired = threading.Event()
    try:
        pg_store.watch(fired.set)
        # the listening connection reports once when it connects: anything may have changed before
        assert fired.wait(5)
        assert pg_store.changed() is True
        fired.clear()
        assert pg_store.changed() is False

        began = time.monotonic()
        (job_id,) = submit(other)
        assert fired.wait(2), "no notification within 2 s of a submit"
        assert time.monotonic() - began < 2
        assert pg_store.changed() is True  # reported once
        assert pg_store.changed() is False

        # work leaving the queue wakes nobody
        fired.clear()
        assert [j.id for j in other.claim("w1", 10, T0, T0 + 30)] == [job_id]
        other.record_audit([AuditEntry(actor="alice", role="admin", action="noop", target=None, status=200)], T0)
        # a job due later, and one requeued, do
        submit(other, spec(run_at=T0 + 3600))
        assert fired.wait(2)
        fired.clear()
        assert pg_store.changed() is True
        other.cancel(job_id, T0)
        other.requeue(job_id, T0)
        assert fired.wait(2)
        assert pg_store.changed() is True
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_changed_reports_without_watch_and_notifications_reach_every_listener(pg_url: str, pg_store: PostgresStore):
    second = open_pg(pg_url)
    try:
        for s in (pg_store, second):
            s.changed()  # starts listening
            assert _eventually(s.changed, 5)  # the report made on connecting
        submit(pg_store)  # a store hears its own submits too
        assert _eventually(pg_store.changed, 2) and _eventually(second.changed, 2)
        assert pg_store.changed() is False and second.changed() is False
    finally:
        second.close()


def _eventually(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


# -- the server going away --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_write_blocked_past_lock_timeout_is_store_unavailable(pg_url: str):
    s = open_pg(pg_url, busy_timeout=0.3)
    blocker = psycopg.connect(pg_url)
    try:
        submit(s)
        blocker.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")  # held until the rollback below
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="lock timeout"):
            submit(s)
        assert time.monotonic() - began < 5
        assert s.job_counts()["queued"] == 1  # reads go on
        blocker.rollback()
        submit(s)  # usable again once the lock is gone
        assert s.job_counts()["queued"] == 2
    finally:
        blocker.close()
        s.close()


@pytest.mark.timeout(120)
def test_store_survives_a_server_restart_and_is_unavailable_while_halted(pg_server: PgServer):
    # a server of its own: the session's is shared by the other tests
    server = PgServer().start()
    try:
        url = server.create_database("restart")
        s = open_pg(url, busy_timeout=2)
        try:
            (a,) = submit(s)
            server.restart()
            # the pooled connection died with the old server: dropped, not reported
            (b,) = submit(s)
            assert s.get(a).state is State.QUEUED
            server.restart()
            assert s.job_counts()["queued"] == 2  # a read first, this time
            assert [j.id for j in s.claim("w1", 1, T0, T0 + 30)] == [a]

            server.halt()
            for attempt in (lambda: submit(s), lambda: s.claim("w1", 1, T0, T0 + 30), lambda: s.get(a)):
                began = time.monotonic()
                with pytest.raises(StoreUnavailable, match=r"PostgreSQL store postgresql://clusterai:\*\*\*@") as info:
                    attempt()
                assert time.monotonic() - began < 10
                assert server.password not in str(info.value)

            server.resume()
            # the pool reconnects in the background (with backoff): the same store works again soon
            deadline = time.monotonic() + 30
            while True:
                try:
                    (c,) = submit(s)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store did not recover after the server came back"
                    time.sleep(0.2)
            assert s.states_of([a, b, c]) == {a: State.RUNNING, b: State.QUEUED, c: State.QUEUED}
        finally:
            s.close()
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_every_pooled_connection_in_use_when_the_server_goes_down_is_unavailable_at_once(pg_server: PgServer):
    # The coordinator's threads may hold every pooled connection when the server stops. The next
    # call used to wait out the pool's busy timeout (30 s on the coordinator's event loop, so the API
    # beside it answered nothing); it must be refused as fast as a closed port is.
    server = PgServer().start()
    try:
        s = open_pg(server.create_database("busy_pool"), busy_timeout=30)
        try:
            (a,) = submit(s)
            held = [s._connection() for _ in range(s._pool.max_size)]
            began = time.monotonic()
            assert s.get(a).state is State.QUEUED  # server up, every pooled connection taken: one of its own
            assert time.monotonic() - began < 5
            server.halt()
            for attempt in (lambda: s.get(a), lambda: submit(s)):
                began = time.monotonic()
                with pytest.raises(StoreUnavailable, match="unavailable"):
                    attempt()
                assert time.monotonic() - began < 3
            for conn in held:
                s._release(conn)
            server.resume()
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert s.get(a).state is State.QUEUED
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store did not recover after the server came back"
                    time.sleep(0.2)
        finally:
            s.close()
    finally:
        server.stop()
