"""The role check at the edge of every Dask server clusterai runs over TLS: what a peer may ask of
a scheduler, a worker or a nanny is what its certificate's role allows, nothing more.

Dask is not a security boundary by itself: its TLS accepts any certificate the cluster's CA signed,
for any role, and its handlers include `run_function` (code on the scheduler), `run` (code on a
worker or nanny) and `compute-task` (pickled functions). Here every operation a comm asks for is
checked against the peer's identity (tls.Identity, read from the handshake):

- the server's own certificate (a nanny and its worker, the head and its own client), `head` and
  `client` certificates (made on purpose by the admin, who holds the CA key) may do anything but
  register as a worker;
- a `worker` certificate may, on the scheduler, register as a worker and keep itself registered
  (heartbeats, its own retirement), ask for its enrollment and send events; on another worker, read
  data (`get_data`); on a nanny, nothing. Operations that name a worker address must name one this
  certificate registered;
- a revoked certificate (by serial, `clusterai certs revoke`), or one made before certificates had
  roles, may do nothing.

A refused operation closes the comm: the peer sees a closed connection, the server logs why once
per peer and operation. The enrollment check is answered instead, so that `clusterai worker` can
say why it was refused. This module imports nothing beyond Dask and the standard library: light
workers load it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any

from distributed import Nanny, Worker
from distributed.comm.core import CommClosedError

from clusterai.worker.tls import Identity, certificate_identity, identity_of

log = logging.getLogger("clusterai.gate")

TRUSTED_ROLES = frozenset({"head", "client"})
HARMLESS = frozenset({"identity", "echo"})
# What a worker's own processes ask of the scheduler (read from distributed's worker.py and nanny.py)
WORKER_TO_SCHEDULER = HARMLESS | {"register-worker", "register_nanny", "heartbeat_worker", "unregister",
                                  "retire_workers", "who_has", "has_what", "log_event", "clusterai_enroll"}
WORKER_TO_WORKER = HARMLESS | {"get_data"}
_WORKERS_ONLY = frozenset({"register-worker", "register_nanny"})
# operations answered rather than cut off when refused: the worker shows the reason and exits
_ANSWERED = {"clusterai_enroll": lambda reason: {"status": "refused", "reason": f"the head refuses this "
                                                                                 f"machine's certificate: {reason}"}}
# operations whose arguments name worker addresses: each must be one this certificate registered
_NAMES_WORKERS = {"heartbeat_worker": "address", "unregister": "address", "retire_workers": "workers"}


def peer_identity(comm: Any) -> Identity | None:
    return identity_of(getattr(comm, "extra_info", {}).get("peercert"))


class Gate:
    """The policy of one server: `kind` is scheduler, worker or nanny; `own` its certificate's identity."""

    def __init__(self, kind: str, own: Identity | None, allowed: frozenset[str]):
        self.kind = kind
        self.own = own
        self.allowed = allowed  # for worker certificates
        self.revoked: frozenset[str] = frozenset()  # serials, kept current by the head (scheduler only)
        self.registered: dict[str, str] = {}  # worker address -> serial of the certificate that registered it
        self._logged: set[tuple[str, str]] = set()

    def refusal(self, comm: Any, op: str, msg: dict[str, Any]) -> str | None:
        """Why `comm` may not do `op` with `msg`, or None when it may."""
        peer = peer_identity(comm)
        if peer is None:
            return "no client certificate"
        if peer.serial in self.revoked:
            return f"certificate {peer.serial} ({peer.name}) is revoked"
        if peer.role is None:
            return (f"certificate {peer.name} carries no clusterai role (made before roles existed): make it "
                    "again with `clusterai certs create --overwrite`")
        if op in _WORKERS_ONLY and peer.role != "worker":
            return f"only worker certificates may register as workers, not a {peer.role} certificate ({peer.name})"
        if (self.own is not None and peer.serial == self.own.serial) or peer.role in TRUSTED_ROLES:
            return None
        if op not in self.allowed:
            return (f"a {peer.role or 'role-less'} certificate ({peer.name}) may not call {op!r} on a "
                    f"{self.kind}")
        if op == "register-worker":
            address = str(msg.get("address"))
            holder = self.registered.setdefault(address, peer.serial)
            if holder != peer.serial:
                return f"worker address {address} was registered by another certificate"
        named = _NAMES_WORKERS.get(op)
        if named is not None:
            value = msg.get(named)
            addresses = [value] if isinstance(value, str) else list(value or [])
            foreign = [a for a in addresses if self.registered.get(str(a)) != peer.serial]
            if foreign:
                return f"{op!r} names workers this certificate did not register: {', '.join(map(str, foreign))}"
        return None

    def forget(self, address: str) -> None:
        self.registered.pop(address, None)

    def refuse(self, comm: Any, op: str, reason: str, *, close: bool = True) -> None:
        key = (str(peer_identity(comm)), op)
        if key not in self._logged:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged.add(key)
            log.warning("refused %r from %s on this %s: %s", op, getattr(comm, "peer_address", "?"), self.kind,
                        reason)
        if close:
            comm.abort()


