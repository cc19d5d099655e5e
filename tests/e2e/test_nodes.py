"""`clusterai worker` joining a `clusterai scheduler` as a user runs them: every way in without a
valid worker token or the right transport ends at once with a clear exit code and message (never a
hang), a plain Dask worker is closed by the head and never gets a job, and a worker with TLS joins a
TLS head and runs jobs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pgserver
import pytest
from conftest import wait_for
from nodes import Scheduler, Worker, cli, job_client, kill_group, node_env, stopping, worker_token

from clusterai.core.model import State
from clusterai.service.access import new_token

EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_REFUSED = 2, 3, 4


@pytest.fixture(scope="module")
def head(pg_server: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    """One head for the module, on a database of its own."""
    url = pg_server.create_database(f"nodes_{time.time_ns()}")
    node = Scheduler(url, tmp_path_factory.mktemp("head"))
    with stopping(node):
        node.wait_up(90)
        yield node


def _exits(worker: Worker, timeout: float) -> tuple[int, str, float]:
    """Exit code, output and seconds since the worker started, once it ends (failing past `timeout`)."""
    code = worker.wait_exit(timeout)
    return code, " ".join(worker.output().split()), time.monotonic() - worker.started


@pytest.mark.timeout(60)
def test_worker_without_a_token_exits_2(tmp_path):
    worker = Worker("tcp://127.0.0.1:8786", None, "no-token", tmp_path)
    with stopping(worker):
        code, out, _ = _exits(worker, 30)
    assert code == EXIT_BAD_INPUT, out
    assert "an enrollment token is required" in out


@pytest.mark.timeout(60)
def test_worker_with_no_head_listening_exits_3_without_hanging(tmp_path):
    address = f"tcp://127.0.0.1:{pgserver.free_port()}"
    worker = Worker(address, new_token("w", "worker", created_by=None)[0], "lonely", tmp_path,
                    extra=["--death-timeout", "2"])
    with stopping(worker):
        code, out, took = _exits(worker, 30)
    assert code == EXIT_UNREACHABLE, out
    assert f"cannot reach a clusterai head within 2 s — {address}" in out
    assert took < 15, f"gave up only after {took:.1f} s"


@pytest.mark.timeout(90)
def test_wrong_token_and_non_worker_token_are_refused_at_once(head, tmp_path):
    unknown = new_token("stranger", "worker", created_by=None)[0]  # well formed, never stored
    workers = [Worker(head.address, unknown, "stranger", tmp_path),
               Worker(head.address, head.admin_token(), "admin-token", tmp_path)]  # a real token, not a worker's
    with stopping(*workers):
        for worker in workers:
            code, out, took = _exits(worker, 30)
            assert code == EXIT_REFUSED, out
            assert f"{head.address} refused this worker: the enrollment token is invalid, revoked, expired or " \
                   "not of role worker" in out
            assert took < 15, f"refused only after {took:.1f} s"
    assert "enrollment refused for 'stranger'" in head.output()


@pytest.mark.timeout(90)
def test_revoked_worker_token_is_refused(head, tmp_path):
    token = worker_token(head.store, "soon-revoked", tmp_path)
    first = Worker(head.address, token, "before-revoke", tmp_path)
    with stopping(first):
        _, joined = first.wait_line(f"joined {head.address}", 60)
    revoked = cli("--store", head.store, "token", "revoke", token.split("_", 2)[1], cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    time.sleep(max(0.0, 2.5 - (time.monotonic() - joined)))  # the head keeps a token's record for 2 s
    second = Worker(head.address, token, "after-revoke", tmp_path)
    with stopping(second):
        code, out, took = _exits(second, 30)
    assert code == EXIT_REFUSED, out
    assert "refused this worker" in out
    assert took < 15


@pytest.mark.timeout(90)
def test_plain_dask_worker_is_closed_and_never_gets_a_job(head, tmp_path):
    client = job_client(head.store)
    try:
        wait_for(lambda: not [w for w in client.workers() if w.status != "gone"], 30, "no live worker")
        job = client.submit("test.where")
        log = tmp_path / "intruder.log"
        with log.open("ab") as out:
            intruder = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", head.address, "--name", "intruder",
                 "--nthreads", "1", "--memory-limit", "1GiB", "--no-dashboard", "--death-timeout", "20"],
                cwd=tmp_path, env=node_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            closed = re.compile(r"worker intruder \(tcp://[^)]+\) has no valid enrollment token; closing it")
            deadline, closed_at = time.monotonic() + 60, None
            # from its start until 3 s after the head closed it, the coordinator neither lists it nor gives it the job
            while closed_at is None or time.monotonic() < closed_at + 3:
                assert time.monotonic() < deadline, "the head did not close the plain Dask worker:\n" + head.tail()
                assert "intruder" not in {w.name for w in client.workers()}
                assert client.get(job.id).state is State.QUEUED and not client.get(job.id).attempts
                if closed_at is None and closed.search(head.output()):
                    closed_at = time.monotonic()
                time.sleep(0.2)
            intruder.wait(30)  # sent away, the plain `dask worker` ends
            assert "Reason: scheduler-remove-worker" in log.read_text(errors="replace")
        finally:
            kill_group(intruder.pid)
            intruder.wait(10)
        client.cancel(job)
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_tls_head_refuses_plain_tcp_and_runs_jobs_over_tls(pg_server, tmp_path):
    certs = tmp_path / "certs"
    made = cli("certs", "create", "--dir", str(certs), cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    url = pg_server.create_database(f"nodes_tls_{time.time_ns()}")
    token = worker_token(url, "tls-workers", tmp_path)
    head = Scheduler(url, tmp_path / "head", extra=["--tls-dir", str(certs)])
    with stopping(head) as nodes:
        head.wait_up(90)
        assert head.address.startswith("tls://127.0.0.1:")
        plain = head.address.replace("tls://", "tcp://")
        good = Worker(head.address, token, "tls-worker", tmp_path, extra=["--tls-dir", str(certs)])
        # certificates but a plain address: refused before any connection
        tcp_with_tls = Worker(plain, token, "tcp-with-tls", tmp_path, extra=["--tls-dir", str(certs)])
        # a TLS address but no certificates: refused before any connection
        tls_without_certs = Worker(head.address, token, "no-certs", tmp_path)
        # neither: the TLS head does not answer plain tcp; the worker gives up with a hint, no hang
        plain_at_tls_head = Worker(plain, token, "plain", tmp_path, extra=["--death-timeout", "3"])
        nodes.extend([good, tcp_with_tls, tls_without_certs, plain_at_tls_head])

        code, out, _ = _exits(tcp_with_tls, 30)
        assert code == EXIT_BAD_INPUT, out
        assert f"scheduler address {plain!r} is plain tcp, which is refused because TLS is configured" in out

        code, out, _ = _exits(tls_without_certs, 30)
        assert code == EXIT_BAD_INPUT, out
        assert f"head address {head.address!r} uses TLS: give --tls-dir" in out

        code, out, took = _exits(plain_at_tls_head, 40)
        assert code == EXIT_UNREACHABLE, out
        assert "cannot reach a clusterai head within 3 s" in out and "if the head uses TLS, give --tls-dir" in out
        assert took < 25, f"gave up only after {took:.1f} s"
        assert "Traceback" not in tcp_with_tls.output() + tls_without_certs.output() + plain_at_tls_head.output()

        good.wait_line(f"joined {head.address}", 60)
        client = job_client(url)
        try:
            job = client.submit("test.where")
            assert client.result(job, timeout=60) == "tls-worker"
            # retired over TLS: the head's word reaches the nanny through its gate, and the worker stops
            removed = cli("--store", url, "workers", "remove", "tls-worker", "--wait", "60", cwd=tmp_path)
            assert removed.returncode == 0, removed.stdout + removed.stderr
            code, out, _ = _exits(good, 30)
            assert code == 0 and "retired this worker; stopping" in out, out
        finally:
            client.close()


@pytest.mark.timeout(120)
def test_worker_carries_its_labels_and_resources_and_gives_up_after_too_many_restarts(head, tmp_path):
    """What `--label/--resources` say reaches the registry; the nanny restarts a killed worker
    process, and past `--max-restarts` the command stops with exit 1 instead of looping forever."""
    token = worker_token(head.store, "restarts", tmp_path)
    worker = Worker(head.address, token, "flaky", tmp_path,
                    extra=["--label", "region=eu", "--resources", "GPU=1", "--max-restarts", "1"])
    with stopping(worker):
        client = job_client(head.store)
        try:
            def ready() -> object:
                return next((w for w in client.store.list_workers() if w.name == "flaky" and w.status == "ready"
                             and w.pid), None)

            record = wait_for(ready, 60, "the worker to be ready")
            assert record.labels == {"region": "eu"}
            assert record.resources["GPU"] == 1.0

            pid = record.pid
            os.kill(pid, signal.SIGKILL)  # the worker process alone: its nanny notices and restarts it
            record = wait_for(lambda: (r := ready()) is not None and r.pid != pid and r, 60,
                              "the nanny to restart the worker process")
            os.kill(record.pid, signal.SIGKILL)  # a second death: past --max-restarts 1
            code, out, _ = _exits(worker, 30)
        finally:
            client.close()
    assert code == 1, out
    assert "died 2 times" in out and "giving up" in out


@pytest.mark.timeout(120)
def test_a_removed_worker_stops_and_does_not_join_again(head, tmp_path):
    """`clusterai workers remove` retires the worker: its command exits 0 (a service manager then
    leaves it stopped) instead of taking the retirement for a lost head and joining again."""
    token = worker_token(head.store, "removed", tmp_path)
    worker = Worker(head.address, token, "to-remove", tmp_path)
    with stopping(worker):
        client = job_client(head.store)
        try:
            wait_for(lambda: any(w.name == "to-remove" and w.status == "ready" for w in client.store.list_workers()),
                     60, "the worker to be ready")
            removed = cli("--store", head.store, "workers", "remove", "to-remove", "--wait", "60", cwd=tmp_path)
            assert removed.returncode == 0, removed.stdout + removed.stderr
            code, out, _ = _exits(worker, 30)
            assert code == 0, out
            assert "retired this worker; stopping" in out
            time.sleep(3)
            assert not any(w.name == "to-remove" and w.status != "gone" for w in client.store.list_workers())
        finally:
            client.close()


@pytest.mark.timeout(60)
def test_scheduler_refuses_to_listen_beyond_loopback_without_tls(tmp_path):
    result = cli("--store", f"sqlite:///{tmp_path / 's.db'}", "scheduler", "--host", "0.0.0.0", "--port", "0",
                 cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stdout + result.stderr
    assert "--host 0.0.0.0 without TLS" in " ".join(result.stderr.split())
    assert "--allow-plain-tcp" in result.stderr
