"""`clusterai worker` (light: Dask, psutil and the standard library) and `clusterai scheduler` (the
head node: Dask scheduler + coordinator + REST API, standing by while another head leads)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer

from clusterai.errors import BadInput, ClusterAIError, ConfigError
from clusterai.pairs import parse_pairs

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_REFUSED = 1, 2, 3, 4
EXIT_LEAD_LOST = 5


def _fail(code: int, message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _security(tls_dir: Path | None, node: str) -> object | None:
    if tls_dir is None:
        return None
    from clusterai.tls import node_security

    return node_security(tls_dir, node)


def worker(
    address: str = typer.Argument(..., help="the head's Dask address, e.g. tls://head:8786; several, "
                                  "comma-separated, for a head and its standbys"),
    token: str | None = typer.Option(None, "--token", "-t", envvar="CLUSTERAI_ENROLLMENT_TOKEN",
                                     help="enrollment token (`clusterai token create --role worker`)"),
    token_file: Path | None = typer.Option(None, "--token-file", help="read the enrollment token from a file"),
    name: str | None = typer.Option(None, "--name", help="worker name (default: host name and pid)"),
    label: list[str] = typer.Option([], "--label", "-l", help="k=v label for placement (repeatable)"),
    resources: list[str] = typer.Option([], "--resources", "-r", help="NAME=amount, e.g. GPU=1 (repeatable)"),
    nthreads: int = typer.Option(1, "--nthreads", min=1, max=1024, help="jobs run at once"),
    memory_limit: str = typer.Option("auto", "--memory-limit", help="e.g. 4GiB, or auto"),
    death_timeout: float = typer.Option(60.0, "--death-timeout", min=1.0,
                                        help="seconds to look for a head before giving up (at start and "
                                        "after losing one)"),
    max_restarts: int = typer.Option(5, "--max-restarts", min=0, help="worker process restarts allowed in "
                                     "10 minutes before the command gives up"),
    host: str | None = typer.Option(None, "--host", help="address to listen on (default: the one that "
                                    "routes to the head)"),
    tls_dir: Path | None = typer.Option(None, "--tls-dir", help="folder with ca.pem and this node's "
                                        "certificate (`clusterai certs create`)"),
    tls_node: str = typer.Option("worker", "--tls-node", help="which certificate in --tls-dir: NAME.pem/NAME.key"),
) -> None:
    """Join a head node as a worker (a Dask worker under a nanny, restarted when it dies)."""
    from clusterai.engine.node import (
        EnrollmentRefused,
        HeadUnreachable,
        WorkerCrashing,
        WorkerOptions,
        default_name,
        run_worker,
    )

    try:
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise BadInput(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise BadInput("an enrollment token is required: --token, --token-file or CLUSTERAI_ENROLLMENT_TOKEN "
                           "(make one on the head: clusterai token create NAME --role worker)")
        heads = [a.strip() for a in address.split(",") if a.strip()]
        if not heads:
            raise BadInput("give the head's address, e.g. tcp://head:8786")
        opts = WorkerOptions(
            heads=heads, token=token, name=name or default_name(),
            labels=parse_pairs("--label", label), resources=parse_pairs("--resources", resources, numbers=True),
            nthreads=nthreads, memory_limit=memory_limit, death_timeout=death_timeout,
            max_restarts=max_restarts, host=host, security=_security(tls_dir, tls_node),
        )
        asyncio.run(_until_signal(lambda stop: run_worker(opts, stop)))
    except (BadInput, ConfigError) as exc:
        raise _fail(EXIT_BAD_INPUT, str(exc)) from None
    except HeadUnreachable as exc:
        raise _fail(EXIT_UNREACHABLE, str(exc)) from None
    except EnrollmentRefused as exc:
        raise _fail(EXIT_REFUSED, str(exc)) from None
    except (WorkerCrashing, ClusterAIError) as exc:
        raise _fail(EXIT_FAILED, str(exc)) from None


async def _until_signal(main: object) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)  # type: ignore[operator]


def scheduler(
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
) -> None:
    """Run a head node: Dask scheduler + coordinator + REST API on a shared store (PostgreSQL for a
    standby). A second one on the same store stands by and takes over when the first dies."""
    from clusterai.cli_common import errors_to_exit_codes, settings

    @errors_to_exit_codes
    def run() -> None:
        from clusterai.engine.runtime import HeadSettings
        from clusterai.jobs.store import open_store

        conf = settings.config(**{"api.host": api_host, "api.port": api_port,
                                  "api.enabled": False if no_api else None})
        head = HeadSettings(host=host, port=port, security=_security(tls_dir, tls_node),
                            dashboard_address=dashboard_address)
        open_store(conf.store).close()  # a wrong URL or password fails here, before standing by
        asyncio.run(_lead_then_serve(conf, head, standby_poll))

    run()


async def _lead_then_serve(conf: object, head: object, poll: float) -> None:
    from clusterai.cli import serve
    from clusterai.engine.runtime import ClusterRuntime
    from clusterai.leader import leadership_for

    leadership = leadership_for(conf.store)  # type: ignore[attr-defined]
    if not await asyncio.to_thread(leadership.try_acquire):
        print("standing by: another scheduler leads on this store; taking over when it stops", flush=True)
        while not await asyncio.to_thread(leadership.try_acquire):
            await asyncio.sleep(poll)
        print("taking over as the active scheduler", flush=True)
    try:
        lost = await serve(ClusterRuntime(conf, head=head), leadership=leadership, poll=poll)  # type: ignore[arg-type]
    finally:
        leadership.release()
    if lost:
        raise typer.Exit(EXIT_LEAD_LOST)

