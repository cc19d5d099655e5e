"""Hyper-parameter sweeps (issue: training): clusterai's sweeps beside Optuna on plain Dask (DaskStorage)
and Ray Tune (OptunaSearch), on 1 and on 2 worker processes, and a worker SIGKILLed mid-sweep.

    python -m bench.sweeps [--trials 32] [--epochs 20] [--rounds 1]
                           [--peers clusterai,optuna_dask,ray_tune,ray_tune_reuse] [--skip-kill]
                           [--out bench/results/sweeps.json]

Every peer runs the same objective body, `clusterai.workloads.training.sgd_digits` (scikit-learn's
SGDClassifier on the digits set, `partial_fit` epoch by epoch; outside a clusterai worker its
trial.report / checkpoint calls are no-ops, so the peers call it as a plain function), over the same
space (alpha log-uniform in [1e-6, 0.1], penalty and loss each one of three, `epochs` fixed), for the
same number of trials, with Optuna's TPE sampler (seed 0, 8 start-up trials) and the validation
accuracy maximised. No sleeps: each trial is real CPU (about 1.5 s at 20 epochs on a 2.6 GHz EPYC).

- clusterai: `c.sweep("train.sgd_digits", ..., concurrency=N, wait=True)` on an embedded cluster of N
  worker processes, 1 thread each (trials are durable jobs; TPE runs on the head);
- optuna_dask: the pattern of Optuna's docs, a study on `optuna_integration.DaskStorage` and N
  `client.submit(study.optimize, objective, n_trials=share, pure=False)` on a
  `distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`;
- ray_tune: `tune.Tuner` with `OptunaSearch(sampler=TPESampler(...))`, `max_concurrent_trials=N` on
  `ray.init(num_cpus=N)`, Tune's defaults otherwise (a fresh actor process per trial, which imports
  scikit-learn anew); ray_tune_reuse: the same with `reuse_actors=True` (one process per slot).

Before the clock starts, every clusterai and Dask worker process has trained one 1-epoch model (the
imports and the data are loaded); Ray starts a new process for each trial, so it cannot be warmed.
The clock runs from the sweep's start to its last result. Kill runs (2 workers): when a quarter of
the trials are done, a worker process running a trial gets SIGKILL; what each system ends with is
recorded as measured (clusterai: the sweep's counts and its trials' attempts; Optuna + Dask: the
study's trials by state and what every `study.optimize` future did). Each configuration runs in a
fresh process (session) of its own; within a round the peers take turns.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, ROOT, log, wait_until, write_json
from bench.jobs import _table, _version, machine, run_in_own_session

PEERS = ("clusterai", "optuna_dask", "ray_tune", "ray_tune_reuse")
LABELS = {"clusterai": "clusterai", "optuna_dask": "Optuna + Dask (DaskStorage)",
          "ray_tune": "Ray Tune (OptunaSearch)", "ray_tune_reuse": "Ray Tune, reuse_actors=True"}
KILLABLE = ("clusterai", "optuna_dask")
WORKER_COUNTS = (1, 2)
PACKAGES = ("clusterai", "optuna", "optuna-integration", "ray", "dask", "distributed", "scikit-learn", "numpy",
            "psutil")

OBJECTIVE = "train.sgd_digits"
METRIC = "accuracy"
ALPHA = (1e-6, 1e-1)
PENALTIES = ("l1", "l2", "elasticnet")
LOSSES = ("hinge", "log_loss", "modified_huber")
SEED = 0
STARTUP_TRIALS = 8
EPOCHS = 20  # about 1.5 s of CPU a trial here
EPOCH_S = 0.08  # a rough epoch's time, for the time limits only
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def clusterai_space(epochs: int) -> dict[str, Any]:
    return {"alpha": {"loguniform": list(ALPHA)}, "penalty": list(PENALTIES), "loss": list(LOSSES), "epochs": epochs}


def shares(trials: int, workers: int) -> list[int]:
    """`trials` split over `workers` study.optimize calls, as evenly as it goes."""
    return [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]


def section_timeout(trials: int, epochs: int) -> float:
    return 150 + 4 * trials * max(1, epochs) * EPOCH_S


# -- the objective, as each peer calls it -----------------------------------------------------------


def warm(epochs: int = 1) -> int:
    """One short training in this process: the imports and the data loaded. Its pid."""
    from clusterai.workloads.training import sgd_digits

    sgd_digits(epochs=epochs)
    return os.getpid()


def optuna_objective(trial: Any, epochs: int) -> float:
    from clusterai.workloads.training import sgd_digits

    params = {"alpha": trial.suggest_float("alpha", *ALPHA, log=True),
              "penalty": trial.suggest_categorical("penalty", PENALTIES),
              "loss": trial.suggest_categorical("loss", LOSSES), "epochs": epochs}
    return float(sgd_digits(**params)[METRIC])


def optimize_share(storage: Any, study_name: str, objective: Any, n_trials: int, seed: int) -> None:
    """One worker's part of the Optuna study, with a sampler of its own seed."""
    import optuna
    from optuna.samplers import TPESampler

    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS))
    study.optimize(objective, n_trials=n_trials)


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


