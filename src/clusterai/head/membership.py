"""Who may be a worker of this head, checked when a machine joins and kept true while it stays.

A Dask scheduler plugin on the head:
- answers `clusterai_enroll` (so `clusterai worker` can tell "wrong token" from "unreachable head"
  before it starts anything) and checks the token each worker presents when it registers: a worker
  without a valid worker token is closed, and the coordinator places work only on workers this
  plugin marked enrolled;
- every `interval` seconds, checks again the tokens of the enrolled workers and the certificates
  the head refuses (`clusterai certs revoke`): a worker whose token was revoked or expired, or whose
  certificate was revoked, is closed within seconds; it gets no more jobs, payloads or credentials
  (the coordinator loses it as it loses any worker: its running attempts go back to the queue).

The token itself travels in Dask's registration message and is dropped from the scheduler's
records once checked; only its id is kept, in memory, to check it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from clusterai.worker.enroll import ENROLLED_KEY, TOKEN_KEY
from clusterai.worker.gate import Gate, peer_identity

log = logging.getLogger("clusterai.membership")

# (token text) -> (token id, token name) when it may enroll a worker, else None; raises when it cannot tell
Verify = Callable[[str], "tuple[str, str] | None"]
# (token ids) -> those still usable (not revoked, not expired)
StillValid = Callable[[Collection[str]], "set[str]"]
# () -> serials of the certificates the head refuses
Revoked = Callable[[], "set[str]"]


class Membership(SchedulerPlugin):
    name = "clusterai-membership"

    def __init__(self, verify: Verify, still_valid: StillValid | None = None, revoked: Revoked | None = None,
                 gate: Gate | None = None, interval: float = 2.0):
        self.verify = verify
        self.still_valid = still_valid
        self.revoked = revoked
        self.gate = gate
        self.interval = interval
        self.tokens: dict[str, str] = {}  # worker address -> the id of the token it enrolled with
        self.scheduler: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.handlers["clusterai_enroll"] = self.check
        if self.still_valid is not None or self.revoked is not None:
            self._task = asyncio.create_task(self._keep_checking(), name="clusterai-membership")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def check(self, comm: Any = None, token: str | None = None, name: str | None = None) -> dict[str, str]:
        """A joining machine asks whether its token will do, before it starts a worker. "retry" when
        the head cannot tell now (its store is down): the worker asks again rather than give up."""
        identity = peer_identity(comm) if comm is not None else None
        if self.gate is not None and identity is not None and identity.role != "worker":
            return {"status": "refused", "reason": f"the head takes workers with a worker certificate only, "
                                                   f"not a {identity.role} certificate"}
        try:
            who = await asyncio.to_thread(self._lookup, token)
        except Exception as exc:  # noqa: BLE001 - store down: no verdict, not a refusal
            log.warning("cannot check the enrollment token of %r now: %s", name, exc)
            return {"status": "retry", "reason": f"the head cannot check tokens now ({type(exc).__name__})"}
        if who is None:
            log.warning("enrollment refused for %r: invalid, revoked or expired token, or not a worker token",
                        name)
            return {"status": "refused",
                    "reason": "the enrollment token is invalid, revoked, expired or not of role worker"}
        return {"status": "ok", "token": who[1]}

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is None:
            return
        token = ws.extra.pop(TOKEN_KEY, None)  # never kept: scheduler_info() would show it to every client
        try:
            who = self._lookup(token)
        except Exception as exc:  # noqa: BLE001 - store down: refuse now, the worker retries
            log.warning("cannot check an enrollment token: %s", exc)
            who = None
        if who is None:
            log.warning("worker %s (%s) has no valid enrollment token; closing it", ws.name, worker)
            self._close(worker, "clusterai-not-enrolled")
            return
        self.tokens[worker] = who[0]
        ws.extra[ENROLLED_KEY] = who[1]

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.tokens.pop(worker, None)
        if self.gate is not None:
            self.gate.forget(worker)

    def _lookup(self, token: Any) -> tuple[str, str] | None:
        if not isinstance(token, str) or not token:
            return None
        return self.verify(token)

    def _close(self, worker: str, why: str) -> None:
        ws = self.scheduler.workers.get(worker) if self.scheduler is not None else None
        if ws is not None:
            ws.extra.pop(ENROLLED_KEY, None)  # no placement from now on, even before Dask lets it go
        asyncio.ensure_future(self.scheduler.remove_worker(worker, close=True, stimulus_id=why))

    async def _keep_checking(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_members()
            except Exception as exc:  # noqa: BLE001 - the store may be down; members stay until it answers
                log.warning("cannot check the cluster's members now: %s", exc)

    async def check_members(self) -> None:
        """Close the workers whose token or certificate is no longer good, and refuse those certificates."""
        if self.revoked is not None:
            serials = frozenset(await asyncio.to_thread(self.revoked))
            if self.gate is not None and serials != self.gate.revoked:
                self.gate.revoked = serials
                self._drop_revoked_comms(serials)
            for worker in list(self.scheduler.workers):
                stream = self.scheduler.stream_comms.get(worker)
                identity = peer_identity(getattr(stream, "comm", None))
                if identity is not None and identity.serial in serials:
                    log.warning("worker %s holds revoked certificate %s (%s); closing it", worker, identity.serial,
                                identity.name)
                    self._close(worker, "clusterai-certificate-revoked")
        if self.still_valid is not None and self.tokens:
            held = dict(self.tokens)
            good = await asyncio.to_thread(self.still_valid, set(held.values()))
            for worker, token_id in held.items():
                if token_id not in good and worker in self.scheduler.workers:
                    log.warning("the enrollment token of worker %s was revoked or expired; closing it", worker)
                    self.tokens.pop(worker, None)
                    self._close(worker, "clusterai-token-revoked")

    def _drop_revoked_comms(self, serials: frozenset[str]) -> None:
        """Connections already open from a revoked certificate (clients, rpc pools) are cut now."""
        for comm in list(getattr(self.scheduler, "_comms", {})):
            identity = peer_identity(comm)
            if identity is not None and identity.serial in serials:
                comm.abort()
        for client, stream in list(getattr(self.scheduler, "client_comms", {}).items()):
            identity = peer_identity(getattr(stream, "comm", None))
            if identity is not None and identity.serial in serials:
                self.scheduler.remove_client(client, stimulus_id="clusterai-certificate-revoked")
