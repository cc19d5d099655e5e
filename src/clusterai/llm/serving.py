"""Run a model server in a background thread (uvicorn on its own event loop), for the
`clusterai serve-model` command, a worker that serves models, and tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clusterai.core.keep_alive import FOREVER, keep_alive_seconds
from clusterai.core.net import is_loopback
from clusterai.errors import BadInput, ConfigError
from clusterai.llm.models import ModelSpec, ServedModel, pick_device
from clusterai.llm.server import ModelServer, create_app

if TYPE_CHECKING:  # the config needs pydantic, which a machine with only the llm extra may lack
    from clusterai.config import ClusterConfig


@dataclass
class RunningServer:
    url: str
    server: ModelServer
    _uvicorn: object
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._uvicorn.should_exit = True  # type: ignore[attr-defined]
        self._thread.join(timeout)


def require_token(host: str, token: str | None) -> None:
    if not is_loopback(host, resolve=True) and not token:
        raise ConfigError(f"serving models on {host} needs a token: anyone who reaches the port could use "
                          "the models")


def load_models(specs: Sequence[str], device: str = "auto", *, keep_alive: float | str | None = None,
                max_batch: int = 8) -> dict[str, ServedModel]:
    """NAME=SPEC texts, loaded on `device` (auto: the GPU when torch sees one). `keep_alive` is how
    long a model stays loaded after a request that names none (Ollama's forms; None: forever);
    `max_batch` how many concurrent requests one generation round takes."""
    parsed = [ModelSpec.parse(text) for text in specs]
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise BadInput(f"a model name is given twice: {names}")
    pick_device(device)  # a wrong device is refused before anything loads
    kept = FOREVER if keep_alive is None else keep_alive_seconds(keep_alive)
    if max_batch < 1:
        raise BadInput(f"max_batch must be at least 1, got {max_batch}")
    return {s.name: ServedModel(s, device, keep_alive=kept, max_batch=max_batch) for s in parsed}


def serve(models: dict[str, ServedModel], *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          timeout: float = 30.0) -> RunningServer:
    """Start serving; returns once the socket listens. Off loopback a token is required."""
    import uvicorn

    require_token(host, token)
    server = ModelServer(models, token=token)
    sock = socket.create_server((host, port))
    # asyncio turns Nagle's algorithm off only on sockets that say they are TCP, and create_server's
    # do not: without this every answer's body waits ~40 ms for the client's delayed ACK
    sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    config = uvicorn.Config(create_app(server), log_level="warning", lifespan="off", access_log=False)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, name="clusterai-model-server",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not instance.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"the model server did not start on {host}:{port}")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningServer(f"http://{shown}:{bound_port}", server, instance, thread)


HEAD_TOKEN_ENV = "CLUSTERAI_HEAD_MODEL_TOKEN"


def serve_for_head(config: ClusterConfig) -> tuple[RunningServer | None, ClusterConfig]:
    """The models of `gateway.serve`, served on loopback behind a fresh token (the gateway finds it
    in the environment), and a configuration whose gateway lists them as the backend 'head' (its
    `serve` list emptied: they are served now)."""
    settings = config.gateway
    if not settings.serve:
        return None, config
    import os
    import secrets

    from clusterai.config import HEAD_BACKEND

    token = secrets.token_urlsafe(32)
    running = serve(load_models(settings.serve, settings.serve_device, keep_alive=settings.serve_keep_alive,
                                max_batch=settings.serve_max_batch), token=token)
    os.environ[HEAD_TOKEN_ENV] = token
    backends = [*settings.model_dump()["backends"],
                {"name": HEAD_BACKEND, "url": running.url, "token_env": HEAD_TOKEN_ENV}]
    return running, config.with_overrides(**{"gateway.backends": backends, "gateway.serve": []})
