"""The autoscaler at work: a coordinator plugin that, every `interval_s`, reads demand (the store's
backlog) and supply (the registry, the provider's launched workers), asks the autoscaler for a
decision per profile, and carries it out: launches through the provider; retires in the safe order
(not yet started, then idle, then drained: no new work, running jobs finish first). It runs on the
coordinator's loop, so marking a worker draining and checking that it holds no attempt happen
without a dispatch in between: a worker is never stopped while it holds a lease.

What it did goes to the store: each change of size in the decision log, and a state document
(per profile: workers, desired, bounds, why; recent samples) that the API, the CLI, the dashboard
and the metrics read. The operator's override (`clusterai autoscale enable|disable`) comes from the
store too, so it works from any machine that reaches it, and survives a restart of the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from clusterai.autoscale import (
    AutoscaleConfig,
    Autoscaler,
    LaunchedWorker,
    Plan,
    Profile,
    Provider,
    QueueDemand,
    Snapshot,
    WorkerView,
    choose_to_retire,
)
from clusterai.autoscale.providers import NAME_PREFIX, new_name
from clusterai.errors import ClusterAIError, ProviderError, StoreUnavailable
from clusterai.head.plugins import Coordinator, CoordinatorPlugin
from clusterai.head.registry import WorkerRegistry
from clusterai.placement import WorkerSlot
from clusterai.placement.planner import Planner
from clusterai.service.autoscale import OVERRIDE_KEY, STATE_KEY
from clusterai.store.protocol import JobStore
from clusterai.worker.plugin import PROFILE_ENV

log = logging.getLogger("clusterai.head.autoscaling")

PROFILE_LABEL = "profile"  # a worker the autoscaler did not launch counts towards the profile it names
SAMPLES_KEPT = 720
HISTORY_S = 28 * 86400.0  # what the predictive policy learns from at start: four weeks of jobs
HISTORY_ROWS = 200_000
DISABLED_REPORT_S = 30.0


class EmbeddedProvider:
    """Workers of the embedded LocalCluster: each launch adds a named entry to the cluster's worker
    spec, each terminate removes it (Dask then retires the worker and closes its nanny). The
    workers share the cluster's temporary TLS credentials, so nothing from outside can join."""

    def __init__(self, cluster: Any):
        self.cluster = cluster
        self._mine: dict[str, tuple[str, float]] = {}  # name -> (profile, launched at)

    async def launch(self, profile: Profile, count: int) -> list[str]:
        template = self.cluster.new_spec
        names = []
        for _ in range(count):
            name = new_name(profile.name)
            options = dict(template.get("options", {}))
            options["nthreads"] = profile.concurrency
            options["env"] = {**options.get("env", {}), PROFILE_ENV: json.dumps(profile.worker_profile())}
            self.cluster.worker_spec[name] = {**copy.copy(template), "options": options}
            self._mine[name] = (profile.name, time.time())
            names.append(name)
        # SpecCluster.scale does the same: the spec changed, let the cluster catch up. Not awaited:
        # a worker process takes seconds to start and the coordinator's loop must go on meanwhile.
        self.cluster._correct_state().add_done_callback(_log_failure)
        return names

    async def terminate(self, names: Sequence[str]) -> None:
        for name in names:
            self.cluster.worker_spec.pop(name, None)
            self._mine.pop(name, None)
        await self.cluster._correct_state()

    async def list(self) -> list[LaunchedWorker]:
        for name in [n for n in self._mine if n not in self.cluster.worker_spec]:
            del self._mine[name]  # removed by someone else (the cluster closing)
        return [LaunchedWorker(name, profile, "embedded", at) for name, (profile, at) in self._mine.items()]


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("the embedded cluster could not start a worker: %s", task.exception())


def profile_from_name(name: str, profiles: Iterable[str]) -> str | None:
    """as-gpu-1a2b3c4d -> "gpu" when gpu is a profile (names the providers give)."""
    if not name.startswith(NAME_PREFIX):
        return None
    stem = name[len(NAME_PREFIX):].rpartition("-")[0]
    return stem if stem in set(profiles) else None


