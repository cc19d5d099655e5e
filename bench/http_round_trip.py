"""Submission and round trips over HTTP with the whole head in one process, as `clusterai up` runs it
(issue 21, item 3): the REST API, the coordinator and the Dask scheduler on one event loop, and 2 real
Dask worker processes (1 thread each), on a fresh SQLite store.

    python -m bench.http_round_trip [--variant NAME=PATH ...] [--rounds 3] [--duration 10] [--clients 8]
                                    [--store sqlite|postgres] [--quick] [--out bench/results/http_round_trip.json]
    (or bench/run_http.sh --round-trip ...)

`--clients` HTTP clients submit single no-op jobs back to back (POST /api/v1/jobs, each on its own
keep-alive connection with a `submitter` token of its own, in one load process) while one more client
measures submit-to-result round trips: POST one job, then GET /api/v1/jobs/{id} every `--poll-ms` until
it has ended. Reported per variant: submissions/s (201 answers), jobs completed/s (jobs the store shows
finished inside the measured window), and the round trip's p50/p99; also the round trip with no other
load ("idle"). Each variant is a source tree (PATH or PATH/src holding `clusterai`, put first on the
head's and its workers' PYTHONPATH); rounds take the variants in turn, each on a fresh store and head;
each figure is the median over rounds. After every phase the store must hold exactly the jobs answered
201, each with exactly one accepted (succeeded) attempt once the backlog has drained.

Also reported, to tell where a round trip goes: its parts by the store's timestamps (the POST until its
201; stored until its attempt started: dispatch; started until its outcome was committed; committed
until the probe saw it), and the head's event-loop lag (how late a task sleeping 5 ms wakes up).
`--store postgres` runs each head on a fresh database of a throwaway PostgreSQL server
(tests/support/pgserver.py, durable settings) instead of a SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, ROOT, free_port, latency_stats, log, spawn, wait_until, write_json
from bench.http_submit import HOST, PATH, RawHttp, add_tokens, load_process, submission_body

HEAD_START_TIMEOUT = 90
DRAIN_TIMEOUT = 120


# -- the head, in a process of its own -------------------------------------------------------------


class Db:
    """Plain SQL on a store by URL, for the checks (SQLite, or PostgreSQL through psycopg)."""

    def __init__(self, url: str):
        self.url = url

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite:///"):
            with contextlib.closing(sqlite3.connect(self.url[len("sqlite:///"):], timeout=30)) as db:
                return db.execute(sql, params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s"), params).fetchall()

    def state(self) -> tuple[int, int]:
        """(jobs in the store, the largest id)."""
        count, top = self.query("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM jobs")[0]
        return int(count), int(top)


class Postgres:
    """A throwaway PostgreSQL server (tests/support/pgserver.py, durable) with a database per head."""

    def __init__(self) -> None:
        path = ROOT / "tests" / "support" / "pgserver.py"
        spec = importlib.util.spec_from_file_location("clusterai_bench_pgserver", path)
        assert spec and spec.loader, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.server = module.PgServer(durable=True).start()
        self._made = 0

    def fresh(self) -> str:
        self._made += 1
        return str(self.server.create_database(f"round_trip_{self._made}"))

    def stop(self) -> None:
        self.server.stop()


def _config(store_url: str, port: int, token_file: str) -> Any:
    from clusterai.config import ClusterConfig

    return ClusterConfig().with_overrides(
        store=store_url,
        **{"cluster.workers": 2, "cluster.threads_per_worker": 1, "cluster.dashboard": False,
           "api.host": HOST, "api.port": port, "api.token_file": token_file},
    )


LAG_PERIOD = 0.005


async def _watch_lag(samples: list[tuple[float, float]]) -> None:
    """How late the event loop wakes a task that sleeps LAG_PERIOD: (when, seconds late)."""
    while True:
        began = time.perf_counter()
        await asyncio.sleep(LAG_PERIOD)
        samples.append((time.time(), time.perf_counter() - began - LAG_PERIOD))


def serve_head(store_url: str, port: int, token_file: str, lag_file: str) -> None:
    """What `clusterai up` starts (head/serve.py): the cluster runtime, then the API beside its
    coordinator on the same loop; until SIGINT. The loop's lag goes to `lag_file` at the end."""
    from clusterai.head.runtime import ClusterRuntime
    from clusterai.head.serve import start_api

    lag: list[tuple[float, float]] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        config = _config(store_url, port, token_file)
        runtime = ClusterRuntime(config)
        await runtime.start()
        api = None
        try:
            api, _ = await start_api(config, runtime)
            watch = asyncio.create_task(_watch_lag(lag))
            await stop.wait()
            watch.cancel()
        finally:
            if api is not None:
                await api.stop()
            await runtime.stop()

    asyncio.run(main())
    Path(lag_file).write_text(json.dumps(lag), encoding="utf-8")


