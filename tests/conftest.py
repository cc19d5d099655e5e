"""Fixtures shared by the integration and chaos suites: real clusters on loopback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pgserver
import pytest
from api_support import Api, ApiFactory, running_api
from waiting import wait_for  # noqa: F401 - the tests import it from here

import clusterai
from clusterai.config import ClusterConfig, parse_config


def make_config(tmp: Path, **coordinator: Any) -> ClusterConfig:
    return parse_config({
        "store": f"sqlite:///{tmp / 'clusterai.db'}",
        "tasks": ["testtasks"],
        "cluster": {"workers": 2, "threads_per_worker": 1, "dashboard": False,
                    "memory_limit": "2GiB", "death_timeout": 10},
        "coordinator": {"lease_seconds": 6, **coordinator},
    }, source="test")


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., ClusterConfig]:
    return lambda **coordinator: make_config(tmp_path, **coordinator)


@pytest.fixture
def start_cluster() -> Iterator[Callable[[ClusterConfig], clusterai.Client]]:
    """Start embedded clusters for one test, and always stop them."""
    started: list[clusterai.Client] = []

    def start(config: ClusterConfig) -> clusterai.Client:
        client = clusterai.connect(config)
        started.append(client)
        wait_for(lambda: len(live_workers(client)) >= config.cluster.workers, 60, "workers to join")
        return client

    yield start
    for client in started:
        client.close()


def live_workers(client: clusterai.Client) -> list[Any]:
    return [w for w in client.workers() if w.status == "ready" and w.pid]


def read_executions(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key = line.split()[0]
            counts[key] = counts.get(key, 0) + 1
    return counts


def accepted_successes(job: clusterai.Job) -> int:
    return sum(1 for a in job.attempts if a.outcome is not None and a.outcome.value == "succeeded")


os.environ.setdefault("HF_HUB_OFFLINE", "1")


# -- the REST API served over real HTTP (tests/api; helpers in tests/api/api_support.py) ----------
@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[ApiFactory]:
    """Start APIs with their own settings (parse_config data); every one stops at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def make(settings: dict[str, Any] | None = None, **options: Any) -> Api:
            nonlocal count
            count += 1
            return stack.enter_context(running_api(tmp_path / f"api{count}", settings, **options))

        yield make


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory()


@pytest.fixture
def quiet_server_errors() -> Iterator[None]:
    """For a test that makes the server fail on purpose: its tracebacks are not logged. CPython 3.11
    builds a traceback's ^^^ markers with ast.parse, whose state is not thread-safe there: the server
    thread logging one while pytest parses source to report a failure (or an xfail) can crash pytest
    with "SystemError: AST constructor recursion depth mismatch" (pytest-dev/pytest#10763)."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "clusterai.api")]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, before):
            logger.disabled = disabled


# -- `clusterai up` as a user runs it (e2e and browser tests) ------------------------------------

def start_up(workdir: Path) -> tuple[subprocess.Popen, str]:
    """`clusterai up` in its own session; returns the process and the API URL it printed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "support"), "COLUMNS": "200"}
    up = subprocess.Popen([sys.executable, "-m", "clusterai.cli.main", "up"], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert up.stdout is not None
    seen = []
    for line in up.stdout:
        seen.append(line)
        if line.startswith("REST API: "):
            return up, line.split()[2]
    raise AssertionError("clusterai up printed no API address:\n" + "".join(seen))


def stop_up(up: subprocess.Popen) -> None:
    up.send_signal(signal.SIGINT)
    try:
        up.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait(10)


def start_coordinator(config: Path, log: Path) -> subprocess.Popen:
    """`clusterai --config CONFIG up` in its own session, its output appended to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "support"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "clusterai.cli.main", "--config", str(config), "up"],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in its own session, and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def stop_coordinator(proc: subprocess.Popen | None) -> None:
    """Ctrl-C, then SIGKILL whatever is left of its session."""
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 model folder, built once per session (tests/support/tinylm.py)."""
    pytest.importorskip("transformers")
    import tinylm

    return tinylm.build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pgserver.PgServer]:
    """One throwaway PostgreSQL server for the session (each test gets its own database)."""
    if not pgserver.available():
        if os.environ.get("CLUSTERAI_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL (initdb, pg_ctl, postgres) is required here but not installed")
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl/postgres)")
    server = pgserver.PgServer(tmp_path_factory.mktemp("pg")).start()
    try:
        yield server
    finally:
        server.stop()


_databases = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_database(f"test_{os.getpid()}_{next(_databases)}")


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The usual umask (group and others may read what is made), explicitly: files the cluster makes
    must be private whatever the umask says."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)
