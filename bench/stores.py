"""The job store: PostgreSQL beside SQLite, in one run, on this machine.

    python -m bench.stores [--quick] [--only floors e2e claims] [--experiments]
                           [--claimers processes|threads] [--out bench/results/stores.json]

- e2e: an embedded cluster (2 worker processes, as in bench.jobs) whose `store` is a SQLite file
  or a PostgreSQL database: no-op jobs/s for a batch of 5,000 submitted at once (median of 3),
  and 200 sequential submit -> result round trips. Each backend in a fresh process of its own.
- claims: `store.claim(worker, batch, ...)` from 1, 4 and 8 concurrent claimers, each with its own
  store object, draining 20,000 queued jobs, in batches of 10 and of 100: claims/s and jobs/s; every
  job must be claimed exactly once. Every case starts from a copy of the same filled store.
- floors: what one round trip and one small commit cost on each backend.

PostgreSQL is a throwaway server on loopback (tests/support/pgserver.py) with `durable=True`:
fsync, synchronous_commit and full_page_writes at PostgreSQL's defaults (on). The SQLite store
runs as clusterai opens it: WAL, synchronous=NORMAL (no fsync at commit; fsync at checkpoints).

--experiments adds PostgreSQL variants that isolate two costs: synchronous_commit=off (commits
do not wait for the WAL flush) and a store whose events are written without the advisory lock
that serialises event-writing commits (patched in the benchmark's processes only; it breaks the
commit order of event ids, so it is a measurement, never a setting).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.clusterai_jobs import config, round_trip, run_batch, warm_up
from bench.common import RESULTS, ROOT, latency_stats, log, measure_latency, measure_throughput, sized, write_json
from bench.jobs import _fmt, _table, _version, machine, run_in_own_session
from bench.scale import _fill

E2E_JOBS = sized(5_000)
E2E_ROUNDS = sized(200)
QUEUED = sized(20_000)
CLAIMERS = (1, 4, 8)
BATCHES = (10, 100)
FLOOR_ROUNDS = 300
SECTION_TIMEOUT = 300

# backend variants: the two stores as clusterai runs them, and (--experiments) PostgreSQL with one
# cost taken away at a time
VARIANTS: dict[str, dict[str, Any]] = {
    "sqlite": {"label": "SQLite"},
    "postgres": {"label": "PostgreSQL"},
    "pg_async_commit": {"label": "PostgreSQL, synchronous_commit=off", "async_commit": True},
    "pg_no_events_lock": {"label": "PostgreSQL, no events lock", "no_events_lock": True},
    "pg_async_no_lock": {"label": "PostgreSQL, both", "async_commit": True, "no_events_lock": True},
}
BASE = ("sqlite", "postgres")
EXPERIMENTS = ("pg_async_commit", "pg_no_events_lock", "pg_async_no_lock")
# end to end, the experiments that single out a commit cost (the "both" variant adds nothing there)
E2E_EXPERIMENTS = ("pg_async_commit", "pg_no_events_lock")


def _pgserver() -> Any:
    """tests/support/pgserver.py, imported by its path (the tests' throwaway PostgreSQL)."""
    path = ROOT / "tests" / "support" / "pgserver.py"
    spec = importlib.util.spec_from_file_location("clusterai_bench_pgserver", path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_events_lock() -> None:
    """EXPERIMENT ONLY: write events without the advisory lock (ids then no longer follow commits)."""
    from clusterai.store import postgres

    def write_events(self: Any) -> None:
        wake = False
        for sql, rows in self._events:
            self._cur.executemany(postgres.translate(sql), rows)
            wake = wake or any(len(r) == 5 and r[2] in ("queued", "pending") for r in rows)
        if wake:
            self._cur.execute(f"NOTIFY {postgres.CHANNEL}")

    postgres._Cursor.write_events = write_events


# -- the throwaway PostgreSQL server and its databases ----------------------------------------


class Databases:
    """The PostgreSQL server (durable) and the SQLite files of one run."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.server = _pgserver().PgServer(durable=True).start()
        self._names = 0

    def admin(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.server.url(), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def fresh(self, variant: str, template: str | None = None) -> str:
        """A new, empty (or copied from `template`) store for this variant; its URL."""
        self._names += 1
        name = f"{variant}_{self._names}"
        if variant == "sqlite":
            path = self.tmp / f"{name}.db"
            if template:
                for suffix in ("", "-wal"):  # the template was closed: normally no WAL is left
                    if Path(f"{template}{suffix}").exists():
                        shutil.copyfile(f"{template}{suffix}", f"{path}{suffix}")
            return f"sqlite:///{path}"
        copy = f' TEMPLATE "{template}"' if template else ""
        self.admin(f'CREATE DATABASE "{name}"{copy}')
        if VARIANTS[variant].get("async_commit"):
            self.admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        return self.server.url(name)

    def drop(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            self.admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def settings(self) -> dict[str, str]:
        names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
                 "shared_buffers", "max_wal_size")
        return {n: self.admin(f"SHOW {n}")[0][0] for n in names}

    def stop(self) -> None:
        self.server.stop()


# -- floors: one round trip, one small commit ---------------------------------------------------


def _median_us(run: Callable[[], object], rounds: int = FLOOR_ROUNDS) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1e6, 1)


def floors(dbs: Databases) -> dict[str, Any]:
    """The cost of a read round trip and of committing a one-row update, per backend."""
    import psycopg

    from clusterai.store import open_store

    out: dict[str, Any] = {}
    url = dbs.fresh("postgres")
    store = open_store(url)
    try:
        out["pg_store_read_us"] = _median_us(lambda: store._read("SELECT 1"))
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE floor (id INT PRIMARY KEY, v INT)")
        conn.execute("INSERT INTO floor VALUES (1, 0)")
        out["pg_select1_us"] = _median_us(lambda: conn.execute("SELECT 1").fetchall())

        def commit() -> None:
            conn.execute("BEGIN")
            conn.execute("UPDATE floor SET v = v + 1 WHERE id = 1")
            conn.execute("COMMIT")

        out["pg_commit_us"] = _median_us(commit)
        conn.execute("SET synchronous_commit = off")
        out["pg_commit_async_us"] = _median_us(commit)
    dbs.drop(url)

    path = dbs.tmp / "floor.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE floor (id INT PRIMARY KEY, v INT)")
    db.execute("INSERT INTO floor VALUES (1, 0)")
    out["sqlite_select1_us"] = _median_us(lambda: db.execute("SELECT 1").fetchall())

    def sqlite_commit() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE floor SET v = v + 1 WHERE id = 1")
        db.execute("COMMIT")

    for sync in ("NORMAL", "FULL"):
        db.execute(f"PRAGMA synchronous={sync}")
        out[f"sqlite_commit_{sync.lower()}_us"] = _median_us(sqlite_commit)
    db.close()
    return out


# -- end to end: an embedded cluster on each store --------------------------------------------

# what the coordinator and the client ask the store during the throughput runs
TIMED_METHODS = ("submit_groups", "fetch_ready", "start_attempts", "finish_attempts", "states_of",
                 "changed", "promote_due", "next_due_at", "set_waiting", "get", "upsert_workers",
                 "renew_leases", "expired_leases")


class StoreTimer:
    """Wraps the store object's methods (instance attributes) to add up calls and seconds."""

    def __init__(self, store: Any):
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        for name in TIMED_METHODS:
            setattr(store, name, self._timed(name, getattr(store, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.calls[name] = self.calls.get(name, 0) + 1
                    self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

        return timed

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.seconds.clear()

    def per_job_us(self, jobs: int) -> dict[str, Any]:
        with self._lock:
            return {name: {"calls": self.calls[name], "us_per_job": round(self.seconds[name] / jobs * 1e6, 1)}
                    for name in sorted(self.seconds, key=lambda n: -self.seconds[n])}


def e2e(url: str, variant: str) -> dict[str, Any]:
    """In a fresh process: throughput and latency of an embedded cluster on this store."""
    import clusterai

    if VARIANTS[variant].get("no_events_lock"):
        _no_events_lock()
    with tempfile.TemporaryDirectory(prefix="clusterai-bench-") as tmp, \
            clusterai.connect(config(tmp).with_overrides(store=url)) as c:
        timer = StoreTimer(c.store)
        warm_up(c)
        log(f"e2e {variant}: throughput, {E2E_JOBS} no-op jobs at once")
        timer.reset()
        throughput = measure_throughput(lambda n: run_batch(c, n), E2E_JOBS)
        store_time = timer.per_job_us(E2E_JOBS * throughput["repeats"])
        log(f"e2e {variant}: latency, {E2E_ROUNDS} round trips")
        timer.reset()
        latency = measure_latency(lambda: round_trip(c), rounds=E2E_ROUNDS)
        store_time_latency = timer.per_job_us(E2E_ROUNDS)
        counts = c.counts()
        store_url = c.store.url
    if counts["succeeded"] != sum(counts.values()):
        raise RuntimeError(f"e2e {variant}: not every job succeeded: {counts}")
    return {"store": store_url, "throughput": throughput, "latency": latency,
            "jobs_succeeded": counts["succeeded"],
            "store_us_per_job_throughput": store_time, "store_us_per_job_latency": store_time_latency}


def spawn_e2e(url: str, variant: str) -> dict[str, Any]:
    """e2e() in a process (and session) of its own, as bench.jobs runs its sections."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return run_in_own_session(["bench.stores", "--e2e-section", variant, url], env, SECTION_TIMEOUT)


# -- claims: concurrent claimers draining one queue -------------------------------------------


def _claimer(url: str, name: str, batch: int, no_events_lock: bool, start: Any, results: Any) -> None:
    """Claim `batch` at a time until nothing is left; report the ids taken and the timings."""
    from clusterai.store import open_store

    if no_events_lock:
        _no_events_lock()
    try:
        store = open_store(url)
        try:
            store.job_counts()  # a connection made and the table read once: we time claims, not a cold start
            start.wait(60)
            ids = array("q")
            samples = []
            started = time.perf_counter()
            while True:
                t = time.perf_counter()
                now = time.time()
                jobs = store.claim(name, batch, now, now + 3600)
                samples.append(time.perf_counter() - t)
                if not jobs:
                    break
                ids.extend(j.id for j in jobs)
            finished = time.perf_counter()
        finally:
            store.close()
        results.put({"name": name, "started": started, "finished": finished, "ids": ids.tobytes(),
                     "samples": samples[:-1], "empty_claim_s": samples[-1]})
    except BaseException as exc:  # the parent must hear of it, or it waits for a result forever
        results.put({"name": name, "error": f"{type(exc).__name__}: {exc}"})
        raise


def claim_case(url: str, variant: str, claimers: int, batch: int, mode: str) -> dict[str, Any]:
    no_lock = bool(VARIANTS[variant].get("no_events_lock"))
    start: Any
    results: Any
    workers: list[Any]
    if mode == "processes":
        # fork: the parent holds no connection or thread of its own when it forks
        ctx = get_context("fork")
        start, results = ctx.Barrier(claimers), ctx.Queue()
        workers = [ctx.Process(target=_claimer, args=(url, f"claimer-{i}", batch, no_lock, start, results))
                   for i in range(claimers)]
    else:
        if no_lock:
            _no_events_lock()  # note: stays patched in this process; --claimers threads is for comparison
        start, results = threading.Barrier(claimers), queue.Queue()
        workers = [threading.Thread(target=_claimer, args=(url, f"claimer-{i}", batch, False, start, results))
                   for i in range(claimers)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=SECTION_TIMEOUT) for _ in workers]
    for w in workers:
        w.join(30)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        return {"error": "; ".join(errors)}
    ids = array("q")
    for r in reports:
        ids.frombytes(r["ids"])
    wall = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    samples = [s for r in reports for s in r["samples"]]
    claimed_once = len(ids) == len(set(ids)) == QUEUED
    # the store's own account must agree: every job running once, one attempt each
    from clusterai.store import open_store

    store = open_store(url)
    try:
        counts = store.job_counts()
        attempts = store._read("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM attempts")[0]
    finally:
        store.close()
    verified = claimed_once and counts["running"] == QUEUED and counts["queued"] == 0 and \
        tuple(attempts) == (QUEUED, QUEUED)
    if not verified:
        raise RuntimeError(f"claims {variant} x{claimers} batch {batch}: {len(ids)} ids taken,"
                           f" {len(set(ids))} distinct, store {counts}, attempts {attempts}")
    stats = latency_stats(samples)
    return {
        "claimers": claimers, "batch": batch, "jobs": len(ids), "claims": len(samples),
        "wall_s": round(wall, 3),
        "claims_per_s": round(len(samples) / wall, 1),
        "jobs_per_s": round(len(ids) / wall, 1),
        "claim_p50_ms": stats["p50_ms"], "claim_p99_ms": stats["p99_ms"],
        "per_claimer_jobs": sorted(len(r["ids"]) // 8 for r in reports),
        "each_job_claimed_once": True,
    }


def claims(dbs: Databases, variants: list[str], mode: str) -> dict[str, Any]:
    """Every (batch, claimers) case for every variant, interleaved, each from a copy of one filled store."""
    templates: dict[str, str] = {}
    log(f"claims: queueing {QUEUED} jobs in each template store")
    sqlite_url = dbs.fresh("sqlite")
    _fill(sqlite_url, QUEUED)  # the store is closed after: its WAL is checkpointed into the file
    templates["sqlite"] = sqlite_url[len("sqlite:///"):]
    if any(v != "sqlite" for v in variants):
        pg_url = dbs.fresh("postgres")
        _fill(pg_url, QUEUED)
        name = pg_url.rsplit("/", 1)[1]
        import psycopg

        # the statistics autovacuum would have gathered on a queue that has stood a minute
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        templates["postgres"] = name
    out: dict[str, Any] = {}
    for batch in BATCHES:
        for claimers in CLAIMERS:
            for variant in variants:
                url = dbs.fresh(variant, templates["sqlite" if variant == "sqlite" else "postgres"])
                try:
                    result = claim_case(url, variant, claimers, batch, mode)
                finally:
                    dbs.drop(url)
                log(f"claims: {variant:<18} batch {batch:>3}, {claimers} claimer(s):"
                    f" {_fmt(result.get('jobs_per_s'))} jobs/s, {_fmt(result.get('claims_per_s'))} claims/s")
                out.setdefault(variant, {})[f"b{batch}_c{claimers}"] = result
    return out


# -- figures and the report -------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """PostgreSQL / SQLite for each figure (above 1: PostgreSQL higher)."""
    e2e_ = results.get("e2e", {})
    out: dict[str, Any] = {}
    sq, pg = e2e_.get("sqlite", {}), e2e_.get("postgres", {})
    if "throughput" in sq and "throughput" in pg:
        out["e2e_jobs_per_s"] = _ratio(pg["throughput"]["jobs_per_s"], sq["throughput"]["jobs_per_s"])
        out["e2e_latency_p50"] = _ratio(pg["latency"]["p50_ms"], sq["latency"]["p50_ms"])
        out["e2e_latency_p99"] = _ratio(pg["latency"]["p99_ms"], sq["latency"]["p99_ms"])
    cl = results.get("claims", {})
    for case, figures in cl.get("postgres", {}).items():
        base = cl.get("sqlite", {}).get(case, {})
        out[f"claims_{case}_jobs_per_s"] = _ratio(figures.get("jobs_per_s"), base.get("jobs_per_s"))
    return out


def report(results: dict[str, Any], ratio: dict[str, Any]) -> str:
    parts = []
    e2e_ = results.get("e2e", {})
    if e2e_:
        rows = []
        for variant, r in e2e_.items():
            if "error" in r:
                rows.append([VARIANTS[variant]["label"], r["error"], None, None, None, None])
                continue
            st = r["store_us_per_job_throughput"]
            coord = sum(st.get(m, {}).get("us_per_job", 0) for m in ("fetch_ready", "start_attempts",
                                                                     "finish_attempts"))
            rows.append([VARIANTS[variant]["label"], r["throughput"]["jobs_per_s"], r["throughput"]["runs_jobs_per_s"],
                         r["latency"]["p50_ms"], r["latency"]["p99_ms"], round(coord, 1)])
        parts.append(_table(["store", f"jobs/s ({_fmt(E2E_JOBS)} at once, median of 3)", "runs",
                             "round trip p50 ms", "p99 ms", "coordinator store µs/job"], rows))
    cl = results.get("claims", {})
    if cl:
        variants = list(cl)
        header = ["batch", "claimers"]
        for v in variants:
            header += [f"{VARIANTS[v]['label']} jobs/s", "claims/s", "claim p50/p99 ms"]
        header.append("PostgreSQL / SQLite jobs/s")
        rows = []
        for batch in BATCHES:
            for claimers in CLAIMERS:
                case = f"b{batch}_c{claimers}"
                row: list[Any] = [batch, claimers]
                for v in variants:
                    r = cl[v].get(case, {})
                    row += [r.get("jobs_per_s"), r.get("claims_per_s"), [r.get("claim_p50_ms"), r.get("claim_p99_ms")]]
                row.append(ratio.get(f"claims_{case}_jobs_per_s"))
                rows.append(row)
        parts.append(_table(header, rows))
    fl = results.get("floors")
    if fl:
        parts.append(_table(["floor (median, µs)", "SQLite", "PostgreSQL"], [
            ["SELECT 1 (one round trip)", fl["sqlite_select1_us"], fl["pg_select1_us"]],
            ["SELECT 1 through the store (pool get/put)", None, fl["pg_store_read_us"]],
            ["commit of a one-row UPDATE, as the store runs (SQLite NORMAL, PostgreSQL sync on)",
             fl["sqlite_commit_normal_us"], fl["pg_commit_us"]],
            ["the same commit, SQLite synchronous=FULL / PostgreSQL synchronous_commit=off",
             fl["sqlite_commit_full_us"], fl["pg_commit_async_us"]],
        ]))
    if ratio:
        parts.append("PostgreSQL / SQLite: " + ", ".join(f"{k} {_fmt(v)}" for k, v in ratio.items()))
    return "\n\n".join(parts)


# -- entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stores", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=("floors", "e2e", "claims"))
    parser.add_argument("--experiments", action="store_true",
                        help="also PostgreSQL with synchronous_commit=off and without the events lock")
    parser.add_argument("--claimers", choices=("processes", "threads"), default="processes",
                        help="concurrent claimers as processes (default) or threads of one process")
    parser.add_argument("--quick", action="store_true", help="a smoke run at 1/10 the size; figures mean nothing")
    parser.add_argument("--out", type=Path, default=RESULTS / "stores.json")
    parser.add_argument("--e2e-section", nargs=2, metavar=("VARIANT", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.e2e_section:
        variant, url = args.e2e_section
        write_json(args.out, e2e(url, variant))
        return 0
    if args.quick and os.environ.get("BENCH_QUICK") != "1":
        # the sizes are read at import (bench.common.sized): start again with the variable set
        os.environ["BENCH_QUICK"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "bench.stores", *(argv or sys.argv[1:])])

    started = time.perf_counter()
    info = machine()
    info["packages"].update({p: _version(p) for p in ("psycopg", "psycopg-binary", "psycopg-pool")})
    info.pop("redis_server", None)
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}")
    sections = args.only or ["floors", "e2e", "claims"]
    variants = [*BASE, *(EXPERIMENTS if args.experiments else ())]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clusterai-stores-") as tmp:
        log("starting a throwaway PostgreSQL (durable: fsync and synchronous_commit on)")
        dbs = Databases(Path(tmp))
        try:
            info["postgres"] = dbs.settings()
            if "floors" in sections:
                log("floors")
                results["floors"] = floors(dbs)
            if "e2e" in sections:
                results["e2e"] = {}
                for variant in [*BASE, *(E2E_EXPERIMENTS if args.experiments else ())]:
                    url = dbs.fresh(variant)
                    log(f"e2e: {VARIANTS[variant]['label']}")
                    results["e2e"][variant] = spawn_e2e(url, variant)
                    dbs.drop(url)
            if "claims" in sections:
                results["claims"] = claims(dbs, variants, args.claimers)
        finally:
            dbs.stop()
    ratio = ratios(results)
    write_json(args.out, {
        "machine": info, "quick": args.quick, "claimers": args.claimers,
        "command": " ".join(["python -m bench.stores", *(argv if argv is not None else sys.argv[1:])]),
        "sizes": {"e2e_jobs": E2E_JOBS, "e2e_rounds": E2E_ROUNDS, "queued": QUEUED,
                  "claimers": CLAIMERS, "batches": BATCHES},
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results, "ratios": ratio,
    })
    print(report(results, ratio))
    log(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 1 if any("error" in r for r in results.get("e2e", {}).values()) else 0


if __name__ == "__main__":
    sys.exit(main())
