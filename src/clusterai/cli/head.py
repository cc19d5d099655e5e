"""`clusterai scheduler`: a head node — Dask scheduler + coordinator + REST API on a shared store.
A second one on the same store stands by and takes over when the first dies (store/leader.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from clusterai.cli.common import err, errors_to_exit_codes, out, settings
from clusterai.cli.tokens import parse_duration
from clusterai.core.net import is_loopback
from clusterai.errors import EXIT_LEAD_LOST, BadInput
from clusterai.head.runtime import ClusterRuntime, HeadSettings
from clusterai.head.serve import serve
from clusterai.service.access import new_token
from clusterai.store.leader import leadership_for
from clusterai.store.open import open_store
from clusterai.worker.cli import serve_model_main, worker_main
from clusterai.worker.discovery import BEACON_PORT
from clusterai.worker.join import join_main, make_code
from clusterai.worker.tls import CA_CERT, fingerprint, node_security


def scheduler(
    store: str | None = typer.Option(None, "--store", help="job store URL shared by the heads, e.g. "
                                     "postgresql://user:password@db:5432/clusterai", envvar="CLUSTERAI_STORE"),
    host: str = typer.Option("127.0.0.1", "--host", help="address workers reach this head on (0.0.0.0: all)"),
    port: int = typer.Option(8786, "--port", min=0, max=65535, help="Dask scheduler port (0: any free one)"),
    api_host: str | None = typer.Option(None, "--api-host", help="REST API bind address (default 127.0.0.1)"),
    api_port: int | None = typer.Option(None, "--api-port", min=0, max=65535, help="REST API port"),
    no_api: bool = typer.Option(False, "--no-api", help="do not serve the REST API"),
    tls_dir: Path | None = typer.Option(None, "--tls-dir", help="folder with ca.pem and this node's certificate: "
                                        "workers must then connect with TLS; plain tcp is refused"),
    tls_node: str = typer.Option("head", "--tls-node", help="which certificate in --tls-dir"),
    dashboard_address: str | None = typer.Option(None, "--dask-dashboard", help="serve Dask's dashboard here, "
                                                 "e.g. 127.0.0.1:8787 (needs bokeh)"),
    standby_poll: float = typer.Option(1.0, "--standby-poll", min=0.1, max=60,
                                       help="while standing by, how often to try to take the lead (seconds)"),
    allow_plain_tcp: bool = typer.Option(False, "--allow-plain-tcp", help="listen beyond loopback without TLS "
                                         "(only on a network where everyone who can reach the port is trusted)"),
    advertise: bool | None = typer.Option(None, "--advertise/--no-advertise", help="announce this head for "
                                          "`clusterai join --discover` (mDNS and a UDP beacon); default: when it "
                                          "enrolls machines and its API listens beyond loopback"),
    beacon_port: int = typer.Option(BEACON_PORT, "--beacon-port", min=0, max=65535,
                                    help="UDP port the beacon answers on (0: any free one)"),
) -> None:
    """Run a head node: Dask scheduler + coordinator + REST API on a shared store (PostgreSQL for a
    standby). A second one on the same store stands by and takes over when the first dies."""
    @errors_to_exit_codes
    def run() -> None:
        if store:
            settings.store = store
        conf = settings.config(**{"api.host": api_host, "api.port": api_port,
                                  "api.enabled": False if no_api else None})
        security = None
        if tls_dir is not None:
            security = node_security(tls_dir, tls_node)
        else:
            if not is_loopback(host) and not allow_plain_tcp:
                # Dask's protocol carries pickled functions: whoever can open a plain-TCP connection
                # to a scheduler can run code on every worker. Mutual TLS is what keeps them out.
                raise BadInput(f"--host {host} without TLS would let anyone who can reach port {port} run code "
                               "on the cluster (Dask's protocol carries pickled functions). Use --tls-dir "
                               "(make certificates with `clusterai certs create`), or --allow-plain-tcp on a "
                               "network where everyone is trusted")
            if not is_loopback(host):
                err.print("[yellow]warning:[/] workers reach this head over the network without TLS: anyone "
                          "who can reach the port can run code on the cluster, and tokens and job data travel "
                          "in clear text.")
            else:
                err.print("[yellow]note:[/] without --tls-dir, every user of this machine can connect to the "
                          "scheduler's port and run code as you; give --tls-dir to let in certificate holders only")
        head = HeadSettings(host=host, port=port, security=security, dashboard_address=dashboard_address,
                            advertise=advertise, beacon_port=beacon_port)
        open_store(conf.store).close()  # a wrong URL or password fails here, before standing by
        asyncio.run(_lead_then_serve(conf, head, standby_poll))

    run()


async def _lead_then_serve(conf: Any, head: Any, poll: float) -> None:
    leadership = leadership_for(conf.store)
    if not await asyncio.to_thread(leadership.try_acquire):
        print("standing by: another scheduler leads on this store; taking over when it stops", flush=True)
        while not await asyncio.to_thread(leadership.try_acquire):
            await asyncio.sleep(poll)
        print("taking over as the active scheduler", flush=True)
    try:
        lost = await serve(ClusterRuntime(conf, head=head), out, err, leadership=leadership, poll=poll)
    finally:
        leadership.release()
    if lost:
        raise typer.Exit(EXIT_LEAD_LOST)


def worker(ctx: typer.Context) -> None:
    """Join a head node as a worker: clusterai worker ADDRESS --token T [--name --label k=v --resources GPU=1
    --nthreads --memory-limit --death-timeout --tls-dir] (--help for all)."""
    raise typer.Exit(worker_main(list(ctx.args)))


def join(ctx: typer.Context) -> None:
    """Join a cluster with a join code from `clusterai join-code`: clusterai join CODE [--name --dir
    --no-start, and any `clusterai worker` option] (--help for all)."""
    raise typer.Exit(join_main(list(ctx.args)))


@errors_to_exit_codes
def join_code(
    token: str | None = typer.Option(None, "--token", help="a join token (default: make one, single-use)"),
    url: str = typer.Option("", "--url", help="the head's REST API as the new machine reaches it (https://...)"),
    tls_dir: Path = typer.Option(Path(".clusterai/certs"), "--tls-dir", help="the head's certificate folder"),
    uses: int = typer.Option(1, "--uses", min=1, max=10_000, help="joins the new token allows"),
    expires_in: str = typer.Option("1h", "--expires-in", help="how long the new token lasts: 30m, 1h, 7d"),
    name: str = typer.Option("join", "--name", help="the new token's name"),
    only_fingerprint: bool = typer.Option(False, "--fingerprint", help="print the CA's fingerprint only (for "
                                          "`clusterai join --discover --fingerprint`)"),
) -> None:
    """Print a join code: the API's URL, the CA's fingerprint and a join token, in one string."""
    try:
        pin = fingerprint((tls_dir / CA_CERT).read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"--tls-dir: cannot read the CA certificate {tls_dir / CA_CERT}: {exc}") from None
    if only_fingerprint:
        typer.echo(pin)
        return
    if not url.startswith("https://"):
        raise BadInput(f"--url: joining hands out a private key, so only over HTTPS; got {url!r}")
    if token is None:
        token, record = new_token(name, "worker", created_by="join-code", uses=uses,
                                  expires_in=parse_duration(expires_in, "--expires-in"))
        store = open_store(settings.config().store)
        try:
            store.add_token(record)
        finally:
            store.close()
        typer.echo(f"made join token {record.id}: {uses} use(s), expires in {expires_in}", err=True)
    typer.echo(make_code(url, pin, token))


def serve_model(ctx: typer.Context) -> None:
    """Serve models over the Ollama and OpenAI APIs on their own: clusterai serve-model NAME=SPEC...
    [--host --port --token-env] (--help for all)."""
    raise typer.Exit(serve_model_main(list(ctx.args)))