def ray_objective(config: dict[str, Any]) -> None:
    from ray import tune

    from clusterai.workloads.training import sgd_digits

    tune.report({METRIC: float(sgd_digits(**config)[METRIC])})


# -- the machine around a timed run -----------------------------------------------------------------


def _system_cpu() -> tuple[float, float]:
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def _machine_during(system0: tuple[float, float], wall: float) -> dict[str, float]:
    """How busy the whole machine was (every process, ours too) and what the hypervisor stole, in cores."""
    busy, steal = _system_cpu()
    return {"machine_busy_cores": round((busy - system0[0]) / wall, 2),
            "steal_cores": round((steal - system0[1]) / wall, 2)}


def _summary_of_trials(values: list[float], durations: list[float], params: list[dict[str, Any]], workers: int,
                       wall: float) -> dict[str, Any]:
    distinct = {tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in p.items()))
                for p in params}
    return {
        "values": [round(v, 4) for v in values],
        "distinct_params": len(distinct),
        "trial_s_median": round(statistics.median(durations), 3) if durations else None,
        "trial_s_sum": round(sum(durations), 2),
        # time in trials over workers x wall: what is left is waiting for a trial to start and to be recorded
        "utilisation": round(sum(durations) / (workers * wall), 3) if wall else None,
    }


# -- clusterai --------------------------------------------------------------------------------------


