"""`clusterai certs create`: the cluster's private CA and one TLS certificate per node for the Dask
comms, made on the head, plus what to copy to which machine."""

from __future__ import annotations

from pathlib import Path

import typer

from clusterai.cli_common import errors_to_exit_codes
from clusterai.tls import CA_CERT, CA_KEY, DEFAULT_DAYS, DEFAULT_NODES, create_certs

certs_app = typer.Typer(help="TLS certificates for the Dask comms between head and workers.", no_args_is_help=True)


@certs_app.command("create")
@errors_to_exit_codes
def certs_create(
    directory: Path = typer.Option(Path(".clusterai/certs"), "--dir", help="where the CA and certificates live"),
    host: list[str] = typer.Option([], "--host", help="DNS name or IP address the nodes are reached by, "
                                   "added to every certificate (repeatable; localhost and 127.0.0.1 always are)"),
    node: list[str] = typer.Option([], "--node", help="make a certificate for this node (repeatable; "
                                   f"default: {', '.join(DEFAULT_NODES)})"),
    days: int = typer.Option(DEFAULT_DAYS, "--days", min=1, max=36500, help="how long the node certificates last"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing certificates of these nodes"),
) -> None:
    """Make the CA (once; later runs reuse it) and a key + certificate per node, signed by it."""
    nodes = node or list(DEFAULT_NODES)
    ca_existed = (directory / CA_CERT).exists()
    files = create_certs(directory, hosts=host, nodes=nodes, days=days, overwrite=overwrite)
    # Plain echo, not Rich: paths must not wrap or be read as markup.
    typer.echo(f"{'reused the CA' if ca_existed else 'made a new CA'} in {directory}")
    typer.echo(f"{files[CA_KEY]} stays on this machine (the head) and nowhere else: whoever has it can make "
               "certificates the cluster trusts")
    for name in dict.fromkeys(nodes):
        where = "this machine, if it is the head" if name == "head" else f"the machine that runs {name}"
        typer.echo(f"node {name}: {files[CA_CERT]} {files[name + '.pem']} {files[name + '.key']} -> {where} "
                   "(keep the .key readable by its owner only)")
