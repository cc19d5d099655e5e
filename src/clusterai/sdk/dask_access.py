"""A Dask client on the cluster clusterai manages, for operators: dask.bag, dask.dataframe and
`client.submit` work runs on the same workers as the jobs.

A Dask client may run any code on the scheduler and on every worker (Dask's protocol carries
pickled functions), so this is an operator's tool: no API token opens it, only what already lets
its holder run code on the cluster.

- A head over TLS (`clusterai scheduler --tls-dir`): a certificate of role `client` made by the
  admin (`clusterai certs create --node NAME --role client`), or the head's own. Any other
  certificate is refused here, before a connection is opened; the head's gate (worker/gate.py)
  would refuse it too, but only by closing the connection, which says nothing.
- The embedded cluster (`clusterai.connect()`): `embedded_dask_client` hands the process's own
  temporary credentials (Security.temporary(), held in memory) to a client in that same process.

Dask work shares the workers' threads with the jobs: a large dask.dataframe computation slows
the jobs placed on those workers while it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from distributed import Client
from distributed.comm.addressing import get_address_host, parse_address
from distributed.security import Security

from clusterai.core.net import is_loopback
from clusterai.errors import AuthRefused, BadInput, ConfigError, Unreachable
from clusterai.head.runtime import ClusterRuntime
from clusterai.worker.gate import TRUSTED_ROLES  # the roles the head lets be a Dask client
from clusterai.worker.tls import CA_CERT, certificate_identity, check_node_names, dask_security

SCHEDULER_ENV = "CLUSTERAI_SCHEDULER"
CERTS_ENV = "CLUSTERAI_CERTS"
DEFAULT_CERTS = Path(".clusterai/certs")  # where `clusterai certs create` writes by default
DEFAULT_TIMEOUT = 10.0
_ENCRYPTED = ("tls", "wss")
_PLAIN = ("tcp", "ws")  # ws: Dask's websocket comm runs in clear text whatever Security says
_HOW_TO_MAKE = ("the admin makes one on the head with `clusterai certs create --node NAME --role client` "
                "and hands over ca.pem, NAME.pem and NAME.key")


def dask_client(scheduler: str | None = None, *, certs: str | os.PathLike[str] | None = None,
                name: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                allow_plain_tcp: bool = False) -> Client:
    """A `distributed.Client` connected to the cluster's scheduler; it becomes Dask's default, so
    `bag.compute()` and `df.compute()` run on the cluster's workers. Close it when done.

    `scheduler`: the head's address as `clusterai scheduler` prints it (tls://head:8786), else
    $CLUSTERAI_SCHEDULER.

    Over TLS (tls://, wss://) the client presents a certificate from `certs` (else
    $CLUSTERAI_CERTS, else .clusterai/certs): the one named `name` (NAME.pem and NAME.key beside
    ca.pem), or the only `client` certificate there. Only a `client` or `head` certificate is
    used: a `worker` certificate, one made before certificates had roles, or a missing file is
    refused before anything is sent (AuthRefused or ConfigError, saying how to make the right one).

    In clear (tcp://, ws://, or no scheme) only to a loopback address: that is where `clusterai
    scheduler` without --tls-dir listens. Over a network a clear-text client could not tell the
    head from an impostor, and its code and data could be read and changed on the way; pass
    `allow_plain_tcp=True` only for a head started with --allow-plain-tcp, on a network where
    everyone is trusted. Certificates given with a clear-text address are refused rather than
    silently left unused.

    A scheduler that cannot be reached within `timeout` seconds, or that refuses the certificate
    (a revoked one), is Unreachable.
    """
    address = _scheduler_address(scheduler)
    scheme, _ = parse_address(address)
    if scheme in _ENCRYPTED:
        return _connect(address, client_security(_certs_dir(certs), name), timeout)
    if scheme not in _PLAIN:
        raise ConfigError(f"scheduler address {address!r}: a clusterai head listens on tls:// (or tcp:// on "
                          f"loopback), not {scheme}://")
    if certs is not None or name is not None:
        raise ConfigError(f"scheduler address {address!r} is plain {scheme} but certificates were given: use "
                          f"tls://{address.partition('://')[2] or address}")
    host = get_address_host(address)
    if not is_loopback(host) and not allow_plain_tcp:
        raise ConfigError(f"scheduler address {address!r} is plain {scheme} to another machine: anyone on the way "
                          "could read or change the code and data this client sends, and it could not tell the "
                          "head from another. Use tls:// with a client certificate, or allow_plain_tcp=True for a "
                          "head started with --allow-plain-tcp")
    return _connect(address, None, timeout)


def embedded_dask_client(runtime: ClusterRuntime, *, timeout: float = DEFAULT_TIMEOUT) -> Client:
    """A client on the scheduler this process's runtime started or connected to, with the same
    credentials the runtime's own client has (no new ones: nothing leaves the process)."""
    address = runtime.scheduler_address
    if address is None:
        raise BadInput("the cluster has no scheduler yet")
    if runtime.local_cluster is not None:
        security = runtime.local_cluster.security  # Security.temporary(), made at start
    else:
        security = runtime.head.security if runtime.head is not None else None
    return _connect(str(address), security, timeout)


def client_security(directory: Path, name: str | None) -> Security:
    """The Dask Security of the client certificate `name` in `directory` (or of the only one
    there), refused unless its role may be a Dask client."""
    ca = directory / CA_CERT
    if not ca.is_file():
        raise ConfigError(f"no {ca}: a Dask client needs the cluster's CA certificate and a certificate of role "
                          f"client; {_HOW_TO_MAKE}")
    node = name if name is not None else _only_client_certificate(directory)
    check_node_names([node])
    cert, key = directory / f"{node}.pem", directory / f"{node}.key"
    missing = [str(p) for p in (cert, key) if not p.is_file()]
    if missing:
        raise ConfigError(f"no {' or '.join(missing)}: a Dask client needs a certificate of role client; "
                          f"{_HOW_TO_MAKE}")
    role = certificate_identity(ca, cert, key).role  # also refuses a file that is garbled or of another CA
    if role not in TRUSTED_ROLES:
        held = f"of role {role}" if role else "without a role (made before certificates had roles)"
        raise AuthRefused(f"certificate {cert} is {held}: a Dask client needs a certificate of role client; "
                          f"{_HOW_TO_MAKE}", status=403)
    return dask_security(ca, cert, key)


def _only_client_certificate(directory: Path) -> str:
    """The node name of the one certificate of role client in `directory`. Never another role: the
    head's certificate lives in the same folder on the head, and is used only when named."""
    found = []
    for pem in sorted(directory.glob("*.pem")):
        key = pem.with_suffix(".key")
        if pem.name == CA_CERT or not key.is_file():
            continue
        try:
            if certificate_identity(directory / CA_CERT, pem, key).role == "client":
                found.append(pem.stem)
        except ConfigError:
            continue  # not ours to use (another CA, garbled): the others may still be
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"several client certificates in {directory} ({', '.join(found)}): pass name=")
    raise ConfigError(f"no certificate of role client in {directory}: {_HOW_TO_MAKE} (into {CERTS_ENV} or "
                      "certs=); on the head, name='head' uses the head's own")


def _scheduler_address(scheduler: str | None) -> str:
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if not address:
        raise ConfigError(f"no scheduler address: pass one (tls://head:8786, as `clusterai scheduler` prints it) "
                          f"or set {SCHEDULER_ENV}; on an embedded cluster use its client's dask_client()")
    return address


def _certs_dir(certs: str | os.PathLike[str] | None) -> Path:
    return Path(certs if certs is not None else os.environ.get(CERTS_ENV) or DEFAULT_CERTS).expanduser()


def _connect(address: str, security: Security | None, timeout: float) -> Client:
    try:
        return Client(address, security=security, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        # the head's gate refuses a revoked certificate by closing the connection: it looks the same
        raise Unreachable(f"cannot connect to the Dask scheduler at {address} within {timeout} s ({exc}); a "
                          "head also closes the connection of a revoked certificate") from None
