"""Worker enrollment: a machine joins the head only with a token of role `worker`.

Both halves live here. On the head, `Enrollment` (a Dask scheduler plugin) answers a
`clusterai_enroll` check — so `clusterai worker` can tell "wrong token" from "unreachable head"
before it starts anything — and checks the token each worker presents when it registers: a worker
without a valid one is closed, and the coordinator never places work on a worker it has not
marked enrolled. On the worker, the token travels in Dask's registration message
(`startup_information`), read from the environment the nanny gives the worker process; the head
removes it from the scheduler's records once checked.

This module imports nothing beyond Dask: light workers load it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger("clusterai.enroll")

TOKEN_ENV = "CLUSTERAI_ENROLLMENT_TOKEN"
TOKEN_KEY = "clusterai_token"  # in the registration's `extra`, removed by the head once checked
ENROLLED_KEY = "clusterai_enrolled"  # set by the head: the enrolling token's name
WORKER_ROLES = frozenset({"worker"})

# (token text) -> the token's name when it may enroll a worker, else None
Verify = Callable[[str], "str | None"]


def presented_token(_worker: Any) -> str | None:
    """Runs in the worker process when it registers (module-level, so the nanny can pickle it)."""
    return os.environ.get(TOKEN_ENV)


class Enrollment(SchedulerPlugin):
    name = "clusterai-enrollment"

    def __init__(self, verify: Verify):
        self.verify = verify

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers["clusterai_enroll"] = self.check

    async def check(self, comm: Any = None, token: str | None = None, name: str | None = None) -> dict[str, str]:
        """A joining machine asks whether its token will do, before it starts a worker. "retry" when
        the head cannot tell now (its store is down): the worker asks again rather than give up."""
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
        return {"status": "ok", "token": who}

    def add_worker(self, scheduler: Any, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is None:
            return
        token = ws.extra.pop(TOKEN_KEY, None)  # never kept: scheduler_info() would show it to every client
        who = self._verify(token)
        if who is None:
            log.warning("worker %s (%s) has no valid enrollment token; closing it", ws.name, worker)
            asyncio.ensure_future(scheduler.remove_worker(worker, close=True, stimulus_id="clusterai-not-enrolled"))
            return
        ws.extra[ENROLLED_KEY] = who

    def _lookup(self, token: Any) -> str | None:
        if not isinstance(token, str) or not token:
            return None
        return self.verify(token)

    def _verify(self, token: Any) -> str | None:
        try:
            return self._lookup(token)
        except Exception as exc:  # noqa: BLE001 - store down: refuse now, the worker retries
            log.warning("cannot check an enrollment token: %s", exc)
            return None


async def ask_head(address: str, token: str, name: str, *, security: Any = None, timeout: float = 10.0
                   ) -> dict[str, str]:
    """The head's verdict on this token: {"status": "ok"|"refused"|"retry", ...} ("retry": it cannot
    tell now). Raises OSError when the head cannot be reached within `timeout`."""
    from distributed.comm import connect

    kwargs = security.get_connection_args("worker") if security is not None else {}
    comm = await connect(address, timeout=timeout, **kwargs)
    try:
        await comm.write({"op": "clusterai_enroll", "token": token, "name": name, "reply": True},
                         serializers=["msgpack"])
        reply = await asyncio.wait_for(comm.read(deserializers=["msgpack"]), timeout)
    finally:
        await comm.close()
    if not isinstance(reply, dict) or reply.get("status") not in ("ok", "refused", "retry"):
        # an older head, or a plain Dask scheduler: it does not know the operation
        return {"status": "refused", "reason": f"{address} is not a clusterai scheduler (answered {reply!r:.80})"}
    return reply