def run_clusterai(workers: int, trials: int, epochs: int, kill: bool, tmp: Path) -> dict[str, Any]:
    import clusterai
    from clusterai.config import parse_config

    os.environ["CLUSTERAI_ARTIFACTS"] = (tmp / "artifacts").as_uri()  # the workers inherit it
    conf = parse_config({
        "store": f"sqlite:///{tmp / 'clusterai.db'}",
        "cluster": {"workers": workers, "threads_per_worker": 1, "dashboard": False},
    }, source="bench.sweeps")
    limit = section_timeout(trials, epochs) - 60
    connect_started = time.perf_counter()
    with clusterai.connect(conf) as c:

        def live() -> list[Any]:
            return [w for w in c.workers() if w.status == "ready" and w.pid]

        wait_until(lambda: len(live()) >= workers, 90, f"{workers} clusterai workers to be ready")
        connect_s = time.perf_counter() - connect_started
        warmups = c.submit_many(OBJECTIVE, [{"epochs": 1}] * (2 * workers))
        c.wait(warmups, timeout=120)
        warmed = {a.worker for j in warmups for a in c.get(j).attempts if a.worker}

        sampler = {"kind": "tpe", "seed": SEED, "startup_trials": STARTUP_TRIALS}
        options = {"sampler": sampler, "metric": METRIC, "mode": "max", "concurrency": workers}
        system0 = _system_cpu()
        started = time.perf_counter()
        killed: dict[str, Any] | None = None
        if not kill:
            status = c.sweep(OBJECTIVE, clusterai_space(epochs), trials, wait=True, timeout=limit, **options)
        else:
            sweep = c.sweep(OBJECTIVE, clusterai_space(epochs), trials, **options)
            quarter = math.ceil(trials / 4)
            wait_until(lambda: c.sweeps.status(sweep["id"], curves=False)["counts"]["done"] >= quarter, limit,
                       f"{quarter} trials to be done", pause=0.02)
            killed = _kill_clusterai_worker(c, sweep["id"], live(), trials)
            status = c.sweeps.wait(sweep["id"], timeout=limit)
        wall = time.perf_counter() - started
        during = _machine_during(system0, wall)
        jobs = {t["job_id"]: c.get(t["job_id"]) for t in status["trials"]}
        live_after = len(live())
    durations, lost = [], []
    for job in jobs.values():
        durations.append(sum(a.finished_at - a.started_at for a in job.attempts if a.finished_at is not None))
        if any(a.outcome is not None and a.outcome.value == "lost" for a in job.attempts):
            lost.append(job.id)
    trial_rows = status["trials"]
    numbers = sorted(t["number"] for t in trial_rows)
    best = status["best"] or {}
    result: dict[str, Any] = {
        "peer": "clusterai", "workers": workers, "trials_wanted": trials, "epochs": epochs,
        "connect_s": round(connect_s, 1), "warmed_workers": len(warmed), "wall_s": round(wall, 3), **during,
        "state": status["state"], "note": status["note"], "counts": status["counts"],
        "trials_complete": status["counts"]["succeeded"],
        "trial_numbers_exact": numbers == list(range(trials)),
        "best_value": best.get("value"), "best_params": best.get("params"), "best_trial": best.get("number"),
        "attempts": sum(len(j.attempts) for j in jobs.values()),
        **_summary_of_trials([t["value"] for t in trial_rows if t["value"] is not None], durations,
                             [t["params"] for t in trial_rows], workers, wall),
    }
    if killed is not None:
        victim_job = jobs.get(killed.get("job_id"))
        killed.update({
            "jobs_with_a_lost_attempt": len(lost), "live_workers_at_end": live_after,
            "victim_trial_attempts": [{"worker": a.worker, "outcome": a.outcome.value if a.outcome else None,
                                       "s": round(a.finished_at - a.started_at, 3) if a.finished_at else None}
                                      for a in victim_job.attempts] if victim_job is not None else None,
        })
        result["kill"] = killed
    return result


def _kill_clusterai_worker(c: Any, sweep_id: int, live: list[Any], trials: int) -> dict[str, Any]:
    """SIGKILL a worker process that is running a trial (any live one if none is, at this instant)."""
    running = [j for j in c.list(state="running", task=OBJECTIVE, limit=50) if j.worker]
    by_address = {w.address: w for w in live}
    target = next(((j, by_address[j.worker]) for j in running if j.worker in by_address), None)
    job, victim = target if target is not None else (None, live[0])
    done = c.sweeps.status(sweep_id, curves=False)["counts"]["done"]
    os.kill(victim.pid, signal.SIGKILL)
    log(f"clusterai: SIGKILL to worker {victim.address} (pid {victim.pid}) with {done}/{trials} trials done"
        + (f", running job {job.id}" if job is not None else ", running no trial"))
    return {"pid": victim.pid, "worker": victim.address, "trials_done_at_kill": done,
            "was_running_a_trial": job is not None, "job_id": job.id if job is not None else None}


# -- Optuna on plain Dask ---------------------------------------------------------------------------