class HeadProcess:
    """`python -m bench.http_round_trip --serve ...` with `src` first on its path (its Dask workers
    inherit it), ready once the API answers and both workers have registered."""

    def __init__(self, src: Path, store_url: str, files: Path):
        self.port = free_port()
        self.store_url = store_url
        self.db = Db(store_url)
        self.lag_file = files.with_suffix(".lag.json")
        log_path = files.with_suffix(".log")
        command = [sys.executable, "-m", "bench.http_round_trip", "--serve", store_url, "--port", str(self.port),
                   "--token-file", str(files.with_suffix(".admin.token")), "--lag-file", str(self.lag_file)]
        path = os.pathsep.join(filter(None, [str(src), str(ROOT), os.environ.get("PYTHONPATH")]))
        self._log_path = log_path
        self.proc = spawn(command, log_path, env={**os.environ, "PYTHONPATH": path}, cwd=ROOT)
        self.process = psutil.Process(self.proc.pid)
        try:
            wait_until(self._ready, HEAD_START_TIMEOUT, f"head from {src}", pause=0.2)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            tail = self._log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the head exited with status {self.proc.returncode}:\n{tail}")
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            return False
        if not ok:
            return False
        return int(self.db.query("SELECT COUNT(*) FROM workers WHERE status='ready'")[0][0]) >= 2

    def cpu_seconds(self) -> float:
        """The head process and its children (the Dask worker processes and their nannies)."""
        total = 0.0
        for p in [self.process, *self.process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def lag(self, windows: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
        """After stop(): the loop's lag in each (start, end) window, in ms."""
        if not self.lag_file.exists():
            return {}
        samples = json.loads(self.lag_file.read_text(encoding="utf-8"))
        out = {}
        for name, (start, end) in windows.items():
            late = [s for t, s in samples if start <= t < end]
            if late:
                stats = latency_stats(late)
                out[name] = {"p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"], "max_ms": stats["max_ms"]}
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# -- the round-trip probe ----------------------------------------------------------------------------


class Probe(RawHttp):
    """One keep-alive connection that sends any method and path."""

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer "
                     f"{self.token}\r\nContent-Type: application/json\r\n").encode()
        return await self.send(body)

    def __init__(self, host: str, port: int, token: str):
        super().__init__(host, port, token)
        self.token = token


async def probe(port: int, token: str, start: float, measure_from: float, end: float, poll: float
                ) -> dict[str, Any]:
    """Round trips one after another from `start` to `end`; those begun after `measure_from` count."""
    conn = Probe(HOST, port, token)
    await conn.connect()
    body = submission_body(None)
    out: dict[str, Any] = {"latencies": [], "errors": [], "ids": [], "polls": 0, "times": {}}
    await asyncio.sleep(max(0.0, start - time.time()))
    try:
        while time.time() < end:
            measured = time.time() >= measure_from
            began, sent = time.perf_counter(), time.time()
            status, answer = await conn.request("POST", PATH, body)
            answered = time.time()
            if status != 201:
                out["errors"].append(f"POST {status}: {answer[:200]!r}")
                await asyncio.sleep(0.05)
                continue
            job_id = json.loads(answer)["id"]
            out["ids"].append(job_id)
            while True:
                status, answer = await conn.request("GET", f"{PATH}/{job_id}")
                out["polls"] += 1
                if status == 200 and json.loads(answer)["state"] in ("succeeded", "dead", "cancelled"):
                    break
                if status != 200:
                    out["errors"].append(f"GET {status}: {answer[:200]!r}")
                if time.perf_counter() - began > 60:
                    out["errors"].append(f"job {job_id} not finished after 60 s")
                    break
                await asyncio.sleep(poll)
            if measured:
                out["latencies"].append(time.perf_counter() - began)
                out["times"][job_id] = (sent, answered, time.time())
    finally:
        await conn.close()
    return out


