"""`clusterai worker`: one machine joins a head node. A Dask worker under a nanny (restarted when
it dies, up to a cap), enrolled with a worker token, watched by a small supervisor that moves to a
standby head when the active one is gone.

Only Dask, psutil and the standard library are needed here: this is what light workers run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from clusterai.errors import ClusterAIError, ConfigError
from clusterai.worker.enroll import RETIRING_HANDLER, TOKEN_ENV, TOKEN_KEY, ask_head, presented_token
from clusterai.worker.plugin import PROFILE_ENV, library_threads

log = logging.getLogger("clusterai.node")


class HeadUnreachable(ClusterAIError):
    pass


class EnrollmentRefused(ClusterAIError):
    pass


class WorkerCrashing(ClusterAIError):
    pass


@dataclass
class WorkerOptions:
    heads: list[str]  # the active head first, then standbys
    token: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    nthreads: int = 1
    memory_limit: str = "auto"
    death_timeout: float = 60.0  # how long to look for a head, at start and after losing one
    connect_timeout: float = 10.0
    max_restarts: int = 5  # worker process restarts allowed within restart_window
    restart_window: float = 600.0
    host: str | None = None  # address to listen on; None: the one that routes to the head
    security: Any = None  # distributed.security.Security when the head uses TLS
    probe_every: float = 1.0
    head_lost_after: float = 2.0  # unreachable this long: try the standbys
    serve_models: list[str] = field(default_factory=list)  # NAME=SPEC, served to the gateway
    serve_host: str | None = None
    serve_port: int = 0
    serve_device: str = "auto"  # auto: the GPU when torch sees one
    serve_keep_alive: float | None = None  # seconds a served model stays loaded after a request; None: forever
    serve_max_batch: int = 8  # concurrent generation requests run as one batch, at most
    model_server: dict[str, Any] | None = None  # {"url", "token", "models"} once serving

    @property
    def profile(self) -> dict[str, Any]:
        profile: dict[str, Any] = {"labels": self.labels, "resources": self.resources}
        if self.model_server is not None:
            profile["models"] = self.model_server["models"]
            profile["model_server"] = {"url": self.model_server["url"], "token": self.model_server["token"]}
        return profile


async def find_head(opts: WorkerOptions, patience: float) -> str:
    """The first head that answers and accepts the token, trying each for up to `patience` seconds.
    A head that refuses the token ends the search at once: retrying will not change its mind."""
    from clusterai.worker.tls import require_tls_address

    for address in opts.heads:
        if opts.security is not None:
            require_tls_address(address, opts.security)
        elif address.startswith(("tls://", "wss://")):  # else Dask raises a TypeError at the first connection
            raise ConfigError(f"head address {address!r} uses TLS: give --tls-dir with the cluster's ca.pem and "
                              "this node's certificate (clusterai certs create, on the head)")
    deadline = time.monotonic() + patience
    reasons: dict[str, str] = {}
    while True:
        # ask every head at once: a dead one (Dask retries a refused connection until its timeout)
        # must not delay finding the live one
        timeout = min(opts.connect_timeout, max(1.0, deadline - time.monotonic()))
        asks = {asyncio.ensure_future(_ask(address, opts, timeout)): address for address in opts.heads}
        verdicts: dict[str, dict[str, str]] = {}
        try:
            pending = set(asks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for ask in done:
                    verdicts[asks[ask]] = ask.result()
                    if ask.result()["status"] == "ok":
                        return asks[ask]
        finally:
            for ask in asks:
                ask.cancel()
        for address, verdict in verdicts.items():
            if verdict["status"] == "refused":
                raise EnrollmentRefused(f"{address} refused this worker: {verdict.get('reason')}")
            # unreachable, or "retry": the head cannot check tokens now (its store is down)
            reasons[address] = str(verdict.get("reason"))
        if time.monotonic() >= deadline:
            detail = "; ".join(f"{a}: {r}" for a, r in reasons.items())
            hint = ("" if opts.security is not None else
                    " (if the head uses TLS, give --tls-dir with its certificates)")
            raise HeadUnreachable(f"cannot reach a clusterai head within {patience:g} s — {detail}{hint}")
        await asyncio.sleep(1.0)


async def _ask(address: str, opts: WorkerOptions, timeout: float) -> dict[str, str]:
    try:
        return await ask_head(address, opts.token, opts.name, security=opts.security, timeout=timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return {"status": "unreachable", "reason": str(exc) or type(exc).__name__}


async def _reachable(address: str, opts: WorkerOptions) -> bool:
    from distributed.comm import connect

    kwargs = opts.security.get_connection_args("worker") if opts.security is not None else {}
    try:
        comm = await connect(address, timeout=2.0, **kwargs)
    except (OSError, asyncio.TimeoutError):
        return False
    await comm.close()
    return True


async def run_worker(opts: WorkerOptions, stop: asyncio.Event) -> None:
    """Serve until `stop` is set. Raises HeadUnreachable, EnrollmentRefused or WorkerCrashing."""
    head = await find_head(opts, opts.death_timeout)
    served = _serve_models(opts, head) if opts.serve_models else None
    try:
        await _run_nannies(opts, head, stop)
    finally:
        if served is not None:
            served.stop()


def _serve_models(opts: WorkerOptions, head: str) -> Any:
    """Load the models and serve them (before joining: a worker advertises only what it serves). A
    fresh random token guards the server; the head learns it over the enrolled Dask connection."""
    import secrets

    from clusterai.llm.serving import load_models, serve

    host = opts.serve_host or opts.host or _route_to(head)
    models = load_models(opts.serve_models, opts.serve_device, keep_alive=opts.serve_keep_alive,
                         max_batch=opts.serve_max_batch)
    token = secrets.token_urlsafe(32)
    running = serve(models, host=host, port=opts.serve_port, token=token)
    opts.model_server = {"url": running.url, "token": token, "models": sorted(models)}
    devices = ", ".join(sorted({m.device for m in models.values()}))
    print(f"serving {', '.join(sorted(models))} at {running.url} (on {devices})", flush=True)
    return running


def _route_to(head: str) -> str:
    """This machine's address on the way to the head (where the head can reach it)."""
    import socket

    host = head.rpartition("://")[2].rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


