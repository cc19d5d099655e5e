"""Starts the job plane: a Dask cluster (embedded LocalCluster of worker processes, or an existing
scheduler), the clusterai worker plugin on every worker, and the coordinator."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from distributed import Client, LocalCluster, Scheduler
from distributed.security import Security

from clusterai.autoscale import parse_autoscale
from clusterai.autoscale.config import DEFAULT_LOCAL_COMMAND
from clusterai.autoscale.providers import Provider
from clusterai.config import ClusterConfig
from clusterai.core.tasks import import_task_modules
from clusterai.errors import AutoscaleConfigError, ClusterAIError, ConfigError
from clusterai.head.autoscaling import Autoscaling, EmbeddedProvider
from clusterai.head.coordinator import Coordinator
from clusterai.head.membership import Membership
from clusterai.head.pipeline_driver import PipelineDriver
from clusterai.head.plugins import CameraCounts, Provenance
from clusterai.head.sweep_driver import SweepDriver
from clusterai.service.access import TokenVerifier, new_token
from clusterai.service.autoscale import DEFAULT_AUTOSCALE
from clusterai.service.runs import PipelineRunner
from clusterai.store.open import open_store
from clusterai.store.protocol import JobStore
from clusterai.worker.enroll import WORKER_ROLES
from clusterai.worker.gate import WORKER_TO_SCHEDULER, Gate, install, own_identity
from clusterai.worker.plugin import ClusterAIWorkerPlugin, library_threads

log = logging.getLogger("clusterai.runtime")


@dataclass(frozen=True)
class HeadSettings:
    """`clusterai scheduler`: a Dask scheduler in this process that machines join over the network."""

    host: str = "127.0.0.1"
    port: int = 8786
    security: Any = None  # distributed.security.Security when TLS is on
    dashboard_address: str | None = None
    advertise: bool | None = None  # announce it for `clusterai join --discover`; None: when it makes sense
    beacon_port: int = 8799


class ClusterRuntime:
    """The parts of a running cluster, started and stopped together on one event loop: an embedded
    LocalCluster (`up`), an existing scheduler (`cluster.scheduler`), or a head node's own
    scheduler that enrolled workers join (`clusterai scheduler`)."""

    def __init__(self, config: ClusterConfig, *, store: JobStore | None = None, head: HeadSettings | None = None):
        self.config = config
        self.store = store
        self.head = head
        self.local_cluster: LocalCluster | None = None
        self.scheduler: Scheduler | None = None
        self.dask: Client | None = None
        self.coordinator: Coordinator | None = None
        self.pipelines: PipelineDriver | None = None
        self.autoscaling: Autoscaling | None = None
        self.sweeps: SweepDriver | None = None

    async def start(self) -> None:
        raw = self.config.autoscale
        self._autoscale_config = parse_autoscale(raw if raw is not None else DEFAULT_AUTOSCALE)  # before any start
        provider = self._autoscale_config.provider
        embedded = self.head is None and not self.config.cluster.scheduler
        if embedded and (provider.kind not in ("local", "none") or provider.kind == "local"
                         and provider.options["command"] != list(DEFAULT_LOCAL_COMMAND)):
            raise AutoscaleConfigError(
                "autoscale.provider: the embedded cluster grows with worker processes of its own only (its "
                "credentials exist in this process alone); leave provider out, or run `clusterai head` "
                "for workers on other machines")
        import_task_modules(self.config.tasks)
        if self.store is None:
            self.store = open_store(self.config.store)
        c = self.config.cluster
        security = None
        if self.head is not None:
            target: Any = await self._start_head(self.head, self.store)
            security = self.head.security
        elif c.scheduler:
            target = c.scheduler
        else:
            # Credentials made now and held in memory, passed to the worker processes as they start:
            # only this process and its workers can connect, not another user of this machine
            security = Security.temporary()
            # an autoscaled embedded cluster starts empty: the autoscaler brings it to its minimum
            # at once, and cluster.workers does not apply
            self.local_cluster = await LocalCluster(
                n_workers=c.workers if self.config.autoscale is None else 0,
                threads_per_worker=c.threads_per_worker,
                processes=True,
                host=c.host,
                protocol="tls://",
                security=security,
                memory_limit=c.memory_limit,
                dashboard_address=c.dashboard_address if c.dashboard else None,
                # without a dashboard Dask still serves HTTP (health, metrics), by default on :8787
                scheduler_kwargs=None if c.dashboard else {"dashboard_address": "127.0.0.1:0"},
                worker_dashboard_address=None,
                death_timeout=c.death_timeout,
                env=library_threads(c.threads_per_worker),
                asynchronous=True,
            )
            target = self.local_cluster
        try:
            self.dask = await Client(target, asynchronous=True, timeout=c.death_timeout, security=security)
        except OSError as exc:
            raise ConfigError(f"cluster.scheduler: cannot reach {c.scheduler!r}: {exc}") from None
        profiles = {str(i): p.model_dump() for i, p in enumerate(c.worker_profiles)}
        await self.dask.register_plugin(ClusterAIWorkerPlugin(
            self.config.tasks, profiles, media=self.config.media.sources, loglines=self.config.logline.dir))
        self.autoscaling = self._autoscaling()
        self.sweeps = SweepDriver(self.store, self.config)
        self.coordinator = Coordinator(self.store, self.dask, settings=self.config.coordinator,
                                       placement=self.config.placement, require_enrollment=self.head is not None,
                                       plugins=[CameraCounts(self.store), Provenance(self.store), self.autoscaling,
                                                self.sweeps])
        await self.coordinator.start()
        runner = PipelineRunner(self.store, self.config, wake=self.coordinator.wake)
        self.pipelines = pipelines = PipelineDriver(runner)
        self.coordinator.add_listener(lambda finish: pipelines.job_finished(finish.job_id, finish.state))
        await self.pipelines.start()

    def _autoscaling(self) -> Autoscaling:
        """Always there, so that `clusterai autoscale enable` works on any cluster; acting only when
        cluster.yaml has an `autoscale:` section or an operator enabled it."""
        raw = self.config.autoscale
        conf = self._autoscale_config
        kind = conf.provider.kind
        store = self.store
        assert store is not None
        if self.local_cluster is not None:
            cluster = self.local_cluster

            def embedded() -> Provider:
                return EmbeddedProvider(cluster) if kind == "local" else conf.make_provider()

            return Autoscaling(conf, store, embedded, enabled=raw is not None)
        address = str(self.scheduler_address)
        enrolling = self.head is not None

        def remote() -> Provider:
            token = None
            if enrolling:  # workers of a head present a worker token: one for the autoscaler's
                token, record = new_token("autoscaler", "worker", created_by="autoscaler")
                store.add_token(record)
            return conf.make_provider(variables={"head": address}, token=token)

        return Autoscaling(conf, store, remote, enabled=raw is not None, stop_launched_on_stop=kind == "local")

    async def _start_head(self, head: HeadSettings, store: JobStore) -> str:
        verifier = TokenVerifier(store)

        def may_enroll(token: str) -> tuple[str, str] | None:
            who = verifier.verify(token)
            if who is None or who.role not in WORKER_ROLES:
                return None
            record = store.get_token(who.token_id)
            if record is None or record.uses_left is not None:  # a join token buys an identity, not a seat
                return None
            return who.token_id, who.name

        def still_valid(token_ids: Any) -> set[str]:
            now = time.time()
            return {t.id for t in store.list_tokens() if t.id in token_ids and t.role in WORKER_ROLES
                    and t.usable(now)}

        def revoked() -> set[str]:
            return set(store.revoked_certificates())

        own = own_identity(head.security, "scheduler")
        gate = Gate("scheduler", own, WORKER_TO_SCHEDULER) if own is not None else None
        if gate is not None:
            gate.revoked = frozenset(revoked())  # refused from the first connection on
        membership = Membership(may_enroll, still_valid, revoked if gate is not None else None, gate)
        scheduler = Scheduler(
            host=head.host, port=head.port, protocol="tls" if head.security is not None else "tcp",
            security=head.security, dashboard=head.dashboard_address is not None,
            # Dask serves HTTP (health, metrics) even without its dashboard, by default on every
            # interface: keep that on loopback unless a dashboard address was asked for
            dashboard_address=head.dashboard_address or "127.0.0.1:0", plugins=[membership],
        )
        if gate is not None:
            install(scheduler, gate)  # before it listens: no comm reaches a handler unchecked
        try:
            self.scheduler = await scheduler
        except OSError as exc:
            raise ConfigError(f"cannot listen on {head.host}:{head.port} for workers: {exc}") from None
        return str(self.scheduler.address)

    async def stop(self) -> None:
        # Each step is bounded: a shutdown must end even when a worker is stuck or gone.
        pids = [s.pid for s in self.coordinator.slots.values() if s.pid] if self.coordinator else []
        if self.pipelines is not None:
            await _bounded("pipelines", self.pipelines.stop(), 5)
        if self.coordinator is not None:
            await _bounded("coordinator", self.coordinator.stop(), 15)
        if self.dask is not None:
            await _bounded("dask client", self.dask.close(), 10)
        if self.local_cluster is not None and not await _bounded("local cluster", self.local_cluster.close(), 20):
            _kill_leftovers(pids)
        if self.scheduler is not None:
            await _bounded("scheduler", self.scheduler.close(), 10)

    @property
    def dashboard_link(self) -> str | None:
        if self.local_cluster is not None and self.config.cluster.dashboard:
            return self.local_cluster.dashboard_link
        if self.scheduler is not None and self.head is not None and self.head.dashboard_address:
            return f"http://{self.head.dashboard_address}/status"
        return None

    @property
    def scheduler_address(self) -> str | None:
        if self.local_cluster is not None:
            return self.local_cluster.scheduler_address
        if self.scheduler is not None:
            return str(self.scheduler.address)
        return self.config.cluster.scheduler


async def _bounded(what: str, step: Any, seconds: float) -> bool:
    """Run one shutdown step for at most `seconds`; True when it finished. Unlike wait_for, a step
    that ignores its cancellation cannot hold the shutdown hostage."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("closing the %s took over %s s; moving on", what, seconds)
        return False
    if task.exception() is not None:
        log.warning("closing the %s failed: %s", what, task.exception())
    return True


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            log.warning("killed worker process %d, which did not close in time", pid)
        except (ProcessLookupError, PermissionError):
            pass


class BackgroundRuntime:
    """A ClusterRuntime on its own thread and event loop, for the Python client and the demo."""

    def __init__(self, config: ClusterConfig, *, store: JobStore | None = None):
        self.runtime = ClusterRuntime(config, store=store)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="clusterai-runtime", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ClusterAIError(f"the cluster did not start within {timeout} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        # Not asyncio.run: at exit it waits for every leftover task, and a Dask task that ignores
        # its cancellation would then hang close() forever.
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=5))
        finally:
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.runtime.start()
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()
            await self.runtime.stop()
            return
        self._ready.set()
        await self._stop.wait()
        await self.runtime.stop()

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the runtime's loop (for example to start the API beside it)."""
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