def run_optuna_dask(workers: int, trials: int, epochs: int, kill: bool, tmp: Path) -> dict[str, Any]:
    import optuna
    from distributed import Client, LocalCluster
    from distributed import wait as dask_wait
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState
    from optuna_integration import DaskStorage

    _quiet_optuna()
    os.environ["CLUSTERAI_ARTIFACTS"] = (tmp / "artifacts").as_uri()  # the worker processes inherit it
    limit = section_timeout(trials, epochs) - 60
    connect_started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      local_directory=str(tmp / "dask")) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers, timeout=90)
        connect_s = time.perf_counter() - connect_started
        pids: dict[str, int] = client.run(warm)  # every worker: the imports and the data loaded
        client.run(_quiet_optuna)  # no INFO line per trial (a worker the nanny restarts logs them again)

        storage = DaskStorage(client=client)
        study = optuna.create_study(storage=storage, direction="maximize",
                                    sampler=TPESampler(seed=SEED, n_startup_trials=STARTUP_TRIALS))
        objective = partial(optuna_objective, epochs=epochs)
        system0 = _system_cpu()
        started = time.perf_counter()
        # one seed per worker's share: a seeded sampler pickled into every task as it is would make
        # every worker draw the same points (Optuna reseeds only for n_jobs > 1)
        futures = [client.submit(optimize_share, storage, study.study_name, objective, share, SEED + i, pure=False)
                   for i, share in enumerate(shares(trials, workers))]
        killed: dict[str, Any] | None = None
        if kill:
            quarter = math.ceil(trials / 4)

            def complete() -> int:
                return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

            wait_until(lambda: complete() >= quarter, limit, f"{quarter} Optuna trials to be complete", pause=0.02)
            keys = {f.key for f in futures}
            busy = [a for a, ks in client.processing().items() if keys & set(ks)]
            victim = busy[0] if busy else next(iter(pids))
            done = complete()
            os.kill(pids[victim], signal.SIGKILL)
            log(f"optuna_dask: SIGKILL to worker {victim} (pid {pids[victim]}) with {done}/{trials} trials complete")
            killed = {"pid": pids[victim], "worker": victim, "trials_complete_at_kill": done,
                      "was_running_a_trial": bool(busy)}
        try:
            dask_wait(futures, timeout=limit)
            timed_out = False
        except TimeoutError:
            timed_out = True
        wall = time.perf_counter() - started
        during = _machine_during(system0, wall)
        outcomes = []
        for f in futures:
            exc = f.exception() if f.status == "error" else None
            outcomes.append({"status": f.status, "raised": None if exc is None else f"{type(exc).__name__}: {exc}"})
        all_trials = study.get_trials(deepcopy=False)
        workers_at_end = len(client.scheduler_info()["workers"])
    by_state: dict[str, int] = {}
    for t in all_trials:
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    complete_trials = [t for t in all_trials if t.state == TrialState.COMPLETE and t.value is not None]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in complete_trials
                 if t.datetime_complete and t.datetime_start]
    best = max(complete_trials, key=lambda t: float(t.value or 0.0)) if complete_trials else None
    result: dict[str, Any] = {
        "peer": "optuna_dask", "workers": workers, "trials_wanted": trials, "epochs": epochs,
        "connect_s": round(connect_s, 1), "warmed_workers": len(pids), "wall_s": round(wall, 3), **during,
        "timed_out": timed_out, "trials_total": len(all_trials), "trials_by_state": by_state,
        "trials_complete": len(complete_trials), "futures": outcomes,
        "best_value": best.value if best else None,
        "best_params": {**best.params, "epochs": epochs} if best else None,
        "best_trial": best.number if best else None,
        **_summary_of_trials([float(t.value or 0.0) for t in complete_trials], durations,
                             [t.params for t in all_trials if t.params], workers, wall),
    }
    if killed is not None:
        killed["workers_at_end"] = workers_at_end
        killed["futures_raised"] = sum(1 for o in outcomes if o["raised"])
        result["kill"] = killed
    return result


# -- Ray Tune ---------------------------------------------------------------------------------------


