"""Serving the API from `clusterai up`: uvicorn on the coordinator's event loop, and the first
admin token written to a file only its owner can read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from clusterai.api.app import create_app
from clusterai.api.deps import ApiContext
from clusterai.config import ClusterConfig
from clusterai.core.private_files import private_folder
from clusterai.errors import ConfigError
from clusterai.service.access import new_token
from clusterai.service.join import JoinService
from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore

log = logging.getLogger("clusterai.api")


class UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling (`clusterai up` owns SIGINT/SIGTERM and stops the API
    together with the coordinator and the workers), which closes the gateway's connections to
    model servers when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets=sockets)
        ctx = getattr(getattr(self.config.app, "state", None), "ctx", None)
        if ctx is not None and ctx.gateway is not None:
            await ctx.gateway.close()


def ensure_admin_token(store: JobStore, token_file: str | Path) -> Path | None:
    """With no usable admin token in the store, make one and write it to `token_file` (mode
    0600, in a folder made 0700 when missing); returns the file, or None when an admin token
    already exists."""
    now = time.time()
    if any(t.role == "admin" and t.usable(now) for t in store.list_tokens()):
        return None
    text, record = new_token("admin", "admin", created_by="clusterai up")
    path = Path(token_file)
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.chmod(path, 0o600)  # also when the file existed with looser bits
    store.add_token(record)
    return path


class ApiServer:
    """The API on the running event loop; `url` is known once it listens (port 0 picks one)."""

    def __init__(self, config: ClusterConfig, store: JobStore, *, wake: Any = None, coordinator_registry: Any = None,
                 host: str | None = None, port: int | None = None, dask_dashboard: str | None = None,
                 worker_slots: Any = None, join: JoinService | None = None):
        api = config.api
        self.host = host or api.host
        self.port = api.port if port is None else port
        self.tls = api.tls_cert is not None
        for name in ("tls_cert", "tls_key"):
            value = getattr(api, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"api.{name}: no such file {value!r}")
        app = create_app(store, config, wake=wake, coordinator_registry=coordinator_registry,
                         dask_dashboard=dask_dashboard, worker_slots=worker_slots, joining=join)
        self.context: ApiContext = app.state.ctx
        self.server = UvicornServer(uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=api.tls_cert, ssl_keyfile=api.tls_key, timeout_graceful_shutdown=2,
        ))
        self._task: Any = None
        self.owned_store: JobStore | None = None  # closed by stop()

    async def start(self) -> str:
        self._task = asyncio.create_task(self._serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise ConfigError(f"api: cannot listen on {self.host}:{self.port} (address in use or not "
                                  "available); choose another with --api-port or api.port")
            await asyncio.sleep(0.02)
        if self.context.gateway is not None:
            self.context.gateway.start()
        return self.url

    async def _serve(self) -> None:
        try:
            await self.server.serve()
        except SystemExit:  # uvicorn exits the process when it cannot bind; here that is our error to report
            log.error("the API could not start on %s:%s", self.host, self.port)

    def credential_for(self, worker_address: str) -> str:
        """The inference-only credential of the worker at `worker_address`, for the attempts of its
        tasks that call the gateway (api/credentials.py); good while that worker is in the registry."""
        return self.context.credentials.credential_for(worker_address)

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    async def stop(self) -> None:
        if self._task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self.owned_store is not None:
            self.owned_store.close()


async def start_beside(config: ClusterConfig, *, wake: Callable[[], None], coordinator_registry: Any = None,
                       worker_slots: Callable[[], Iterable[Any]] | None = None, dask_dashboard: str | None = None,
                       ports: tuple[int, ...] = (), join_ca: tuple[Path, str] | None = None
                       ) -> tuple[ApiServer, Path | None]:
    """The API beside a running coordinator (`wake` tells it of new work; its metrics registry and
    live worker slots are served too), listening on the first of `ports` it can bind (default:
    api.port); returns it and the admin token file it wrote, if it wrote one. The API gets its own
    store connection (its reads never wait on the coordinator's) with a short busy wait: a locked
    store answers 503 in seconds rather than holding requests for half a minute. With `join_ca`
    (the CA's folder, the scheduler's address) it enrolls machines (`clusterai join`)."""
    store = open_store(config.store, busy_timeout=5.0)
    join = JoinService(store, *join_ca) if join_ca is not None else None

    async def listen(port: int) -> ApiServer:
        api = ApiServer(config, store, wake=wake, coordinator_registry=coordinator_registry, port=port,
                        dask_dashboard=dask_dashboard, worker_slots=worker_slots, join=join)
        await api.start()
        api.owned_store = store
        return api

    try:
        written = ensure_admin_token(store, config.api.token_file)
        *first, last = ports or (config.api.port,)
        for port in first:
            try:
                return await listen(port), written
            except ConfigError as exc:
                log.warning("%s; trying the next port", exc)
        return await listen(last), written
    except BaseException:
        store.close()
        raise


def url_for_workers(api_url: str, scheduler_address: str) -> str:
    """The API's address as workers reach it: an API on every interface (0.0.0.0, ::) is reached at
    the host workers already reach the scheduler on."""
    scheme, _, rest = api_url.partition("://")
    host, _, port = rest.rpartition(":")
    if host.strip("[]") not in ("0.0.0.0", "::"):
        return api_url
    head = scheduler_address.rpartition("://")[2].rsplit(":", 1)[0]
    return f"{scheme}://{head}:{port}"
