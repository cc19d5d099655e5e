"""Several nodes as a user runs them — `clusterai scheduler` and `clusterai worker` processes on
PostgreSQL — while things break: worker processes and whole worker nodes killed, the store
restarted twice mid-run, the active scheduler killed with -9 while a standby waits. No job is lost
and each has exactly one accepted success."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pgserver
import pytest
from conftest import read_executions, wait_for
from nodes import (
    Scheduler,
    Worker,
    api_get,
    job_client,
    not_exactly_once,
    stopping,
    succeeded,
    wait_succeeded,
    with_attempts,
    worker_token,
)

from clusterai.core.model import Outcome

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

FINAL = {"pending": 0, "queued": 0, "running": 0, "dead": 0, "cancelled": 0}


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[pgserver.PgServer]:
    """A PostgreSQL server of this test's own, which it may stop and start (not the session's)."""
    if not pgserver.available():
        if os.environ.get("CLUSTERAI_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL (initdb, pg_ctl, postgres) is required here but not installed")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl/postgres)")
    server = pgserver.PgServer(tmp_path / "pg").start()
    try:
        yield server
    finally:
        server.stop()


def _ready(client, name: str) -> list:
    try:
        return [w for w in client.workers() if w.name == name and w.status == "ready" and w.pid]
    except Exception:  # noqa: BLE001 - the store may be restarting
        return []


@pytest.mark.timeout(240)
def test_thousand_jobs_survive_worker_kill_and_two_store_restarts(own_pg, tmp_path):
    jobs_n = 1000
    url = own_pg.create_database("chaos")
    token = worker_token(url, "chaos-workers", tmp_path)
    head = Scheduler(url, tmp_path / "head")
    with stopping(head) as nodes:
        head.wait_up(90)
        workers = [Worker(head.address, token, f"w{i}", tmp_path / "workers") for i in range(3)]
        nodes.extend(workers)
        client = job_client(url)
        try:
            for w in workers:
                w.wait_line("joined", 90)
                wait_for(lambda w=w: _ready(client, w.name), 60, f"{w.name} to be ready")
            admin = head.admin_token()
            assert api_get(head.api, admin, "/api/v1/jobs?limit=1").status_code == 200

            log = tmp_path / "executions.log"
            jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.04}
                                                      for i in range(jobs_n)])
            started = time.monotonic()
            wait_succeeded(client, 100, 90, "before the first fault")

            # 1. SIGKILL one worker's Dask worker process: its nanny starts another
            victim = _ready(client, "w0")[0]
            os.kill(victim.pid, signal.SIGKILL)
            wait_succeeded(client, 200, 90, "after the worker process was killed")

            # 2. SIGKILL a whole worker node: `clusterai worker`, its nanny and its worker process
            workers[1].kill()
            workers[1].wait_exit(10)

            # 3. two PostgreSQL restarts, a few seconds apart, mid-run
            answers: list[tuple[str, int, float]] = []
            for outage in range(2):
                before = succeeded(client)
                assert before is not None and before < jobs_n, "the store restart should land mid-run"
                own_pg.halt("fast")
                down = time.monotonic()
                for path in ("/api/v1/jobs?limit=1", "/api/v1/cluster/status"):
                    asked = time.monotonic()
                    answer = api_get(head.api, admin, path, timeout=15)  # a dropped connection raises here
                    answers.append((path, answer.status_code, time.monotonic() - asked))
                    assert answer.status_code == 503, (path, answer.status_code, answer.text)
                    assert answer.headers.get("retry-after"), answer.headers
                    assert "unavailable" in answer.json()["error"]
                time.sleep(max(0.0, 2.0 - (time.monotonic() - down)))
                own_pg.resume()
                if outage == 0:
                    time.sleep(3.0)
                    wait_succeeded(client, before + 50, 90, "after the store came back")
            print("API answers while PostgreSQL was down:", [(p, s, round(t, 2)) for p, s, t in answers])

            finished = wait_succeeded(client, jobs_n, 150, "in all")
            print(f"{jobs_n} jobs through 2 kills and 2 store restarts in {finished - started:.1f} s")
            final = with_attempts(client, jobs)
            problems = not_exactly_once(final)
            assert not problems, f"{len(problems)} jobs not succeeded exactly once: {problems[:10]}"
            assert client.counts() == {**FINAL, "succeeded": jobs_n}
            # at least once underneath: every job ran; a rerun only where an attempt was given up
            executions = read_executions(log)
            assert set(executions) == {f"k{i}" for i in range(jobs_n)}
            attempts = [a for j in final for a in j.attempts]
            given_up = [a for a in attempts if a.outcome is not Outcome.SUCCEEDED]
            assert sum(executions.values()) <= jobs_n + len(given_up) + sum(1 for a in attempts if a.late)
            assert api_get(head.api, admin, "/api/v1/cluster/status").status_code == 200

            # the killed worker process was replaced and the worker is back, through the outages
            back = wait_for(lambda: [w for w in _ready(client, "w0") if w.pid != victim.pid], 60,
                            "w0's worker process to come back")
            assert back[0].pid != victim.pid
            assert workers[0].proc.poll() is None, workers[0].tail()
            assert workers[2].proc.poll() is None, workers[2].tail()
            assert _ready(client, "w2")
        finally:
            client.close()


@pytest.mark.timeout(180)
def test_standby_takes_over_after_kill_9(pg_url, tmp_path):
    jobs_n = 600
    token = worker_token(pg_url, "standby-workers", tmp_path)
    a = Scheduler(pg_url, tmp_path / "a", port=pgserver.free_port())
    with stopping(a) as nodes:
        a.wait_up(90)
        port_b = pgserver.free_port()
        b = Scheduler(pg_url, tmp_path / "b", port=port_b)
        nodes.append(b)
        b.wait_line("standing by", 60)
        address_b = f"tcp://127.0.0.1:{port_b}"
        workers = [Worker(f"{a.address},{address_b}", token, f"s{i}", tmp_path / "workers") for i in range(2)]
        nodes.extend(workers)
        client = job_client(pg_url)
        try:
            for w in workers:
                w.wait_line(f"joined {a.address}", 90)
                wait_for(lambda w=w: _ready(client, w.name), 60, f"{w.name} to be ready")
            log = tmp_path / "executions.log"
            jobs = client.submit_many("test.record", [{"path": str(log), "key": f"k{i}", "sleep": 0.03}
                                                      for i in range(jobs_n)])
            wait_succeeded(client, 150, 90, "on scheduler A")
            assert "taking over as the active scheduler" not in b.output()

            killed = time.monotonic()
            a.kill()  # kill -9 of A's whole process group
            a.wait_exit(10)
            baseline = succeeded(client)
            assert baseline is not None and baseline < jobs_n, "the kill should land mid-run"

            _, took_over = b.wait_line("taking over as the active scheduler", 30)
            b.wait_up(60)
            first = wait_succeeded(client, baseline + 1, 90, "on scheduler B")
            print(f"takeover after kill -9 of A: B took the lead {took_over - killed:.2f} s after the kill; "
                  f"the first job finished under B {first - killed:.2f} s after it")
            assert b.address == address_b
            for w in workers:
                w.wait_line(f"joined {address_b}", 60)

            wait_succeeded(client, jobs_n, 120, "on scheduler B")
            final = with_attempts(client, jobs)
            problems = not_exactly_once(final)
            assert not problems, f"{len(problems)} jobs not succeeded exactly once: {problems[:10]}"
            assert client.counts() == {**FINAL, "succeeded": jobs_n}
            given_back = [a for j in final for a in j.attempts if a.outcome is Outcome.ABANDONED]
            print(f"{len(given_back)} attempts left running by A were given back by B")
            assert set(read_executions(log)) == {f"k{i}" for i in range(jobs_n)}
            # the admin token A wrote lives in the store: B's API takes it
            assert api_get(b.api, a.admin_token(), "/api/v1/cluster/status").status_code == 200
            assert all(w.proc.poll() is None for w in workers)
        finally:
            client.close()


@pytest.mark.timeout(120)
def test_worker_joining_while_the_store_is_down_waits_for_it(own_pg, tmp_path):
    """A head whose store is down cannot check a worker token: that is no refusal. The worker
    (a nanny restart, a failover or a new machine) keeps asking and joins once the store is back,
    rather than quitting with "refused" (exit 4) on a valid token."""
    url = own_pg.create_database("join")
    token = worker_token(url, "late-workers", tmp_path)
    head = Scheduler(url, tmp_path / "head")
    with stopping(head) as nodes:
        head.wait_up(90)
        own_pg.halt("fast")
        worker = Worker(head.address, token, "late", tmp_path / "workers", extra=["--death-timeout", "60"])
        nodes.append(worker)
        wait_for(lambda: worker.proc.poll() is not None or "enrollment token of 'late'" in head.output(), 60,
                 "the worker to ask the head")
        time.sleep(1.5)  # it asked at least once more meanwhile
        assert worker.proc.poll() is None, f"exit {worker.proc.returncode}: {worker.tail()}"
        assert "refused" not in worker.output()
        own_pg.resume()
        worker.wait_line("joined", 60)
        client = job_client(url)
        try:
            wait_for(lambda: _ready(client, "late"), 60, "the worker to be ready")
            job = client.submit("test.where")
            assert client.result(job, timeout=60) == "late"
        finally:
            client.close()
