"""The live worker registry: who is in the cluster, what each worker offers, how it is doing, and
the operator commands on it (drain, undrain, remove, restart).

Dask's scheduler says which workers exist; each worker's clusterai plugin says what it offers
(with every heartbeat, and at once when pinged); the store keeps a snapshot for every reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from clusterai.config import BreakerSection
from clusterai.core.model import WORKER_ACTIONS, WorkerRecord
from clusterai.placement import CircuitBreaker, WorkerSlot
from clusterai.store.protocol import JobStore
from clusterai.worker.enroll import ENROLLED_KEY, RETIRING_HANDLER

log = logging.getLogger("clusterai.head.registry")



class WorkerRegistry:
    def __init__(self, store: JobStore, dask_client: Any, *, breaker: BreakerSection | None = None,
                 on_change: Callable[[], None] = lambda: None, require_enrollment: bool = False):
        self.store = store
        # on a head node, only workers that presented a worker token (worker/enroll.py) get work
        self.require_enrollment = require_enrollment
        self.client = dask_client
        self.breaker = breaker or BreakerSection()
        self.on_change = on_change
        self.slots: dict[str, WorkerSlot] = {}
        self.version = 0  # changes whenever a worker joins, leaves or changes what it offers
        self._removing: dict[str, int] = {}  # address -> command id, removed once idle
        # workers the autoscaler is retiring, by name: one its nanny restarts comes back draining
        self.drained_names: set[str] = set()

    def find(self, worker: str) -> WorkerSlot | None:
        """A live worker by address or by name."""
        found = self.slots.get(worker)
        if found is not None:
            return found
        return next((s for s in self.slots.values() if s.name == worker and s.status != "gone"), None)

    def forget(self, slot: WorkerSlot) -> None:
        if self.slots.pop(slot.address, None) is not None:
            self.version += 1

    async def refresh(self) -> None:
        info = await self.client.scheduler.identity()
        seen: dict[str, Any] = info.get("workers", {})
        if self.require_enrollment:
            seen = {a: w for a, w in seen.items() if w.get(ENROLLED_KEY)}
        now = time.time()
        changed = False
        for address, w in seen.items():
            slot = self.slots.get(address)
            if slot is None:
                slot = self.slots[address] = WorkerSlot(
                    address=address, name=str(w.get("name", address)), nthreads=int(w.get("nthreads", 1)),
                    memory_limit=int(w.get("memory_limit") or 0), status="joining", last_ok=now,
                    breaker=CircuitBreaker(self.breaker.failures, self.breaker.cooldown),
                )
                self.version += 1
            snapshot = (w.get("metrics") or {}).get("clusterai")
            if isinstance(snapshot, dict):
                changed |= self.apply(slot, snapshot)
        joining = [s for s in self.slots.values() if s.status == "joining"]
        if joining:  # ask at once rather than wait for their first heartbeat
            answers = await asyncio.gather(*(self.ping(s, 5.0) for s in joining), return_exceptions=True)
            for slot, answer in zip(joining, answers):
                if isinstance(answer, dict):
                    changed |= self.apply(slot, answer)
        for address, slot in list(self.slots.items()):
            if address not in seen:
                slot.status = "gone"
                self._removing.pop(address, None)
                if slot.calls == 0:
                    del self.slots[address]
                    self.version += 1
        await self.run_commands(now)
        self.store.upsert_workers([self.record(s, now) for s in self.slots.values() if s.status != "gone"], now)
        if changed:
            self.on_change()

    def apply(self, slot: WorkerSlot, snap: dict[str, Any]) -> bool:
        """Take in a worker's snapshot; True when it just became ready."""
        slot.pid = int(snap.get("pid") or slot.pid)
        labels = {str(k): str(v) for k, v in (snap.get("labels") or {}).items()}
        resources = {str(k): float(v) for k, v in (snap.get("resources") or {}).items()}
        accepts = frozenset(snap.get("accepts") or ())
        tasks = frozenset(snap["tasks"]) if isinstance(snap.get("tasks"), (list, tuple)) else None
        if (labels, resources, accepts, tasks) != (slot.labels, slot.resources, slot.accepts, slot.tasks):
            self.version += 1
        slot.labels, slot.resources, slot.accepts, slot.tasks = labels, resources, accepts, tasks
        slot.models = frozenset(snap.get("models") or ())
        served = snap.get("model_server")
        slot.model_server = (str(served["url"]), str(served["token"])) if isinstance(served, dict) \
            and served.get("url") and served.get("token") else None
        slot.datasets = frozenset(snap.get("datasets") or ())
        slot.concurrency = int(snap.get("slots") or 0)
        slot.latency = {str(k): float(v) for k, v in (snap.get("latency") or {}).items()}
        slot.metrics = {k: float(snap[k]) for k in ("cpu", "memory", "memory_percent", "gpu_percent",
                                                     "gpu_memory") if isinstance(snap.get(k), (int, float))}
        if slot.status == "joining":
            slot.status = "draining" if slot.name in self.drained_names else "ready"
            log.info("worker %s (%s) is ready: labels %s", slot.name, slot.address, slot.labels)
            return True
        return False

    async def ping(self, slot: WorkerSlot, timeout: float) -> dict[str, Any]:
        answer = await asyncio.wait_for(self.client.rpc(slot.address).clusterai_ping(), timeout)
        if not isinstance(answer, dict):
            raise ConnectionError(f"worker {slot.name} has no clusterai plugin")
        return answer

    async def restart(self, slot: WorkerSlot) -> str:
        slot.status = "unresponsive"
        try:
            await self.client.restart_workers([slot.address], raise_for_error=False)
        except Exception as exc:  # noqa: BLE001 - the next refresh shows what became of it
            log.warning("could not restart worker %s: %s", slot.name, exc)
            return f"restart failed: {exc}"
        return "restarted through its nanny"

    # -- operator commands ------------------------------------------------------------------------

    async def run_commands(self, now: float) -> None:
        for command_id, worker, action in self.store.open_worker_commands():
            slot = self.find(worker)
            if slot is None:
                self.store.finish_worker_command(command_id, f"no live worker named {worker!r}", now)
                continue
            outcome = await self._perform(command_id, slot, action)
            if outcome is not None:
                self.store.finish_worker_command(command_id, outcome, time.time())
        for address, command_id in list(self._removing.items()):
            slot = self.slots.get(address)
            if slot is not None and slot.jobs == 0:
                del self._removing[address]
                await self._tell_retiring(address)
                await self.client.retire_workers([address], close_workers=True, remove=True)
                self.store.finish_worker_command(command_id, "drained and removed", time.time())

    async def _tell_retiring(self, address: str) -> None:
        """A `clusterai worker` whose nanny hears this stops once closed, instead of taking the
        close for a lost head and joining again; other nannies (the embedded cluster's) lack the
        handler and are simply closed."""
        try:
            info = await self.client.scheduler.identity()
            nanny = (info.get("workers", {}).get(address) or {}).get("nanny")
            if nanny:
                await asyncio.wait_for(getattr(self.client.rpc(nanny), RETIRING_HANDLER)(), 5)
        except Exception as exc:  # noqa: BLE001 - the retirement goes on either way
            log.debug("could not tell %s it is being retired: %s", address, exc)

    async def _perform(self, command_id: int, slot: WorkerSlot, action: str) -> str | None:
        if action == "drain":
            slot.status = "draining"
            return f"draining: {slot.jobs} jobs in flight finish, no new ones start"
        if action == "undrain":
            slot.status = "ready"
            self.on_change()
            return "ready again"
        if action == "restart":
            return await self.restart(slot)
        if action == "remove":
            slot.status = "draining"
            self._removing[slot.address] = command_id
            return None  # finished once its jobs are done
        return f"unknown action {action!r}; allowed: {', '.join(WORKER_ACTIONS)}"

    @staticmethod
    def record(slot: WorkerSlot, now: float) -> WorkerRecord:
        return WorkerRecord(
            name=slot.name, address=slot.address, status=slot.status, nthreads=slot.nthreads,
            memory_limit=slot.memory_limit, inflight=slot.jobs, completed=slot.completed,
            failed=slot.failed, last_seen=slot.last_ok or now, labels=dict(slot.labels),
            resources=dict(slot.resources), metrics=dict(slot.metrics), pid=slot.pid,
            breaker=slot.breaker_state(now), models=sorted(slot.models),
        )