# -- one phase: load + probe for a fixed time, then the store checked --------------------------------


def _store_figures(db: Db, top_before: int, measure_from: float, end: float) -> dict[str, Any]:
    finished = db.query("SELECT COUNT(*) FROM jobs WHERE state='succeeded' AND finished_at>=? AND finished_at<?",
                        (measure_from, end))[0][0]
    backlog = db.query("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running') AND id>?", (top_before,))[0][0]
    return {"completed": int(finished), "backlog_at_end": int(backlog)}


def _phases(db: Db, times: dict[int, tuple[float, float, float]]) -> dict[str, Any]:
    """Where the probe's round trips went, by the store's clock (the same machine's): the POST until
    its 201, stored until its attempt started (dispatch), started until its outcome was committed
    (the worker and the commit), committed until the probe saw it (polling); medians and p99 in ms."""
    if not times:
        return {}
    rows = db.query(f"SELECT j.id, j.created_at, a.started_at, j.finished_at FROM jobs j JOIN attempts a"
                    f" ON a.job_id=j.id AND a.number=j.attempt WHERE j.id IN ({','.join('?' * len(times))})",
                    list(times))
    parts: dict[str, list[float]] = {"post": [], "dispatch": [], "run_and_commit": [], "noticed": []}
    for job_id, created, started, finished in rows:
        sent, answered, seen = times[job_id]
        parts["post"].append(answered - sent)
        parts["dispatch"].append(started - created)
        parts["run_and_commit"].append(finished - started)
        parts["noticed"].append(seen - finished)
    return {name: {"p50_ms": latency_stats(xs)["p50_ms"], "p99_ms": latency_stats(xs)["p99_ms"]}
            for name, xs in parts.items() if xs}


def _drain(db: Db, top_before: int) -> dict[str, Any]:
    """Wait until every job of the phase has ended; check each has exactly one accepted success."""
    started = time.perf_counter()

    def unfinished() -> int:
        return int(db.query("SELECT COUNT(*) FROM jobs WHERE state NOT IN ('succeeded','dead','cancelled')"
                            " AND id>?", (top_before,))[0][0])

    wait_until(lambda: unfinished() == 0, DRAIN_TIMEOUT, "the phase's backlog to drain", pause=0.2)
    jobs, succeeded = db.query("SELECT COUNT(*), SUM(CASE WHEN state='succeeded' THEN 1 ELSE 0 END) FROM jobs"
                               " WHERE id>?", (top_before,))[0]
    accepted = db.query("SELECT COUNT(*) FROM attempts WHERE outcome='succeeded' AND job_id>?", (top_before,))[0][0]
    return {"drain_s": round(time.perf_counter() - started, 2), "jobs": int(jobs), "succeeded": int(succeeded or 0),
            "accepted_successes": int(accepted), "ok": jobs == succeeded == accepted}