def run_ray_tune(workers: int, trials: int, epochs: int, kill: bool, tmp: Path, reuse: bool = False
                 ) -> dict[str, Any]:
    if kill:
        raise ValueError("no kill run for Ray Tune")
    import optuna
    import ray
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["CLUSTERAI_ARTIFACTS"] = (tmp / "artifacts").as_uri()  # Ray's worker processes inherit it
    # Ray keeps an auth token under ~/.ray: a home of the run's own, so nothing lands in the user's
    os.environ["HOME"] = str(tmp / "home")
    connect_started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False)
    try:
        connect_s = time.perf_counter() - connect_started
        searcher = OptunaSearch(metric=METRIC, mode="max",
                                sampler=TPESampler(seed=SEED, n_startup_trials=STARTUP_TRIALS))
        param_space = {"alpha": tune.loguniform(*ALPHA), "penalty": tune.choice(list(PENALTIES)),
                       "loss": tune.choice(list(LOSSES)), "epochs": epochs}
        tuner = tune.Tuner(
            ray_objective, param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials, max_concurrent_trials=workers,
                                        reuse_actors=reuse),
            run_config=tune.RunConfig(storage_path=str(tmp / "ray_results"), name="sweep", verbose=0))
        system0 = _system_cpu()
        started = time.perf_counter()
        results = tuner.fit()
        wall = time.perf_counter() - started
        during = _machine_during(system0, wall)
        rows = [results[i] for i in range(len(results))]
        configs = [dict(r.config or {}) for r in rows]
        # (config, metrics) of every trial that reported its accuracy
        ok = [(dict(r.config or {}), dict(r.metrics or {})) for r in rows if r.error is None]
        ok = [(config, metrics) for config, metrics in ok if METRIC in metrics]
        best = max(ok, key=lambda pair: float(pair[1][METRIC])) if ok else None
        durations = [float(metrics["time_total_s"]) for _, metrics in ok if "time_total_s" in metrics]
        errored = results.num_errors
    finally:
        ray.shutdown()
    return {
        "peer": "ray_tune_reuse" if reuse else "ray_tune", "reuse_actors": reuse, "workers": workers,
        "trials_wanted": trials, "epochs": epochs,
        "connect_s": round(connect_s, 1), "warmed_workers": 0, "wall_s": round(wall, 3), **during,
        "trials_total": len(rows), "trials_complete": len(ok), "trials_errored": errored,
        "best_value": best[1][METRIC] if best else None,
        "best_params": {k: best[0][k] for k in ("alpha", "penalty", "loss", "epochs")} if best else None,
        **_summary_of_trials([float(metrics[METRIC]) for _, metrics in ok], durations,
                             [{k: c.get(k) for k in ("alpha", "penalty", "loss")} for c in configs],
                             workers, wall),
    }


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "clusterai": run_clusterai, "optuna_dask": run_optuna_dask, "ray_tune": run_ray_tune,
    "ray_tune_reuse": partial(run_ray_tune, reuse=True),
}


def run_section(peer: str, workers: int, trials: int, epochs: int, kill: bool, out: Path) -> None:
    # what the systems print (Ray Tune's banner) goes to stderr: stdout is the report's
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp, contextlib.redirect_stdout(sys.stderr):
        result = RUNNERS[peer](workers, trials, epochs, kill, Path(tmp))
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    write_json(out, result)


# -- the runner -------------------------------------------------------------------------------------


def spawn(peer: str, workers: int, trials: int, epochs: int, kill: bool) -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # the Dask and Ray worker processes import bench.sweeps (the objective functions)
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": path}
    args = ["bench.sweeps", "--section", peer, "--workers", str(workers), "--trials", str(trials),
            "--epochs", str(epochs), *(["--kill"] if kill else [])]
    started = time.perf_counter()
    result = run_in_own_session(args, env, section_timeout(trials, epochs))
    result["process_s"] = round(time.perf_counter() - started, 1)
    return result


def _key(peer: str, workers: int, kill: bool = False) -> str:
    return f"{peer}_kill" if kill else f"{peer}_{workers}w"


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def _ok(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if "error" not in r and "skipped" not in r]


