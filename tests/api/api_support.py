"""Helpers of the API suite: the REST API served over real HTTP on loopback (uvicorn in a background
thread with its own event loop) on a fresh SQLite store, with one token per role (and a second
submitter, "other")."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from clusterai.api.app import create_app
from clusterai.api.server import UvicornServer
from clusterai.config import ClusterConfig, parse_config
from clusterai.core.model import Finish, Job, Outcome, State, WorkerRecord
from clusterai.core.tasks import import_task_modules
from clusterai.service.access import new_token
from clusterai.service.submission import build_spec
from clusterai.store.open import open_store
from clusterai.store.sqlite import SQLiteStore

import_task_modules(["testtasks"])

ROLES = ("admin", "operator", "submitter", "viewer")
# the token's name is the owner of the jobs it submits: "other" is a second submitter
TOKEN_ROLES = {"admin": "admin", "operator": "operator", "submitter": "submitter", "viewer": "viewer",
               "other": "submitter"}
WORKER = "w1"
WORKER_ADDRESS = "tcp://127.0.0.1:40001"


@contextlib.contextmanager
def serve(app: FastAPI, **options: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) until the block ends; yields the base URL."""
    # log_config=None: uvicorn leaves the logging configuration alone (its records reach pytest's capture)
    server = UvicornServer(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None,
                                   lifespan="off", access_log=False, timeout_graceful_shutdown=1, **options))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # SystemExit when it cannot start; shown by the waiting side
            failure.append(exc)

    thread = threading.Thread(target=run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if failure or not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError(f"the API server did not start: {failure!r}")
        time.sleep(0.005)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    scheme = "https" if options.get("ssl_certfile") else "http"
    try:
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the API server did not stop"


@dataclass
class Api:
    """A served API: its URL, its store, and a token for each role."""

    url: str
    store: SQLiteStore
    app: FastAPI
    config: ClusterConfig
    tokens: dict[str, str]  # admin, operator, submitter, viewer, other -> token text
    token_ids: dict[str, str]
    _clients: list[httpx.Client] = field(default_factory=list)

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}

    def client(self, who: str | None = None, **options: Any) -> httpx.Client:
        """An HTTP client with `who`'s token (none for None); closed at teardown."""
        options.setdefault("timeout", 10.0)
        headers = {**self.headers(who), **options.pop("headers", {})}
        c = httpx.Client(base_url=self.url, headers=headers, **options)
        self._clients.append(c)
        return c

    # -- store shortcuts (no cluster runs: jobs are moved by hand) ---------------------------

    def add_job(self, task: str = "bench.noop", payload: dict[str, Any] | None = None, owner: str | None = None,
                **options: Any) -> Job:
        spec = build_spec(self.config, task, payload or {}, owner=owner, **options)
        return self.store.submit_many([spec], time.time())[0]

    def finish(self, job_id: int, outcome: Outcome, state: State, *, result: Any = None,
               error: str | None = None, worker: str = WORKER) -> Job:
        """Run the job's next attempt on `worker` and end it as given."""
        now = time.time()
        started = self.store.start_attempts([(job_id, worker)], now, now + 30)
        assert started, f"job {job_id} was not queued"
        job = started[0]
        finish = Finish(job_id, job.attempt, outcome, state,
                        result_json=json.dumps(result) if result is not None else None, error=error,
                        failures=job.failures + int(outcome is not Outcome.SUCCEEDED))
        assert self.store.finish_attempts([finish], time.time()) == [True]
        return self.store.get(job_id)

    def add_worker(self, name: str = WORKER, address: str = WORKER_ADDRESS, status: str = "ready") -> None:
        """The registry as the coordinator writes it: this worker alone (any other is now gone)."""
        self.set_workers((name, address, status))

    def set_workers(self, *workers: tuple[str, str, str]) -> None:
        """The registry snapshot: (name, address, status) of each live worker."""
        records = [WorkerRecord(name=name, address=address, status=status, nthreads=2, memory_limit=2**30,
                                inflight=0, completed=0, failed=0, last_seen=time.time(),
                                metrics={"cpu": 12.5, "memory_percent": 40.0})
                   for name, address, status in workers]
        self.store.upsert_workers(records, time.time())

    def add_token(self, role: str, name: str | None = None, **fields: Any) -> tuple[str, str]:
        """Store a token made here (fields override its record); (text, id)."""
        text, record = new_token(name or f"extra-{role}", role, created_by="test")
        if fields:
            record = dataclasses.replace(record, **fields)
        self.store.add_token(record)
        return text, record.id


ApiFactory = Callable[..., Api]


@contextlib.contextmanager
def running_api(directory: Path, settings: dict[str, Any] | None = None, *, busy_timeout: float = 0.2,
                coordinator_registry: CollectorRegistry | None = None, dask_dashboard: str | None = None,
                worker_slots: Callable[[], Any] | None = None, **serve_options: Any) -> Iterator[Api]:
    """A fresh store under `directory` and the API on it, served until the block ends; `worker_slots`
    stands for the coordinator's live registry (objects with address, name, status, model_server)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = parse_config({"store": f"sqlite:///{directory / 'api.db'}", "tasks": ["testtasks"], **(settings or {})},
                          source="test")
    store = open_store(directory / "api.db", busy_timeout=busy_timeout)
    assert isinstance(store, SQLiteStore)
    tokens, ids = {}, {}
    for name, role in TOKEN_ROLES.items():
        text, record = new_token(name, role, created_by=None)
        store.add_token(record)
        tokens[name], ids[name] = text, record.id
    app = create_app(store, config, coordinator_registry=coordinator_registry, dask_dashboard=dask_dashboard,
                     worker_slots=worker_slots)
    try:
        with serve(app, **serve_options) as url:
            api = Api(url=url, store=store, app=app, config=config, tokens=tokens, token_ids=ids)
            try:
                yield api
            finally:
                for c in api._clients:
                    c.close()
    finally:
        store.close()
