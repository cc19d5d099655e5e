"""Runs sweeps from inside the coordinator's process: makes their trials, hears their reports,
prunes, records outcomes and finishes them.

Only the coordinator writes a sweep (the service creates, cancels and resumes it), so there is one
writer and no lock to contend for. Everything the driver knows is read back from the store: a
coordinator that restarts (or takes over on another head) picks every running sweep up at its
next tick, with the trials, their jobs and their reported series as they were.

- Trials are made up to the sweep's concurrency (by default the cluster's worker slots, so a sweep
  widens as machines join), each sampled with every earlier trial in view; a trial is a job of the
  objective's task with the sampled parameters as payload and the idempotency key
  `sweep:<id>:trial:<n>`, so a head that dies between the two cannot make trial n twice.
- Reports (worker/trial.py) come over Dask's event stream; only the attempt holding the job's
  lease is heard. Each is stored, then judged by the sweep's pruner; a trial it stops is told so
  through its worker's `clusterai_stop` handler and ends, at its next report, as pruned.
- When a trial's job ends its outcome becomes the trial's (sweeps/outcome.py); failed trials count
  towards the sweep's number, cancelled ones are replaced. Once the number is reached and nothing
  runs, the sweep finishes; its best trial's model, when the sweep asks for it, is registered in
  the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from clusterai.config import ClusterConfig
from clusterai.core.model import Job, State
from clusterai.core.trials import TRIAL_DONE, ModelVersion, SweepRecord, TrialRecord
from clusterai.errors import ClusterAIError, StoreUnavailable
from clusterai.head.plugins import Coordinator, CoordinatorPlugin
from clusterai.placement import WorkerSlot
from clusterai.service.submission import spec_factory
from clusterai.store.protocol import JobStore
from clusterai.sweeps import SweepSpec, TrialView, make_pruner, make_sampler, parse_spec, trial_outcome
from clusterai.sweeps.pruners import Pruner
from clusterai.sweeps.samplers import Sampler
from clusterai.worker.trial import TOPIC

log = logging.getLogger("clusterai.sweeps")
_HEARD_AFTER_END_S = 30.0


def trial_key(sweep_id: int, number: int) -> str:
    return f"sweep:{sweep_id}:trial:{number}"


class _Sweep:
    """What the driver keeps of one running sweep (all of it can be rebuilt from the store)."""

    def __init__(self, record: SweepRecord, curves: dict[int, dict[int, float]]):
        self.id = record.id
        self.owner = record.owner
        self.spec: SweepSpec = parse_spec(record.spec)
        self.sampler: Sampler = make_sampler(self.spec.sampler["kind"], self.spec.space,
                                             seed=self.spec.sampler["seed"], maximize=self.spec.maximize,
                                             options=self.spec.sampler)
        self.pruner: Pruner = make_pruner(self.spec.pruner)
        self.curves = curves  # trial number -> {step: value of the sweep's metric}


class SweepDriver(CoordinatorPlugin):
    def __init__(self, store: JobStore, config: ClusterConfig, *, every: float = 1.0):
        self.store = store
        self.config = config
        self.every = every
        self.coordinator: Coordinator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeps: dict[int, _Sweep] = {}
        self._objectives: set[str] = set()  # tasks of running sweeps: only their jobs are looked up
        self._trial_of: dict[int, tuple[int, int]] = {}  # started job -> (sweep, trial number)
        # a task's last report travels through the scheduler and may arrive after its result: a
        # finished trial's job is still heard for a while, from the attempt that finished it
        self._ended: dict[int, tuple[tuple[int, int], int, float]] = {}
        self._where: dict[tuple[int, int], str] = {}  # (job, attempt) -> the worker it was sent to
        self._stopping: set[tuple[int, int]] = set()
        self._dirty: set[int] = set()
        self._soon = False
        self._next_tick = 0.0

    # -- coordinator hooks --------------------------------------------------------------------

    async def start(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._loop = asyncio.get_running_loop()
        coordinator.client.subscribe_topic(TOPIC, self.on_report)
        self.tick(time.time())  # before the first dispatch: trials requeued by a restart are known as trials

    def poke(self, sweep_id: int) -> None:
        """Thread-safe: look at this sweep now (started or resumed by a client in this process)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._mark, sweep_id)

    def attempts_started(self, jobs: list[Job]) -> None:
        wanted = [job.id for job in jobs if job.task in self._objectives and job.id not in self._trial_of]
        if wanted:
            self._trial_of.update(self.store.trials_of_jobs(wanted))

    def prepare_item(self, item: dict[str, Any], job: Job, slot: WorkerSlot) -> None:
        trial = self._trial_of.get(job.id)
        if trial is not None:
            item["trial"] = {"sweep": trial[0], "number": trial[1]}
            self._where[(job.id, job.attempt)] = slot.address

    def job_finished(self, job_id: int, state: State) -> None:
        trial = self._trial_of.pop(job_id, None)
        if trial is not None:
            sent = [k for k in self._where if k[0] == job_id]
            last = max((attempt for _, attempt in sent), default=0)  # the attempt that ended it
            self._ended[job_id] = (trial, last, time.monotonic() + _HEARD_AFTER_END_S)
            for key in sent:
                del self._where[key]
            self._mark(trial[0])

    def tick(self, now: float) -> None:
        if now < self._next_tick:
            return
        self._next_tick = now + self.every
        clock = time.monotonic()
        for job_id in [j for j, (_, _, until) in self._ended.items() if until < clock]:
            del self._ended[job_id]
        try:
            active = self.store.active_sweeps()
        except StoreUnavailable as exc:
            log.warning("store unavailable while looking for sweeps: %s", exc)
            return
        for gone in set(self._sweeps) - set(active):
            self._forget(gone)
        self._dirty |= set(active)
        self._reconcile_dirty()

    # -- reports ------------------------------------------------------------------------------

    def on_report(self, event: tuple[float, Any]) -> None:
        """Dask's topic handler, on the coordinator's loop."""
        _, msg = event
        try:
            job_id, attempt, step = int(msg["job_id"]), int(msg["attempt"]), int(msg["step"])
            metrics = {str(k)[:100]: float(v) for k, v in dict(msg["metrics"]).items()}
            at = float(msg["at"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignored a malformed trial report: %r", msg)
            return
        trial = self._trial_of.get(job_id)
        if trial is not None:
            heard = self.coordinator is not None and self.coordinator.holds_lease(job_id, attempt)
        else:
            trial, last, _ = self._ended.get(job_id, (None, 0, 0.0))
            heard = attempt == last
        if trial is None or not heard:
            return  # not a trial, or a late report from an attempt that lost its job
        sweep_id, number = trial
        try:
            self.store.add_trial_metrics([(sweep_id, number, step, metrics, at)])
        except StoreUnavailable as exc:
            log.warning("store unavailable; trial %d of sweep %d lost its report of step %d: %s", number, sweep_id,
                        step, exc)
        sweep = self._sweeps.get(sweep_id)
        if sweep is None or sweep.spec.metric not in metrics:
            return
        sweep.curves.setdefault(number, {})[step] = metrics[sweep.spec.metric]
        if (job_id, attempt) in self._stopping:
            return
        reason = sweep.pruner.judge(number, step, sweep.curves, sweep.spec.maximize)
        if reason is not None:
            self._stopping.add((job_id, attempt))
            log.info("sweep %d: pruning trial %d at step %d (%s)", sweep_id, number, step, reason)
            asyncio.ensure_future(self._stop(job_id, attempt, reason))

    async def _stop(self, job_id: int, attempt: int, reason: str) -> None:
        assert self.coordinator is not None
        where = self._where.get((job_id, attempt))
        # the batch may have gone where Dask put it (placement strategy "dask"): then tell every worker
        slots = self.coordinator.registry.slots
        addresses = [where] if where in slots else [a for a, s in slots.items() if s.status != "gone"]
        for address in addresses:
            try:
                await asyncio.wait_for(self.coordinator.client.rpc(address).clusterai_stop(
                    job_id=job_id, attempt=attempt, reason=reason), 10)
            except (OSError, asyncio.TimeoutError) as exc:  # the worker is gone: its attempt ends anyway
                log.info("could not tell %s to stop job %d: %s", address, job_id, exc)

    # -- reconciling --------------------------------------------------------------------------

    def _mark(self, sweep_id: int) -> None:
        self._dirty.add(sweep_id)
        if not self._soon and self._loop is not None:
            self._soon = True  # after the coordinator's finish has been committed and told to everyone
            self._loop.call_soon(self._reconcile_dirty)

    def _reconcile_dirty(self) -> None:
        self._soon = False
        while self._dirty:
            sweep_id = self._dirty.pop()
            try:
                self._reconcile(sweep_id)
            except StoreUnavailable as exc:
                log.warning("store unavailable while running sweep %d: %s", sweep_id, exc)
                return  # the next tick tries again
            except ClusterAIError as exc:  # one broken sweep must not stop the others
                log.error("sweep %d cannot go on: %s", sweep_id, exc)
                self._fail(sweep_id, str(exc))
            except Exception as exc:
                log.exception("sweep %d cannot go on", sweep_id)
                self._fail(sweep_id, f"{type(exc).__name__}: {exc}")

    def _load(self, record: SweepRecord) -> _Sweep:
        sweep = self._sweeps.get(record.id)
        if sweep is None:
            metric = record.spec["metric"]
            curves = {n: {step: m[metric] for step, m, _ in points if metric in m}
                      for n, points in self.store.trial_metrics(record.id).items()}
            sweep = self._sweeps[record.id] = _Sweep(record, curves)
            self._objectives.add(sweep.spec.objective)
        return sweep

    def _forget(self, sweep_id: int) -> None:
        sweep = self._sweeps.pop(sweep_id, None)
        if sweep is not None:
            self._objectives = {s.spec.objective for s in self._sweeps.values()}
        for job_id in [j for j, (s, _) in self._trial_of.items() if s == sweep_id]:
            del self._trial_of[job_id]

    def _reconcile(self, sweep_id: int) -> None:
        record = self.store.get_sweep(sweep_id)
        if record.state != "running":
            self._forget(sweep_id)
            return
        sweep = self._load(record)
        trials = self._record_outcomes(sweep, self.store.trials(sweep_id))
        running = [t for t in trials if t.state == "running"]
        done = [t for t in trials if t.state in TRIAL_DONE]
        if len(done) >= sweep.spec.trials and not running:
            self._finish(record, sweep, trials)
            return
        room = min(sweep.spec.trials - len(done) - len(running), self._concurrency(sweep) - len(running))
        if room > 0:
            self._make_trials(sweep, trials, room)

    def _record_outcomes(self, sweep: _Sweep, trials: list[TrialRecord]) -> list[TrialRecord]:
        running = [t for t in trials if t.state == "running"]
        if not running:
            return trials
        states = self.store.states_of([t.job_id for t in running])
        ended = [t for t in running if states.get(t.job_id, State.CANCELLED).terminal]
        if not ended:
            return trials
        jobs = {j.id: j for j in self.store.get_many_found([t.job_id for t in ended])}
        rows: list[tuple[int, int, str, float | None, str | None]] = []
        for t in ended:
            job = jobs.get(t.job_id)
            if job is None:  # its job was deleted (retention): nothing will ever finish it
                rows.append((sweep.id, t.number, "cancelled", None, "the trial's job no longer exists"))
                continue
            curve = sweep.curves.get(t.number) or {}
            last = curve[max(curve)] if curve else None
            state, value, note = trial_outcome(job.state, job.result, job.error, sweep.spec.metric, last)
            rows.append((sweep.id, t.number, state, value, note))
        self.store.finish_trials(rows, time.time())
        return self.store.trials(sweep.id)

    def _concurrency(self, sweep: _Sweep) -> int:
        if sweep.spec.concurrency is not None:
            return sweep.spec.concurrency
        assert self.coordinator is not None
        slots = [s for s in self.coordinator.registry.slots.values() if s.status not in ("gone", "draining")]
        return max(1, sum(s.concurrency or s.nthreads for s in slots))

    def _make_trials(self, sweep: _Sweep, trials: list[TrialRecord], room: int) -> None:
        history = [TrialView(t.number, t.params, t.state, t.value, dict(sweep.curves.get(t.number) or {}))
                   for t in trials]
        make = spec_factory(self.config, sweep.spec.objective, owner=sweep.owner, **sweep.spec.job)
        number = max((t.number for t in trials), default=-1) + 1
        entries = []
        for n in range(number, number + room):
            params = sweep.sampler.suggest(n, history)
            entries.append((n, params, make(params, idempotency_key=trial_key(sweep.id, n))))
            history.append(TrialView(n, params, "running"))
        jobs = self.store.add_trials(sweep.id, entries, time.time())
        if jobs:
            for (n, _, _), job in zip(entries, jobs):
                self._trial_of[job.id] = (sweep.id, n)
            log.info("sweep %d: made trials %d-%d", sweep.id, number, number + len(jobs) - 1)
            assert self.coordinator is not None
            self.coordinator.wake()

    def _finish(self, record: SweepRecord, sweep: _Sweep, trials: list[TrialRecord]) -> None:
        scored = [t for t in trials if t.state == "succeeded" and t.value is not None]
        now = time.time()
        if not scored:
            self.store.update_sweep(sweep.id, "failed", now, expected="running",
                                    note=f"none of its {len(trials)} trials succeeded")
            self._forget(sweep.id)
            return
        best = (max if sweep.spec.maximize else min)(scored, key=lambda t: t.value or 0.0)
        version, note = self._model_of(record, sweep, best)
        result = self.store.update_sweep(sweep.id, "succeeded", now, expected="running", best=best.number,
                                         note=note, register=version)
        if isinstance(result, ModelVersion):
            log.info("sweep %d: registered %s version %d (trial %d)", sweep.id, result.name, result.version,
                     best.number)
        self._forget(sweep.id)

    def _model_of(self, record: SweepRecord, sweep: _Sweep, best: TrialRecord
                  ) -> tuple[ModelVersion | None, str | None]:
        register = sweep.spec.register
        if register is None:
            return None, None
        job = self.store.get(best.job_id, attempts=False)
        result = job.result if isinstance(job.result, dict) else {}
        model = result.get("model")
        if not (isinstance(model, dict) and isinstance(model.get("artifact"), str) and model.get("sha256")):
            return None, (f"trial {best.number} returned no model ({{'model': artifact}}); nothing was registered "
                          f"as {register['name']}")
        metrics: dict[str, float] = {k: v for k, v in result.items() if isinstance(v, float)}
        if best.value is not None:
            metrics[sweep.spec.metric] = best.value
        aliases = (register["alias"],) if register.get("alias") else ()
        return ModelVersion(name=register["name"], version=0, artifact=dict(model), created_at=0.0,
                            params=best.params, metrics=metrics, sweep_id=sweep.id, trial=best.number,
                            job_id=best.job_id, created_by=record.owner, aliases=aliases), None

    def _fail(self, sweep_id: int, why: str) -> None:
        try:
            self.store.update_sweep(sweep_id, "failed", time.time(), expected="running", note=why[:2000])
        except StoreUnavailable:
            return
        self._forget(sweep_id)