def run_phase(head: HeadProcess, *, clients: int, duration: float, warmup: float, poll: float) -> dict[str, Any]:
    db = head.db
    tokens = add_tokens(head.store_url, f"load-{time.monotonic_ns()}", clients) if clients else []
    probe_token = add_tokens(head.store_url, f"probe-{time.monotonic_ns()}", 1)[0]
    ctx = mp.get_context("spawn")
    ready, results, go, start_at = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    _, top_before = db.state()
    load = None
    if clients:
        plan = {"port": head.port, "tokens": tokens, "batch": None, "duration": duration, "warmup": warmup,
                "client": "raw"}
        load = ctx.Process(target=load_process, args=(0, plan, ready, go, start_at, results), daemon=True)
        load.start()
        ready.get(timeout=60)
    start = time.time() + 0.1
    start_at.value = start
    go.set()
    measure_from, end = start + warmup, start + warmup + duration
    load1 = os.getloadavg()[0]
    cpu_head, wall = head.cpu_seconds(), time.perf_counter()
    probed = asyncio.run(probe(head.port, probe_token, start, measure_from, end, poll))
    out: dict[str, Any] = {}
    try:
        if load is not None:
            _, out = results.get(timeout=duration + warmup + 120)
    finally:
        if load is not None:
            load.join(10)
            if load.is_alive():
                load.kill()
    window = end - measure_from
    cpu_head = head.cpu_seconds() - cpu_head
    wall = time.perf_counter() - wall
    if "crashed" in out:
        return {"error": f"the load process failed: {out['crashed']}"}
    figures = _store_figures(db, top_before, measure_from, end)
    answered = list(out.get("ids", [])) + probed["ids"]
    _, top_after = db.state()
    drained = _drain(db, top_before)
    statuses = out.get("statuses", {})
    unexpected = {k: v for k, v in {**statuses, **out.get("warmup_statuses", {})}.items() if int(k) != 201}
    stored_ok = len(answered) == len(set(answered)) == top_after - top_before == drained["jobs"]
    return {
        "clients": clients, "duration_s": duration, "warmup_s": warmup, "loadavg_1m_at_start": round(load1, 2),
        "window": [measure_from, end],
        "submissions_per_s": round(statuses.get(201, 0) / window, 1) if clients else None,
        "completed_per_s": round(figures["completed"] / window, 1),
        "backlog_at_end": figures["backlog_at_end"],
        "round_trip": latency_stats(probed["latencies"]) if probed["latencies"] else None,
        "round_trip_parts": _phases(db, probed["times"]),
        "probe_polls_per_round_trip": round(probed["polls"] / max(1, len(probed["ids"])), 2),
        "probe_errors": probed["errors"][:5], "load_errors": out.get("errors", [])[:5],
        "unexpected_statuses": unexpected, "transport_errors": out.get("transport_errors", 0),
        "head_cores": round(cpu_head / wall, 2),
        "store_check": {**drained, "answered_201": len(answered), "ok": bool(stored_ok and drained["ok"])},
    }


# -- rounds over the variants, and the report ---------------------------------------------------------


def source_dir(path: str) -> Path:
    root = Path(path).resolve()
    for candidate in (root / "src", root):
        if (candidate / "clusterai" / "__init__.py").exists():
            return candidate
    raise SystemExit(f"{path}: no clusterai package in it or in its src/")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def each(phase: str, *keys: str) -> list[Any]:
        values = []
        for run in runs:
            value: Any = run.get(phase, {})
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return values

    return {
        "rounds": len(runs),
        "load_submissions_per_s": _median(each("load", "submissions_per_s")),
        "load_completed_per_s": _median(each("load", "completed_per_s")),
        "load_round_trip_p50_ms": _median(each("load", "round_trip", "p50_ms")),
        "load_round_trip_p99_ms": _median(each("load", "round_trip", "p99_ms")),
        "idle_round_trip_p50_ms": _median(each("idle", "round_trip", "p50_ms")),
        "idle_round_trip_p99_ms": _median(each("idle", "round_trip", "p99_ms")),
        "load_loop_lag_p50_ms": _median(each("load", "loop_lag", "p50_ms")),
        "load_loop_lag_p99_ms": _median(each("load", "loop_lag", "p99_ms")),
        "load_dispatch_p50_ms": _median(each("load", "round_trip_parts", "dispatch", "p50_ms")),
        "load_run_and_commit_p50_ms": _median(each("load", "round_trip_parts", "run_and_commit", "p50_ms")),
        "runs": {
            "submissions_per_s": each("load", "submissions_per_s"),
            "completed_per_s": each("load", "completed_per_s"),
            "p50_ms": each("load", "round_trip", "p50_ms"), "p99_ms": each("load", "round_trip", "p99_ms"),
            "idle_p50_ms": each("idle", "round_trip", "p50_ms"), "loadavg": each("load", "loadavg_1m_at_start"),
        },
        "store_ok": all(r.get(p, {}).get("store_check", {}).get("ok") for r in runs for p in ("idle", "load")),
    }


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return str(r["error"])
    rt, lag = r.get("round_trip") or {}, r.get("loop_lag") or {}
    parts = ", ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in (r.get("round_trip_parts") or {}).items())
    return (f"{r.get('submissions_per_s')} submissions/s, {r.get('completed_per_s')} done/s, round trip p50"
            f" {rt.get('p50_ms')} / p99 {rt.get('p99_ms')} ms ({parts}); loop lag p50/p99 {lag.get('p50_ms')}/"
            f"{lag.get('p99_ms')} ms; head {r.get('head_cores')} cores; load {r.get('loadavg_1m_at_start')};"
            f" store {'ok' if r.get('store_check', {}).get('ok') else 'MISMATCH'}")