async def _run_nannies(opts: WorkerOptions, head: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        nanny = await _start_nanny(head, opts)
        print(f"clusterai worker {opts.name!r} joined {head} (worker {nanny.worker_address})", flush=True)
        lost = False
        try:
            lost = await _supervise(nanny, head, opts, stop)
        finally:
            if lost:
                print(f"head {head} is gone; looking for a head among {', '.join(opts.heads)}", flush=True)
            # with the head gone there is nobody to hand work back to: do not wait for a polite close
            await nanny.close(timeout=2 if lost else 10)
        if not lost:
            return
        head = await find_head(opts, opts.death_timeout)


_RETIRED = "clusterai_retired"  # set on a nanny the head is retiring


async def _start_nanny(head: str, opts: WorkerOptions) -> Any:
    from distributed import Nanny

    from clusterai.worker.gate import GatedNanny

    env = {TOKEN_ENV: opts.token, PROFILE_ENV: json.dumps(opts.profile),
           **library_threads(opts.nthreads or os.cpu_count() or 1)}
    # over TLS the nanny and its worker check every peer's certificate role (gate.py); without TLS
    # there is no identity to check: everyone who can reach them is trusted
    nanny_class = GatedNanny if opts.security is not None else Nanny
    nanny = nanny_class(
        head, name=opts.name, nthreads=opts.nthreads, memory_limit=opts.memory_limit,
        death_timeout=opts.death_timeout, security=opts.security, host=opts.host, env=env,
        startup_information={TOKEN_KEY: presented_token},
    )
    setattr(nanny, _RETIRED, False)

    async def retiring() -> None:
        # the head says so before it retires this worker (`clusterai workers remove`): its close is
        # then a retirement, not a lost head, and the supervisor stops instead of joining again
        setattr(nanny, _RETIRED, True)

    nanny.handlers[RETIRING_HANDLER] = retiring  # behind the nanny's gate like every handler
    return await nanny


async def _supervise(nanny: Any, head: str, opts: WorkerOptions, stop: asyncio.Event) -> bool:
    """True when the head is lost; False when asked to stop or retired by the head. Counts worker
    restarts."""
    restarts: collections.deque[float] = collections.deque()
    last_pid = nanny.pid
    lost_since: float | None = None
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), opts.probe_every)
            return False
        except asyncio.TimeoutError:
            pass
        now = time.monotonic()
        pid = nanny.pid
        if pid is not None and last_pid is not None and pid != last_pid:
            restarts.append(now)
            log.warning("worker process %s died; the nanny restarted it as %s", last_pid, pid)
        last_pid = pid or last_pid
        while restarts and now - restarts[0] > opts.restart_window:
            restarts.popleft()
        if len(restarts) > opts.max_restarts:
            raise WorkerCrashing(f"the worker process died {len(restarts)} times in "
                                 f"{opts.restart_window:g} s; giving up (see its log above)")
        if str(nanny.status.name) in ("closing", "closed", "failed"):
            if getattr(nanny, _RETIRED, False):
                print(f"head {head} retired this worker; stopping", flush=True)
                return False
            return True
        if await _reachable(head, opts):
            lost_since = None
        elif lost_since is None:
            lost_since = now
        elif now - lost_since >= opts.head_lost_after:
            return True
    return False


def default_name() -> str:
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"
