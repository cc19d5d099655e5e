"""`clusterai certs create`: the cluster's private CA and one TLS certificate per node for the Dask
comms, made on the head, plus what to copy to which machine."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from clusterai.cli.common import errors_to_exit_codes, settings
from clusterai.errors import BadInput
from clusterai.store.open import open_store
from clusterai.worker.tls import (
    CA_CERT,
    CA_KEY,
    DEFAULT_DAYS,
    DEFAULT_NODES,
    ROLES,
    Identity,
    check_node_names,
    create_certs,
    default_role,
    read_certificate,
    serial_text,
)

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
    role: str | None = typer.Option(None, "--role", help=f"what these certificates let their holder be: "
                                    f"{', '.join(ROLES)} (default: head for the node named head, else worker; a "
                                    "client certificate may run code on the head)"),
) -> None:
    """Make the CA (once; later runs reuse it) and a key + certificate per node, signed by it."""
    nodes = node or list(DEFAULT_NODES)
    ca_existed = (directory / CA_CERT).exists()
    files = create_certs(directory, hosts=host, nodes=nodes, days=days, overwrite=overwrite, role=role)
    # Plain echo, not Rich: paths must not wrap or be read as markup.
    typer.echo(f"{'reused the CA' if ca_existed else 'made a new CA'} in {directory}")
    typer.echo(f"{files[CA_KEY]} stays on this machine (the head) and nowhere else: whoever has it can make "
               "certificates the cluster trusts")
    for name in dict.fromkeys(nodes):
        where = "this machine, if it is the head" if name == "head" else f"the machine that runs {name}"
        typer.echo(f"node {name} ({role or default_role(name)}): {files[CA_CERT]} {files[name + '.pem']} "
                   f"{files[name + '.key']} -> {where} (keep the .key readable by its owner only)")


@certs_app.command("revoke")
@errors_to_exit_codes
def certs_revoke(
    node: str | None = typer.Argument(None, help="the node whose certificate (NODE.pem in --dir) the head refuses"),
    directory: Path = typer.Option(Path(".clusterai/certs"), "--dir", help="where the certificates live"),
    serial: str | None = typer.Option(None, "--serial", help="revoke by serial number instead (hex), e.g. when "
                                      "the certificate file is gone"),
) -> None:
    """Make the head refuse a certificate, on the store every head reads: a worker holding it is
    closed within seconds and cannot join again; a new certificate for the node (--overwrite) works."""
    if (node is None) == (serial is None):
        raise BadInput("give the node (its certificate in --dir) or --serial, one of them")
    if serial is not None:
        try:
            identity = Identity(serial_text(serial), None, None)
        except ValueError:
            raise BadInput(f"--serial {serial!r} is not a hexadecimal serial number") from None
    else:
        check_node_names([str(node)])
        identity = read_certificate(directory / f"{node}.pem")
    store = open_store(settings.config().store)
    try:
        fresh = store.revoke_certificate(identity.serial, identity.name, identity.role, time.time(), by="cli")
    finally:
        store.close()
    what = f"{identity.name} ({identity.role or 'no role'}) " if identity.name else ""
    typer.echo(f"certificate {what}{identity.serial} {'revoked' if fresh else 'was revoked already'}; heads "
               "refuse it within seconds")


@certs_app.command("list")
@errors_to_exit_codes
def certs_list(
    directory: Path = typer.Option(Path(".clusterai/certs"), "--dir", help="where the certificates live"),
) -> None:
    """The node certificates in --dir: name, role, serial, expiry, and whether the head refuses it."""
    store = open_store(settings.config().store)
    try:
        revoked = store.revoked_certificates()
    finally:
        store.close()
    files = sorted(p for p in directory.glob("*.pem") if p.name != CA_CERT) if directory.is_dir() else []
    if not files:
        raise BadInput(f"no node certificates in {directory}")
    for path in files:
        identity = read_certificate(path)
        state = "REVOKED" if identity.serial in revoked else "valid"
        typer.echo(f"{path.stem}\t{identity.role or 'no role (make it again)'}\t{identity.serial}\t{state}")