def _paired(runs: dict[str, list[dict[str, Any]]], num: str, den: str) -> dict[str, Any] | None:
    """num's wall / den's, round by round, then their spread."""
    a, b = runs.get(num, []), runs.get(den, [])
    ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(a, b) if x in _ok([x]) and y in _ok([y])]
    return _spread(ratios) if ratios else None


def summarise(runs: dict[str, list[dict[str, Any]]], peers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, results in runs.items():
        ok = _ok(results)
        if not ok:
            continue
        out[key] = {m: _spread([r[m] for r in ok if r.get(m) is not None])
                    for m in ("wall_s", "best_value", "utilisation", "trial_s_median", "machine_busy_cores")
                    if any(r.get(m) is not None for r in ok)}
    ratios: dict[str, Any] = {}
    for peer in peers:
        if (r := _paired(runs, _key(peer, 1), _key(peer, 2))) is not None:
            ratios[f"speedup_{peer}"] = r  # wall on 1 worker / wall on 2
        if peer != "clusterai":
            for n in WORKER_COUNTS:  # the peer's wall / clusterai's: above 1, clusterai is faster
                if (r := _paired(runs, _key(peer, n), _key("clusterai", n))) is not None:
                    ratios[f"{peer}_vs_clusterai_{n}w"] = r
    out["ratios"] = ratios
    return out


def report(runs: dict[str, list[dict[str, Any]]], summary: dict[str, Any], peers: list[str], trials: int,
           epochs: int) -> str:
    def cell(s: dict[str, Any] | None, digits: int = 2) -> str:
        if s is None:
            return "-"
        if s["min"] == s["max"]:
            return f"{s['median']:.{digits}f}"
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    rows = []
    for peer in peers:
        for n in WORKER_COUNTS:
            key = _key(peer, n)
            results = runs.get(key, [])
            if not results:
                continue
            if not _ok(results):
                rows.append([f"{LABELS[peer]}, {n} worker{'s' * (n > 1)}", results[0].get("skipped")
                             or results[0].get("error"), "", "", "", "", "", "", ""])
                continue
            got, last = summary[key], _ok(results)[-1]
            speedup = summary["ratios"].get(f"speedup_{peer}") if n == 2 else None
            vs = summary["ratios"].get(f"{peer}_vs_clusterai_{n}w")
            rows.append([f"{LABELS[peer]}, {n} worker{'s' * (n > 1)}", len(_ok(results)), cell(got["wall_s"]),
                         cell(speedup), cell(vs), cell(got.get("best_value"), 4),
                         f"{last['trials_complete']}/{trials} ({last['distinct_params']} distinct)",
                         cell(got.get("trial_s_median"), 3), cell(got.get("utilisation"), 3)])
    table = _table(["system", "runs", "wall s", "speed-up 1→2", "wall ÷ clusterai's", "best accuracy",
                    "trials complete", "trial s (median)", "utilisation"], rows)
    lines = [f"{trials} trials of train.sgd_digits, {epochs} epochs, TPE (seed {SEED}, {STARTUP_TRIALS} start-up "
             "trials); median (min–max) over rounds", table]
    kills = []
    for peer in peers:
        for r in runs.get(_key(peer, 2, kill=True), []):
            if not _ok([r]):
                kills.append([LABELS[peer], r.get("error"), "", "", "", "", ""])
                continue
            k = r.get("kill", {})
            if peer == "clusterai":
                counts = r["counts"]
                ended = (f"sweep {r['state']}: {counts['succeeded']} succeeded, {counts['failed']} failed, "
                         f"{counts['running']} running, {counts['cancelled']} cancelled")
                exact = "yes" if r["trial_numbers_exact"] and r["trials_complete"] == trials else "no"
                after = (f"{k.get('jobs_with_a_lost_attempt')} trial(s) with a lost attempt, {r['attempts']} "
                         f"attempts; {k.get('live_workers_at_end')} workers live as it ended")
                at = k.get("trials_done_at_kill")
            else:
                ended = (f"{r['trials_total']} trials: "
                         + ", ".join(f"{n} {state}" for state, n in sorted(r["trials_by_state"].items()))
                         + ("; TIMED OUT" if r.get("timed_out") else ""))
                exact = "yes" if r["trials_complete"] == trials and r["trials_total"] == trials else "no"
                raised = [o["raised"] for o in r["futures"] if o["raised"]]
                after = (f"futures: {', '.join(o['status'] for o in r['futures'])}"
                         + (f"; raised: {'; '.join(raised)}" if raised else "; none raised")
                         + f"; {k.get('workers_at_end')} workers at the end")
                at = k.get("trials_complete_at_kill")
            kills.append([LABELS[peer], f"{at}/{trials}", "yes" if k.get("was_running_a_trial") else "no",
                          f"{r['wall_s']:.2f}", ended, exact, after])
    if kills:
        lines += ["", "SIGKILL of one of 2 worker processes once a quarter of the trials were done",
                  _table(["system", "done at kill", "victim mid-trial", "wall s", "ended with",
                          f"exactly {trials} complete", "afterwards"], kills)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32, help="trials per sweep (default 32)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per trial (default {EPOCHS})")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over every configuration (default 1)")
    parser.add_argument("--skip-kill", action="store_true", help="no SIGKILL runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweeps.json")
    parser.add_argument("--section", choices=PEERS, help=argparse.SUPPRESS)  # internal: one configuration
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--kill", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.workers, args.trials, args.epochs, args.kill, args.out)
        return 0
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        parser.error(f"--peers: unknown {unknown}; choose from {', '.join(PEERS)}")
    if args.trials < 1 or args.epochs < 1 or args.rounds < 1:
        parser.error("--trials, --epochs and --rounds must be at least 1")

    started = time.perf_counter()
    info = machine()
    info.pop("redis_server", None)
    info["packages"] = {p: _version(p) for p in PACKAGES}
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}")
    skipped: dict[str, str] = {}
    for peer in ("ray_tune", "ray_tune_reuse"):
        if peer in peers:
            try:
                import ray.tune  # noqa: F401
            except ImportError as exc:
                skipped[peer] = f"not installed: {exc}"
                log(f"{peer} skipped: {skipped[peer]}")
    runs: dict[str, list[dict[str, Any]]] = {}
    for n in range(args.rounds):
        configs = [(p, w, False) for w in WORKER_COUNTS for p in peers]
        if not args.skip_kill:
            configs += [(p, 2, True) for p in peers if p in KILLABLE]
        for peer, workers, kill in configs:
            key = _key(peer, workers, kill)
            if peer in skipped:
                runs.setdefault(key, []).append({"skipped": skipped[peer]})
                continue
            log(f"round {n + 1}/{args.rounds}: {key}")
            result = spawn(peer, workers, args.trials, args.epochs, kill)
            runs.setdefault(key, []).append(result)
            if "error" in result:
                log(f"{key}: {result['error']}")
            else:
                log(f"{key}: {result['wall_s']} s, {result['trials_complete']}/{args.trials} trials complete, "
                    f"best {result['best_value']}")
    summary = summarise(runs, peers)
    write_json(args.out, {
        "machine": info, "command": " ".join(["python -m bench.sweeps", *(argv if argv is not None else sys.argv[1:])]),
        "objective": {"task": OBJECTIVE, "space": clusterai_space(args.epochs), "trials": args.trials,
                      "metric": METRIC, "mode": "max",
                      "sampler": {"kind": "tpe", "seed": SEED, "startup_trials": STARTUP_TRIALS}},
        "rounds": args.rounds, "peers": peers, "skipped": skipped, "wall_s": round(time.perf_counter() - started, 1),
        "runs": runs, "summary": summary,
    })
    print(report(runs, summary, peers, args.trials, args.epochs))
    log(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 1 if any("error" in r for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
