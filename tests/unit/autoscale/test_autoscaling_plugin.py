"""The head's autoscaling plugin between a real SQLite store, a worker registry (slots as the
coordinator keeps them, no Dask) and a provider that records what it is asked: demand read from the
store, workers attributed to profiles, retirement in the safe order, drained workers stopped only
once idle, the operator's override, and what it reports."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from clusterai.autoscale import LaunchedWorker, Profile, parse_autoscale
from clusterai.core.model import JobSpec
from clusterai.errors import ProviderError
from clusterai.head.autoscaling import Autoscaling, profile_from_name
from clusterai.head.registry import WorkerRegistry
from clusterai.placement import WorkerSlot
from clusterai.placement.planner import Planner
from clusterai.placement.strategies import make_strategy
from clusterai.store.sqlite import SQLiteStore


class RecordingProvider:
    def __init__(self) -> None:
        self.launched: dict[str, str] = {}
        self.terminated: list[str] = []
        self.fail_launch = False
        self.fail_list = False
        self._n = 0

    async def launch(self, profile: Profile, count: int) -> builtins.list[str]:
        if self.fail_launch:
            raise ProviderError("cloud quota exceeded")
        names = []
        for _ in range(count):
            self._n += 1
            name = f"as-{profile.name}-{self._n:08x}"
            self.launched[name] = profile.name
            names.append(name)
        return names

    async def terminate(self, names: Sequence[str]) -> None:
        for name in names:
            self.launched.pop(name, None)
            self.terminated.append(name)

    async def list(self) -> builtins.list[LaunchedWorker]:
        if self.fail_list:
            raise ProviderError("list command exited with status 1")
        return [LaunchedWorker(name, profile, "test") for name, profile in self.launched.items()]


class FakeCoordinator:
    """What the plugin sees of the coordinator: its registry and planner, wake() and the lease check."""

    def __init__(self, store: SQLiteStore):
        self.client = None
        self.registry = WorkerRegistry(store, None)
        self.planner = Planner({}, make_strategy("least_loaded"))
        self.woken = 0
        self.expecting = 0.0

    def holds_lease(self, job_id: int, attempt: int) -> bool:
        return False

    def wake(self) -> None:
        self.woken += 1

    def expect_workers(self, within_s: float) -> None:
        self.expecting = within_s

    def join(self, name: str, *, jobs: int = 0, labels: dict[str, str] | None = None) -> WorkerSlot:
        slot = WorkerSlot(address=f"tls://127.0.0.1:{40000 + len(self.registry.slots)}", name=name, nthreads=1,
                          status="ready", jobs=jobs, calls=1 if jobs else 0, labels=labels or {})
        self.registry.slots[slot.address] = slot
        return slot


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(str(tmp_path / "jobs.db"))
    yield s
    s.close()


def plugin(store: SQLiteStore, section: dict[str, Any], provider: RecordingProvider, clock,
           enabled: bool = True, **options: Any) -> tuple[Autoscaling, FakeCoordinator]:
    scaling = Autoscaling(parse_autoscale({"up_cooldown_s": 0, "down_cooldown_s": 0, **section}), store,
                          lambda: provider, enabled=enabled, clock=clock, **options)
    coordinator = FakeCoordinator(store)
    scaling.coordinator = coordinator  # what start() sets, without its loop
    scaling.registry, scaling.planner = coordinator.registry, coordinator.planner
    return scaling, coordinator


def queue(store: SQLiteStore, n: int, **options: Any) -> None:
    store.submit_many([JobSpec(task="unit.job", payload={}, **options) for _ in range(n)], 1.0)


def run(scaling: Autoscaling):
    return asyncio.run(scaling.run_once())


def test_names_map_back_to_their_profiles():
    assert profile_from_name("as-gpu-large-1a2b3c4d", ["gpu-large", "cpu"]) == "gpu-large"
    assert profile_from_name("as-gpu-1a2b3c4d", ["cpu"]) is None
    assert profile_from_name("desktop-7", ["cpu"]) is None
    profile = Profile("gpu", labels=frozenset({"gpu=true", "region=eu"}), resources={"GPU": 1}, concurrency=2)
    assert profile.worker_profile() == {"labels": {"gpu": "true", "region": "eu"}, "resources": {"GPU": 1},
                                        "models": [], "slots": 2}


def test_backlog_in_the_store_grows_only_the_profile_that_can_run_it(store, clock):
    provider = RecordingProvider()
    scaling, _ = plugin(store, {"profiles": {"cpu": {"max": 4}, "gpu": {"max": 2, "resources": {"GPU": 1}}},
                                "policies": [{"kind": "target_tracking", "target_duration_s": 1}]}, provider, clock)
    queue(store, 3, resources={"GPU": 1})
    queue(store, 2, labels={"region": "mars"})  # no profile has the label: reported, not scaled for
    plan = run(scaling)
    assert (plan.of("cpu").desired, plan.of("gpu").desired) == (0, 2)
    assert sorted(provider.launched.values()) == ["gpu", "gpu"]
    assert scaling.coordinator.expecting > 0, "the registry looks for the new workers more often"
    state, _ = store.get_autoscale("state")
    assert state["unschedulable"] == [{"queue": "default", "requires": {}, "labels": ["region=mars"], "queued": 2}]
    assert {p["name"]: p["starting"] for p in state["profiles"]} == {"cpu": 0, "gpu": 2}
    (row,) = store.list_scale_decisions()
    assert (row["profile"], row["from"], row["to"]) == ("gpu", 0, 2) and "target_tracking" in row["reason"]


def test_scale_down_stops_idle_workers_and_drains_busy_ones_until_they_are_idle(store, clock):
    provider = RecordingProvider()
    scaling, coordinator = plugin(store, {"min": 0, "max": 4, "policies": [{"kind": "target_tracking"}]},
                                  provider, clock)
    for name in ("as-default-00000001", "as-default-00000002"):
        provider.launched[name] = "default"
    idle = coordinator.join("as-default-00000001")
    busy = coordinator.join("as-default-00000002", jobs=1)
    outsider = coordinator.join("desktop-7")  # not the autoscaler's: never retired
    queue(store, 1)
    store.start_attempts([(1, busy.address)], 1.0, 100.0)
    run(scaling)  # one running job, 30 s target: one worker is enough, the idle one goes
    assert provider.terminated == ["as-default-00000001"] and idle.status == "draining"
    assert busy.status == "ready"

    store.cancel(1, 2.0)  # the job ends, no demand: the busy worker is drained, not stopped
    busy_slot_jobs = busy.jobs
    assert busy_slot_jobs == 1
    run(scaling)
    assert busy.status == "draining" and "as-default-00000002" not in provider.terminated
    assert outsider.status == "ready"
    coordinator.registry.slots.pop(idle.address)
    busy.jobs, busy.calls = 0, 0  # its attempt came back
    run(scaling)
    assert provider.terminated == ["as-default-00000001", "as-default-00000002"]
    assert outsider.status == "ready"


def test_a_drained_worker_is_taken_back_before_launching_a_new_one(store, clock):
    provider = RecordingProvider()
    scaling, coordinator = plugin(store, {"min": 0, "max": 2, "policies": [{"kind": "target_tracking",
                                                                             "target_duration_s": 1}]},
                                  provider, clock)
    provider.launched["as-default-00000001"] = "default"
    slot = coordinator.join("as-default-00000001", jobs=1)
    coordinator.registry.drained_names.add(slot.name)
    slot.status = "draining"
    queue(store, 1)
    run(scaling)
    assert slot.status == "ready" and slot.name not in coordinator.registry.drained_names
    assert coordinator.woken == 1 and list(provider.launched) == ["as-default-00000001"]


def test_a_restarted_worker_with_a_drained_name_comes_back_draining(store):
    registry = WorkerRegistry(store, None)
    registry.drained_names.add("as-default-00000001")
    slot = WorkerSlot(address="tls://127.0.0.1:1", name="as-default-00000001", nthreads=1, status="joining")
    registry.apply(slot, {"pid": 1})
    assert slot.status == "draining"


def test_the_override_disables_and_changes_bounds(store, clock):
    provider = RecordingProvider()
    scaling, coordinator = plugin(store, {"min": 0, "max": 4}, provider, clock)
    store.put_autoscale("override", {"enabled": True, "profiles": {"default": {"min": 2, "max": 3}}}, 5.0)
    run(scaling)
    assert len(provider.launched) == 2, "bounds are met at once"
    store.put_autoscale("override", {"enabled": False, "profiles": {"default": {"min": 2, "max": 3}}}, 6.0)
    assert run(scaling) is None
    state, _ = store.get_autoscale("state")
    assert state["enabled"] is False and state["profiles"][0]["reason"] == "autoscaling is disabled"
    assert len(provider.launched) == 2 and not provider.terminated


def test_provider_failures_are_reported_and_lose_nothing(store, clock):
    provider = RecordingProvider()
    scaling, _ = plugin(store, {"min": 1, "max": 2}, provider, clock)
    provider.fail_launch = True
    run(scaling)
    state, _ = store.get_autoscale("state")
    assert state["error"] == "cloud quota exceeded" and not provider.launched
    provider.fail_launch = False
    run(scaling)
    assert len(provider.launched) == 1
    provider.fail_list = True  # the last list stands: a flaky CLI does not look like 0 workers
    run(scaling)
    assert len(provider.launched) == 1 and not provider.terminated


def test_with_provider_none_it_decides_and_reports_but_drains_nothing(store, clock):
    provider = RecordingProvider()
    scaling, coordinator = plugin(store, {"min": 0, "max": 4, "provider": {"kind": "none"}}, provider, clock)
    pods = [coordinator.join(f"worker-pod-{i}", labels={"profile": "default"}) for i in range(3)]
    coordinator.join("desktop-7")  # no profile label: not counted
    plan = run(scaling)
    assert (plan.of("default").current, plan.of("default").desired) == (3, 0)
    assert all(p.status == "ready" for p in pods) and not coordinator.registry.drained_names
    state, _ = store.get_autoscale("state")
    assert (state["profiles"][0]["desired"], state["unmanaged"]) == (0, 1)


def test_the_same_change_again_is_logged_once(store, clock):
    provider = RecordingProvider()
    scaling, _ = plugin(store, {"min": 2, "max": 4}, provider, clock)
    provider.fail_launch = True
    for _ in range(3):
        run(scaling)
    assert [(r["from"], r["to"]) for r in store.list_scale_decisions()] == [(0, 2)]
    provider.fail_launch = False
    run(scaling)
    assert len(provider.launched) == 2 and len(store.list_scale_decisions()) == 1


def test_the_predictive_policy_learns_from_the_stores_job_history(store, clock):
    from clusterai.core.model import Outcome, decide

    week = 7 * 86400.0
    now = 1_800_000_000.0 - 1_800_000_000.0 % 3600 + 1800  # half past some hour
    peak = now - week + 1800  # last week, the next hour: a peak one lead time ahead
    jobs = store.submit_many([JobSpec(task="unit.job", payload={}) for _ in range(8)], peak)
    for job in jobs:
        (started,) = store.start_attempts([(job.id, "w1")], peak, peak + 4000)
        store.finish_attempts([decide(started, Outcome.SUCCEEDED, now=peak + 3600, result_json="1")], peak + 3600)
    provider = RecordingProvider()
    scaling, _ = plugin(store, {"min": 0, "max": 10, "max_step": 8,
                                "policies": [{"kind": "predictive", "lead_s": 3600}]},
                        provider, clock, wall=lambda: now)
    scaling._learn_history(now)
    (policy,) = scaling.config.predictive["default"]
    assert max(policy.buckets()) == pytest.approx(8.0)
    plan = run(scaling)  # no backlog now, but 8 busy slots expected within the lead time
    assert plan.of("default").desired == 8 and "history expects 8" in plan.of("default").reason