class Autoscaling(CoordinatorPlugin):
    def __init__(self, config: AutoscaleConfig, store: JobStore, provider: Callable[[], Provider], *,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, stop_launched_on_stop: bool = False) -> None:
        """`provider` makes the provider on first use: e.g. a head mints its workers' token only
        when autoscaling first lists or launches workers. `clock` times cooldowns; `wall` (epoch
        seconds) places a round in the week, for schedules and the learned history."""
        self.wall = wall
        self.config = config
        self.store = store
        self._make_provider = provider
        self._provider: Provider | None = None
        self.configured_enabled = enabled
        self.enabled = enabled
        self.autoscaler: Autoscaler = config.autoscaler(clock)
        self.declared = {p.name: p for p in config.profiles}  # bounds as cluster.yaml gives them
        self.stop_launched_on_stop = stop_launched_on_stop
        self.coordinator: Coordinator | None = None
        self.registry: WorkerRegistry | None = None
        self.planner: Planner | None = None
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._launched: dict[str, LaunchedWorker] = {}
        self._stopped: set[str] = set()  # terminated, until the registry no longer shows them
        self._idle_since: dict[str, float] = {}
        self._samples: deque[list[Any]] = deque(maxlen=SAMPLES_KEPT)
        self._override_at: float | None = None
        self._learned_until: float | None = None
        self._reported_at = float("-inf")

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = self._make_provider()
        return self._provider

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.registry = coordinator.registry
        self.planner = coordinator.planner
        self._learn_history(self.wall())
        self._task = asyncio.create_task(self._loop(), name="clusterai-autoscaler")

    async def stop(self, coordinator: Coordinator) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.stop_launched_on_stop and self._provider is not None:
            with contextlib.suppress(ClusterAIError, OSError):
                await self.provider.terminate([w.name for w in await self.provider.list()])

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except StoreUnavailable as exc:
                log.warning("autoscaler: store unavailable: %s", exc)
            except Exception:  # noqa: BLE001 - one bad tick must not end autoscaling
                log.exception("autoscaler tick failed")
            await asyncio.sleep(self.config.interval_s)

    # -- one round ----------------------------------------------------------------------------------

    async def run_once(self) -> Plan | None:
        now = self.wall()
        self._read_override()
        if not self.enabled:
            # nothing to decide: report the workers now and then, and leave the store alone otherwise
            if now - self._reported_at >= DISABLED_REPORT_S:
                self._report(now, self.snapshot(now, self._launched, demand=False), None)
            return None
        if self._learned_until is not None and now - self._learned_until > 3600:
            self._learn_history(now)
        launched = await self._list_launched()
        snapshot = self.snapshot(now, launched)
        plan = self.autoscaler.decide(snapshot)
        # logged before acting: a launch or a drain takes seconds, and readers must not see its effect first
        self.store.add_scale_decisions([record.to_row() for record in plan.logged])
        if self.config.provider.kind != "none":  # "none": an HPA or KEDA acts, and picks the pods to remove
            await self._act(plan, snapshot)
        after = self.snapshot(now, self._launched, demand=False)  # as the round left it
        if self.coordinator is not None and any(not w.started for w in after.workers):
            self.coordinator.expect_workers(self.config.interval_s + 1.0)
        self._report(now, after, plan)
        return plan

    async def _list_launched(self) -> dict[str, LaunchedWorker]:
        try:
            self._launched = {w.name: w for w in await self.provider.list()}
        except ProviderError as exc:  # keep the last list: a flaky cloud CLI must not look like 0 workers
            self.error = str(exc)
            log.warning("autoscaler: %s", exc)
        return self._launched

    def _slots(self) -> list[WorkerSlot]:
        return [s for s in (self.registry.slots.values() if self.registry else ()) if s.status != "gone"]

    def profile_of(self, name: str, labels: dict[str, str] | None = None) -> str | None:
        launched = self._launched.get(name)
        if launched is not None and launched.profile in self.declared:
            return launched.profile
        found = profile_from_name(name, self.declared)
        if found is None and labels and labels.get(PROFILE_LABEL) in self.declared:
            found = labels[PROFILE_LABEL]
        return found

    def snapshot(self, now: float, launched: dict[str, LaunchedWorker], *, demand: bool = True) -> Snapshot:
        drained = self._drained_names()
        workers, seen = [], set()
        cpu, memory = [], []
        for slot in self._slots():
            seen.add(slot.name)
            busy = max(slot.jobs, slot.calls)
            if busy:
                self._idle_since.pop(slot.name, None)
            else:
                self._idle_since.setdefault(slot.name, now)
            launch = launched.get(slot.name)
            workers.append(WorkerView(slot.name, self.profile_of(slot.name, slot.labels), busy=busy,
                                      concurrency=max(slot.capacity, 1), started=slot.status != "joining",
                                      draining=slot.name in drained, idle_since=self._idle_since.get(slot.name),
                                      launched_at=launch.started_at if launch is not None else None))
            if "cpu" in slot.metrics:
                cpu.append(slot.metrics["cpu"] / 100.0)
            if "memory_percent" in slot.metrics:
                memory.append(slot.metrics["memory_percent"] / 100.0)
        for name, w in launched.items():
            if name not in seen:
                workers.append(WorkerView(name, w.profile, started=False, draining=name in drained,
                                          launched_at=w.started_at))
        for name in set(self._idle_since) - seen:
            del self._idle_since[name]
        gone = {name for name in drained | self._stopped if name not in seen and name not in launched}
        drained -= gone
        self._stopped -= gone
        return Snapshot(now=now, demand=self.demand() if demand else [], workers=workers,
                        cpu=sum(cpu) / len(cpu) if cpu else None,
                        memory=sum(memory) / len(memory) if memory else None,
                        latency_p95_s=self._queue_wait_p95(now) if demand else None)

    def demand(self) -> list[QueueDemand]:
        """The store's backlog, one entry per queue and need, with the planner's measured durations."""
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        durations = self.planner.duration if self.planner is not None else {}
        for queue, task, resources, labels, state, count in self.store.backlog():
            requires = {k: v for k, v in resources.items() if v > 0}
            key = (queue, tuple(sorted(requires.items())), tuple(sorted(labels.items())))
            g = groups.setdefault(key, {"queued": 0, "running": 0, "known": 0, "seconds": 0.0,
                                        "requires": requires, "labels": labels})
            g["queued" if state == "queued" else "running"] += count
            if task in durations:
                g["known"] += count
                g["seconds"] += count * durations[task]
        return [QueueDemand(queue=key[0], requires=g["requires"],
                            labels=frozenset(f"{k}={v}" for k, v in g["labels"].items()),
                            queued=g["queued"], running=g["running"],
                            mean_duration_s=g["seconds"] / g["known"] if g["known"] else None)
                for key, g in groups.items()]

    def _queue_wait_p95(self, now: float) -> float | None:
        rows = self.store.recent_latencies(now - 60.0, limit=2000)
        waits = sorted(max(total - ran, 0.0) for total, ran in rows)  # submit to start of the last attempt
        return waits[int(0.95 * (len(waits) - 1))] if waits else None

    # -- acting -------------------------------------------------------------------------------------

    def _drained_names(self) -> set[str]:
        return self.registry.drained_names if self.registry is not None else set()

    def _mark_draining(self, name: str) -> WorkerSlot | None:
        self._drained_names().add(name)
        slot = self.registry.find(name) if self.registry is not None else None
        if slot is not None and slot.status in ("ready", "joining", "unresponsive"):
            slot.status = "draining"
        return slot

    def _undrain(self, name: str) -> None:
        self._drained_names().discard(name)
        slot = self.registry.find(name) if self.registry is not None else None
        if slot is not None and slot.status == "draining":
            slot.status = "ready"
            if self.coordinator is not None:
                self.coordinator.wake()

    async def _act(self, plan: Plan, snapshot: Snapshot) -> None:
        by_name = {p.name: p for p in self.autoscaler.profiles}
        stop: list[str] = []
        for decision in plan:
            profile = by_name[decision.profile]
            mine = snapshot.workers_of(profile.name)
            revived: list[str] = []
            if decision.delta > 0:
                # a worker being drained is a worker already warm: take it back before launching
                revived = [w.name for w in mine if w.draining][:decision.delta]
                for name in revived:
                    self._undrain(name)
                missing = decision.delta - len(revived)
                if missing:
                    await self._launch(profile, missing)
            retire = choose_to_retire([w for w in mine if w.name not in revived], max(0, -decision.delta))
            for name in retire.drain:
                self._mark_draining(name)
            for name in retire.stop_now:
                if name in self._stopped:
                    continue  # asked to stop already; its slot goes when Dask sees it gone
                slot = self._mark_draining(name)
                # marked above, on the coordinator's loop: nothing new lands on it after this check
                if slot is not None and (slot.jobs or slot.calls):
                    continue
                stop.append(name)
        if stop:
            try:
                await self.provider.terminate(stop)
                log.info("autoscaler stopped %s", ", ".join(stop))
            except ProviderError as exc:
                self.error = str(exc)
                log.warning("autoscaler: %s", exc)
            for name in stop:
                self._launched.pop(name, None)
                self._stopped.add(name)

    async def _launch(self, profile: Profile, count: int) -> None:
        try:
            names = await self.provider.launch(profile, count)
            self.error = None
        except ProviderError as exc:
            self.error = str(exc)
            log.warning("autoscaler: %s", exc)
            return
        now = time.time()
        for name in names:
            self._launched[name] = LaunchedWorker(name, profile.name, "launched", now)
        log.info("autoscaler launched %d %s worker(s): %s", len(names), profile.name, ", ".join(names))

    # -- the operator's override and history --------------------------------------------------------

    def _read_override(self) -> None:
        found = self.store.get_autoscale(OVERRIDE_KEY)
        if found is None or found[1] == self._override_at:
            return
        override, self._override_at = found
        self._reported_at = float("-inf")  # tell readers at once
        self.enabled = bool(override.get("enabled", self.configured_enabled))
        bounds = override.get("profiles") or {}
        profiles = []
        for declared in self.declared.values():
            wanted = bounds.get(declared.name) or {}
            try:
                profiles.append(replace(declared, min=int(wanted.get("min", declared.min)),
                                        max=int(wanted.get("max", declared.max))))
            except (ClusterAIError, TypeError, ValueError) as exc:  # the API checked; an old row may not be
                log.warning("autoscaler: ignoring the override for %s: %s", declared.name, exc)
                profiles.append(declared)
        self.autoscaler.profiles = profiles
        if not self.enabled:
            for name in list(self._drained_names()):
                if self.profile_of(name) is not None:
                    self._undrain(name)  # disabled: leave the workers as they are, and working
        log.info("autoscaler %s; bounds %s", "enabled" if self.enabled else "disabled",
                 {p.name: (p.min, p.max) for p in profiles})

    def _learn_history(self, now: float) -> None:
        predictive = self.config.predictive
        if not any(predictive.values()):
            return
        since = self._learned_until if self._learned_until is not None else now - HISTORY_S
        rows = self.store.job_history(since, now, limit=HISTORY_ROWS)
        by_profile: dict[str, list[tuple[float, float]]] = {name: [] for name in predictive}
        for created, seconds, resources, labels in rows:
            need = QueueDemand(queue="", requires=resources, labels=frozenset(f"{k}={v}" for k, v in labels.items()))
            owner = next((p for p in self.autoscaler.profiles if p.can_run(need)), None)
            if owner is not None and owner.name in by_profile:
                by_profile[owner.name].append((created, seconds))
        for name, policies in predictive.items():
            for policy in policies:
                policy.learn(by_profile[name], until=now)
        self._learned_until = now

    # -- reporting ----------------------------------------------------------------------------------

    def _report(self, now: float, snapshot: Snapshot, plan: Plan | None) -> None:
        profiles = []
        sample: dict[str, list[int]] = {}
        for profile in self.autoscaler.profiles:
            mine = snapshot.workers_of(profile.name)
            current = sum(1 for w in mine if not w.draining)
            decision = plan.of(profile.name) if plan is not None else None
            desired = decision.desired if decision is not None else current
            sample[profile.name] = [sum(1 for w in mine if w.started and not w.draining), desired]
            profiles.append({
                "name": profile.name, "min": profile.min, "max": profile.max, "current": current,
                "ready": sum(1 for w in mine if w.started and not w.draining),
                "starting": sum(1 for w in mine if not w.started), "draining": sum(1 for w in mine if w.draining),
                "busy": sum(w.busy for w in mine), "desired": desired,
                "reason": decision.reason if decision is not None else "autoscaling is disabled",
                "labels": sorted(profile.labels), "resources": dict(profile.resources),
                "models": list(profile.models), "concurrency": profile.concurrency,
                "start_s": round(self.autoscaler.start_s(profile), 3),
                "workers": sorted(w.name for w in mine),
            })
        self._samples.append([round(now, 3), sample])
        self._reported_at = now
        unschedulable = [{"queue": d.queue, "requires": dict(d.requires), "labels": sorted(d.labels),
                          "queued": d.queued} for d in (plan.unschedulable if plan is not None else [])]
        self.store.put_autoscale(STATE_KEY, {
            "at": now, "enabled": self.enabled, "interval_s": self.config.interval_s,
            "provider": self.config.provider.kind, "profiles": profiles, "unschedulable": unschedulable,
            "error": self.error, "unmanaged": sum(1 for w in snapshot.workers if w.profile is None),
            "cooldowns": {"up_s": self.autoscaler.up_cooldown_s, "down_s": self.autoscaler.down_cooldown_s},
            "max_step": self.autoscaler.max_step, "samples": list(self._samples),
        }, now)