def _gated(gate: Gate, op: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    params = list(inspect.signature(handler).parameters.values())
    takes_comm = bool(params) and params[0].name == "comm"

    @functools.wraps(handler)
    def gated(comm: Any, **msg: Any) -> Any:
        reason = gate.refusal(comm, op, msg)
        if reason is not None and op in _ANSWERED:
            gate.refuse(comm, op, reason, close=False)
            return _ANSWERED[op](reason)
        if reason is not None:
            gate.refuse(comm, op, reason)
            raise CommClosedError(f"refused: {reason}")  # Dask stops reading this comm
        return handler(comm, **msg) if takes_comm else handler(**msg)

    # Dask inspects a handler's signature: it must see `comm` first (so it passes the comm) and the
    # handler's own keywords (so that, e.g., `serializers` reach it)
    comm_param = inspect.Parameter("comm", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    setattr(gated, "__signature__", inspect.Signature([comm_param, *params[1 if takes_comm else 0:]]))  # noqa: B010
    return gated


class GatedHandlers(dict[str, Any]):
    """A server's handler table whose every handler checks the peer first, including handlers that
    plugins add later (the enrollment check)."""

    def __init__(self, gate: Gate, handlers: Iterable[tuple[str, Any]]):
        super().__init__(handlers)
        self.gate = gate
        self._wrapped: dict[str, tuple[Any, Callable[..., Any]]] = {}

    def __getitem__(self, op: str) -> Callable[..., Any]:
        handler = super().__getitem__(op)
        cached = self._wrapped.get(op)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[op] = (handler, _gated(self.gate, op, handler))
        return cached[1]


def install(server: Any, gate: Gate) -> Gate:
    """Put `gate` in front of every handler of a Dask server, before it starts listening."""
    server.handlers = GatedHandlers(gate, server.handlers.items())
    return gate


def own_identity(security: Any, role: str) -> Identity | None:
    """This process's identity from its Dask Security (certificate files), or None without TLS."""
    if security is None or not getattr(security, "require_encryption", False):
        return None
    cert, key = getattr(security, f"tls_{role}_cert"), getattr(security, f"tls_{role}_key")
    if not (cert and key and security.tls_ca_file):
        return None
    return certificate_identity(security.tls_ca_file, cert, key)


class GatedWorker(Worker):
    """The Dask worker `clusterai worker` runs over TLS: other workers may only read its data."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        own = own_identity(self.security, "worker")
        if own is not None:
            install(self, Gate("worker", own, WORKER_TO_WORKER))


class GatedNanny(Nanny):
    """The nanny `clusterai worker` runs over TLS: only the head (and its own worker) may command it."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["worker_class"] = GatedWorker
        super().__init__(*args, **kwargs)
        own = own_identity(self.security, "worker")
        if own is not None:
            install(self, Gate("nanny", own, HARMLESS))
