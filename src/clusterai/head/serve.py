"""Assembling a head: what `clusterai up`, `clusterai scheduler` and the demo run. The cluster
runtime (Dask, the coordinator and its plugins), the models the head serves itself, and the REST
API beside the coordinator, wired together here and nowhere else."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Protocol

from clusterai import __version__
from clusterai.api.server import ApiServer, start_beside, url_for_workers
from clusterai.config import ClusterConfig
from clusterai.core.net import is_loopback
from clusterai.head.plugins import GatewayAccess
from clusterai.head.runtime import ClusterRuntime
from clusterai.llm.serving import serve_for_head
from clusterai.store.leader import Leadership
from clusterai.store.urls import redact
from clusterai.worker.discovery import Advertiser
from clusterai.worker.tls import CA_KEY

log = logging.getLogger("clusterai.head.serve")


class Console(Protocol):
    def print(self, *objects: Any, **options: Any) -> None: ...


async def start_api(config: ClusterConfig, runtime: ClusterRuntime, ports: tuple[int, ...] = ()
                    ) -> tuple[ApiServer, Path | None]:
    """The REST API beside the runtime's coordinator; tasks that call the LLM gateway are then told
    where it is, with the credential of the worker they run on (head/plugins.GatewayAccess)."""
    coordinator = runtime.coordinator
    assert coordinator is not None, "start the runtime first"
    api, written = await start_beside(config, wake=coordinator.wake, coordinator_registry=coordinator.metrics.registry,
                                      worker_slots=lambda: coordinator.slots.values(),
                                      dask_dashboard=runtime.dashboard_link, ports=ports, join_ca=_join_ca(runtime))
    coordinator.add_plugin(GatewayAccess(url_for_workers(api.url, coordinator.client.scheduler.address),
                                         api.credential_for))
    return api, written


def _join_ca(runtime: ClusterRuntime) -> tuple[Path, str] | None:
    """A head whose TLS folder holds the CA's key enrolls machines through its API."""
    security = runtime.head.security if runtime.head is not None else None
    ca_file = getattr(security, "tls_ca_file", None)
    if not ca_file or not (Path(ca_file).parent / CA_KEY).exists() or runtime.scheduler_address is None:
        return None
    return Path(ca_file).parent, str(runtime.scheduler_address)


async def _advertise(runtime: ClusterRuntime, api: ApiServer) -> Advertiser | None:
    """Announce a head that enrolls machines (its API over HTTPS, its CA key at hand): by default
    when its API listens beyond loopback; `--advertise` forces it (on loopback: on loopback only)."""
    head = runtime.head
    join = api.context.join
    if head is None or join is None or not api.tls or head.advertise is False:
        return None
    loopback = is_loopback(api.host)
    if head.advertise is None and loopback:
        return None
    url = url_for_workers(api.url, str(runtime.scheduler_address))
    fp = join.ca()["fingerprint"]
    host = url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    advertiser = Advertiser({"api": url, "fingerprint": fp, "cluster": fp[:12], "version": __version__},
                            name=f"clusterai-{fp[:12]}", host=host if host[:1].isdigit() else "0.0.0.0",
                            port=int(url.rsplit(":", 1)[1]), beacon_port=head.beacon_port,
                            interfaces=["127.0.0.1"] if loopback else None)
    try:
        await asyncio.to_thread(advertiser.start)  # python-zeroconf's blocking API waits on a loop of its own
    except OSError as exc:
        log.warning("cannot advertise this head: %s", exc)
        return None
    return advertiser


async def serve(runtime: ClusterRuntime, out: Console, err: Console, *, leadership: Leadership | None = None,
                poll: float = 1.0) -> bool:
    """Run a head until Ctrl-C/SIGTERM, or until another scheduler took the lead (then True): the
    cluster runtime, the models the head serves itself, and the API beside the coordinator.
    `out` and `err` say what happens (rich consoles: the messages carry rich markup)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    conf = runtime.config
    api = None
    advertiser: Advertiser | None = None
    lost = False

    async def keep_the_lead() -> None:
        nonlocal lost
        while True:
            await asyncio.sleep(poll)
            assert leadership is not None
            if await asyncio.to_thread(leadership.still_held) is False:
                err.print("[red]another scheduler took the lead on this store; stopping this one[/]")
                lost = True
                stop.set()
                return

    await runtime.start()
    watchdog = asyncio.create_task(keep_the_lead()) if leadership is not None else None
    models = None
    try:
        if conf.api.enabled and conf.gateway.serve:
            names = ", ".join(spec.partition("=")[0] for spec in conf.gateway.serve)
            models, conf = await asyncio.to_thread(serve_for_head, conf)  # loading takes seconds
            assert models is not None
            out.print(f"serving {names} to the gateway (backend 'head', {models.url})", highlight=False)
        if conf.api.enabled:
            api, written = await start_api(conf, runtime)
            url = api.url
            out.print(f"REST API: {url}  (OpenAPI at {url}/docs, metrics at {url}/metrics)")
            out.print(f"Dashboard: {url}/  (sign in with a token)")
            if written:
                out.print(f"first admin token written to {written} (readable by you only)")
            if not is_loopback(api.host) and not api.tls:
                err.print("[yellow]warning:[/] the API listens beyond this machine without TLS; tokens travel "
                          "in clear text. Use --tls-cert/--tls-key.")
            advertiser = await _advertise(runtime, api)
            if advertiser is not None:
                how = "mDNS _clusterai._tcp and " if advertiser.mdns else ""
                out.print(f"advertised for `clusterai join --discover` ({how}UDP beacon on port "
                          f"{advertiser.beacon_port}); CA fingerprint {advertiser.record['fingerprint']}",
                          highlight=False)
        out.print(f"[bold green]clusterai is up[/]: store {redact(conf.store)}, scheduler {runtime.scheduler_address}",
                  highlight=False)
        if runtime.dashboard_link:
            out.print(f"Dask dashboard: {runtime.dashboard_link}")
        out.print("Ctrl-C to stop.")
        sys.stdout.flush()
        await stop.wait()
    finally:
        out.print("stopping...")
        if watchdog is not None:
            watchdog.cancel()
        if advertiser is not None:
            await asyncio.to_thread(advertiser.stop)
        if api is not None:
            await api.stop()
        if models is not None:
            models.stop()
        await runtime.stop()
    return lost