def report(summary: dict[str, dict[str, Any]]) -> str:
    from bench.jobs import _table

    rows = [[name, s["load_submissions_per_s"], s["load_completed_per_s"], s["load_round_trip_p50_ms"],
             s["load_round_trip_p99_ms"], s["idle_round_trip_p50_ms"], s["idle_round_trip_p99_ms"],
             s["runs"]["p99_ms"], s["load_loop_lag_p50_ms"], s["load_loop_lag_p99_ms"], s["load_dispatch_p50_ms"],
             s["load_run_and_commit_p50_ms"], "ok" if s["store_ok"] else "**MISMATCH**"] for name, s in summary.items()]
    return _table(["variant", "submissions/s", "completed/s", "round trip p50 ms", "p99 ms", "idle p50 ms",
                   "idle p99 ms", "p99 every round", "loop lag p50 ms", "loop lag p99 ms", "dispatch p50 ms",
                   "run + commit p50 ms", "store"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_round_trip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                        help="a source tree to measure (repeatable); default: this checkout as 'current'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds of the loaded phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before it")
    parser.add_argument("--idle", type=float, default=4.0, help="measured seconds of round trips with no load")
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients submitting back to back")
    parser.add_argument("--poll-ms", type=float, default=1.0, help="the probe's pause between GETs")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="a fresh SQLite file per head, or a database per head on a throwaway PostgreSQL server")
    parser.add_argument("--quick", action="store_true", help="one round of short phases; figures mean little")
    parser.add_argument("--out", type=Path, default=RESULTS / "http_round_trip.json")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    parser.add_argument("--lag-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_head(args.serve, args.port, args.token_file, args.lag_file)
        return 0
    if args.quick:
        args.rounds, args.duration, args.warmup, args.idle = 1, 3.0, 1.0, 2.0
    variants = [v.split("=", 1) for v in args.variant] or [["current", str(ROOT)]]
    srcs = {name: source_dir(path) for name, path in variants}

    from bench.jobs import machine

    info = machine()
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in srcs}
    started = time.perf_counter()
    postgres = Postgres() if args.store == "postgres" else None
    with tempfile.TemporaryDirectory(prefix="bench-http-rt-") as tmp, contextlib.ExitStack() as cleanup:
        if postgres is not None:
            cleanup.callback(postgres.stop)
        for round_ in range(args.rounds):
            for name, src in srcs.items():
                store = postgres.fresh() if postgres is not None else f"sqlite:///{tmp}/{name}-{round_}.db"
                log(f"{name} ({src}), round {round_ + 1} of {args.rounds}, load average {os.getloadavg()[0]:.2f}")
                head = HeadProcess(src, store, Path(tmp, f"{name}-{round_}"))
                result: dict[str, Any] = {}
                try:
                    result["idle"] = run_phase(head, clients=0, duration=args.idle, warmup=0.5, poll=args.poll_ms / 1e3)
                    result["load"] = run_phase(head, clients=args.clients, duration=args.duration, warmup=args.warmup,
                                               poll=args.poll_ms / 1e3)
                finally:
                    head.stop()
                lag = head.lag({p: tuple(r["window"]) for p, r in result.items() if "window" in r})
                for phase, r in result.items():
                    r["loop_lag"] = lag.get(phase)
                    log(f"  {phase}: {_line(r)}")
                runs[name].append(result)
    summary = {name: summarize(rs) for name, rs in runs.items()}
    write_json(args.out, {
        "machine": info, "command": " ".join(["python -m bench.http_round_trip", *(argv or sys.argv[1:])]),
        "variants": {name: str(src) for name, src in srcs.items()},
        "settings": {k: getattr(args, k) for k in ("rounds", "duration", "warmup", "idle", "clients", "poll_ms",
                                                   "store")},
        "wall_s": round(time.perf_counter() - started, 1), "summary": summary, "runs": runs,
    })
    print(report(summary))
    log(f"wrote {args.out}")
    return 0 if all(s["store_ok"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
