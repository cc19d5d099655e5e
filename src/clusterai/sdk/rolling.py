"""Rolling restarts of workers (`clusterai workers roll`): one at a time, drain (no new work; its
running jobs finish), restart through its nanny (a new process: new code on disk, new settings),
wait until it is back and ready, then the next. Nothing running is interrupted, so nothing is lost
or run twice; while one worker restarts the others keep working (with one worker, jobs wait)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from clusterai.errors import BadInput, ResultTimeout
from clusterai.sdk.protocol import ClusterClient


def _live(client: ClusterClient) -> list[Any]:
    return [w for w in client.workers() if w.status != "gone"]


def _wait(what: str, condition: Callable[[], Any], timeout: float, poll: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise ResultTimeout(f"{what}: not within {timeout:g} s")
        time.sleep(poll)


def roll_workers(client: ClusterClient, names: Sequence[str] = (), *, drain_timeout: float = 600.0,
                 ready_timeout: float = 180.0, poll: float = 0.5,
                 say: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Restart `names` (default: every ready worker) one at a time; returns, per worker, its old and
    new address and pid. Stops at the first worker that does not drain or come back in time."""
    ready = [w for w in _live(client) if w.status == "ready"]
    if names:
        unknown = sorted(set(names) - {w.name for w in ready} - {w.address for w in ready})
        if unknown:
            known = ", ".join(w.name for w in ready) or "(none)"
            raise BadInput(f"no ready worker named {', '.join(unknown)}; ready workers: {known}")
        ready = [w for w in ready if w.name in names or w.address in names]
    done = []
    for w in ready:
        started = time.monotonic()
        say(f"{w.name}: draining ({w.inflight} running)")
        client.command_worker(w.address, "drain", 30.0)
        def drained(w: Any = w) -> Any:
            return next((x for x in _live(client) if x.address == w.address and x.inflight == 0), None)

        def restarted(w: Any = w) -> Any:
            return next((x for x in _live(client) if x.name == w.name and x.status == "ready"
                         and (x.address, x.pid) != (w.address, w.pid)), None)

        _wait(f"{w.name} to finish its running jobs", drained, drain_timeout, poll)
        say(f"{w.name}: restarting")
        client.command_worker(w.address, "restart", 60.0)
        back = _wait(f"{w.name} to come back ready", restarted, ready_timeout, poll)
        took = time.monotonic() - started
        say(f"{w.name}: back at {back.address} (pid {back.pid}) after {took:.1f} s")
        done.append({"worker": w.name, "old": {"address": w.address, "pid": w.pid},
                     "new": {"address": back.address, "pid": back.pid}, "seconds": round(took, 2)})
    return done
