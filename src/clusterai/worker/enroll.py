"""Worker enrollment, the worker's half: a machine joins the head only with a token of role
`worker`. The token travels in Dask's registration message (`startup_information`), read from the
environment the nanny gives the worker process; `ask_head` asks the head beforehand whether it will
do. The head's half, which checks it, is membership.py.

This module imports nothing beyond Dask: light workers load it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

log = logging.getLogger("clusterai.enroll")

TOKEN_ENV = "CLUSTERAI_ENROLLMENT_TOKEN"
TOKEN_KEY = "clusterai_token"  # in the registration's `extra`, removed by the head once checked
ENROLLED_KEY = "clusterai_enrolled"  # set by the head: the enrolling token's name
WORKER_ROLES = frozenset({"worker"})


def presented_token(_worker: Any) -> str | None:
    """Runs in the worker process when it registers (module-level, so the nanny can pickle it)."""
    return os.environ.get(TOKEN_ENV)


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

# what the head calls on a `clusterai worker`'s nanny just before it retires that worker
RETIRING_HANDLER = "clusterai_retiring"
