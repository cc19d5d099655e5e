"""HTTP submission benchmark (issue: REST API): how many jobs the API takes over HTTP on loopback,
one per request and in batches, with no Dask workers (the jobs stay queued: this measures the
submission path only).

    python -m bench.http_submit [--duration 10] [--clients 1 4 16] [--batch-sizes 100 1000]
                                [--servers asyncio+httptools uvloop+httptools asyncio+h11]
                                [--repeats N] [--floor] [--client raw|httpx] [--profile DIR]
                                [--quick] [--out bench/results/http_submit.json]

For each server variant (uvicorn's event loop + HTTP parser) the API runs in a process of its own
(uvicorn on a fresh SQLite store, no coordinator); the load comes from `--procs` other processes,
each running several asyncio clients. Every client has a keep-alive connection and a token of its
own (role submitter), as real clients would, so the default per-token rate limit (1,000
requests/s, burst 2,000) stays in force. Each phase runs `--warmup` seconds unmeasured, then
`--duration` seconds measured; afterwards the store must hold exactly the jobs answered 201.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.common import RESULTS, ROOT, free_port, latency_stats, log, wait_until, write_json

HOST = "127.0.0.1"
PATH = "/api/v1/jobs"
TASK = "bench.noop"
# (event loop, HTTP parser) as uvicorn names them. `clusterai up` serves the API on the loop of
# asyncio.run() with uvicorn's default parser (httptools when installed): "asyncio+httptools".
SERVERS = ("asyncio+httptools", "uvloop+httptools", "asyncio+h11")
CLIENT_KINDS = ("raw", "httpx")
PACKAGES = ("fastapi", "starlette", "pydantic", "uvicorn", "httptools", "uvloop", "h11", "httpx")
SERVER_START_TIMEOUT = 30
SINGLE_TARGET = 1500  # requests/s, one job each
BATCH_TARGET = 20_000  # jobs/s in batches of 1,000
KEEP_ERRORS = 5  # error messages kept per client


# -- the server, in a process of its own ---------------------------------------------------------


def _profile_every_thread(timer: str) -> list[Any]:
    """cProfile for this thread and for every thread started from now on (uvicorn's event loop
    runs here; the store calls run on anyio's worker threads, which start later). Each counts its
    thread's CPU time (timer "cpu"), or wall time ("wall": a tenth of the overhead per call, but an
    idle worker thread's wait and a wait for a lock count too)."""
    import cProfile

    profiles: list[Any] = []
    lock = threading.Lock()
    clock = time.thread_time if timer == "cpu" else time.perf_counter

    def start(*_: Any) -> None:
        profile = cProfile.Profile(clock)
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook as the thread's profile function

    main = cProfile.Profile(clock)
    if sys.version_info >= (3, 12):
        # cProfile sits on sys.monitoring there: one profiler at a time, seeing every thread
        log("--profile: Python 3.12+ allows one profiler for every thread; calls of threads may interleave")
    else:
        threading.setprofile(start)
    profiles.append(main)
    main.enable()
    return profiles


def _dump_profiles(profiles: list[Any], out: Path) -> None:
    import io
    import pstats

    profiles[0].disable()
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        with contextlib.suppress(Exception):  # a thread's profile that never saw a call
            stats.add(profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(str(out))
    text = io.StringIO()
    for order in ("tottime", "cumulative"):
        pstats.Stats(str(out), stream=text).strip_dirs().sort_stats(order).print_stats(45)
    out.with_suffix(".txt").write_text(text.getvalue(), encoding="utf-8")


def serve(store_path: str, port: int, server: str, profile: Path | None, timer: str = "cpu") -> None:
    """The API alone on `store_path` (no coordinator, no workers), until SIGINT."""
    import uvicorn

    from clusterai.api.app import create_app
    from clusterai.config import parse_config
    from clusterai.core.tasks import import_task_modules
    from clusterai.store.open import open_store

    loop, http_parser = server.split("+")
    import_task_modules([])  # registers bench.noop
    store = open_store(store_path)
    config = parse_config({"store": store_path, "api": {"host": HOST, "port": port}})
    app = create_app(store, config)
    profiles = _profile_every_thread(timer) if profile else None
    try:
        uvicorn.run(app, host=HOST, port=port, loop=loop, http=http_parser, log_level="warning", access_log=False)
    except KeyboardInterrupt:
        pass  # uvicorn stops on SIGINT, then raises it again
    finally:
        if profiles:
            _dump_profiles(profiles, profile)  # type: ignore[arg-type]
        store.close()


class ServerProcess:
    """`python -m bench.http_submit --serve ...` in a session of its own, ready once /healthz answers."""

    def __init__(self, store_path: Path, server: str, profile: Path | None = None, timer: str = "cpu"):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "bench.http_submit", "--serve", str(store_path), "--port", str(self.port),
                   "--server-kind", server]
        if profile:
            command += ["--profile", str(profile), "--profile-timer", timer]
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
                                     start_new_session=True)
        self.process = psutil.Process(self.proc.pid)
        try:
            wait_until(self._ready, SERVER_START_TIMEOUT, f"API server ({server})", pause=0.1)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the API server exited with status {self.proc.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """CPU time of the server process, every thread (the event loop and the store's threads)."""
        times = self.process.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn stops cleanly; a profile is written
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# -- the load generators ----------------------------------------------------------------------


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one request at a time, bodies with
    Content-Length only (what uvicorn sends for JSON). It costs the load generator a tenth of
    httpx's CPU per request, so that on 2 cores the server, not the client, is what is measured."""

    def __init__(self, host: str, port: int, token: str, method: str = "POST", path: str = PATH):
        self.host, self.port = host, port
        self.head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def reset(self) -> None:
        """After a transport error: the next request connects again."""
        await self.close()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.reader = self.writer = None

    async def send(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked answers are not supported by this client")
        answer = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, answer


class HttpxHttp:
    """The same over httpx.AsyncClient (keep-alive, one connection): what a Python client would use."""

    def __init__(self, host: str, port: int, token: str, method: str = "POST", path: str = PATH):
        import httpx

        self.method, self.path = method, path
        self.client = httpx.AsyncClient(
            base_url=f"http://{host}:{port}", timeout=60,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def connect(self) -> None:
        pass

    async def reset(self) -> None:
        pass  # httpx drops a broken connection and makes a new one itself

    async def close(self) -> None:
        await self.client.aclose()

    async def send(self, body: bytes) -> tuple[int, bytes]:
        answer = await self.client.request(self.method, self.path, content=body)
        return answer.status_code, answer.content


def submission_body(batch: int | None) -> bytes:
    """One no-op job, or a batch of `batch` of them."""
    one = {"task": TASK, "payload": {}}
    return json.dumps(one if batch is None else {"jobs": [one] * batch}, separators=(",", ":")).encode()


async def _client(conn: Any, body: bytes, batch: int | None, expect: int, start: float, measure_from: float,
                  end: float, out: dict[str, Any]) -> None:
    """Requests back to back from `start` until `end` (wall clock, shared by every process); the
    ones begun after `measure_from` are measured. `batch`: None for one job a request, 0 for
    GET /healthz (the floor: no job, no token check, no store)."""
    await asyncio.sleep(max(0.0, start - time.time()))
    while True:
        began_wall = time.time()
        if began_wall >= end:
            break
        measured = began_wall >= measure_from
        began = time.perf_counter()
        try:
            status, answer = await conn.send(body)
        except Exception as exc:  # a transport error: counted, and the connection made again
            out["transport_errors"] += 1
            if len(out["errors"]) < KEEP_ERRORS:
                out["errors"].append(f"{type(exc).__name__}: {exc}")
            await conn.reset()
            continue
        elapsed = time.perf_counter() - began
        done = time.time()
        statuses = out["statuses" if measured else "warmup_statuses"]
        statuses[status] = statuses.get(status, 0) + 1
        if status == expect == 200:
            pass  # GET /healthz
        elif status == 201:
            data = json.loads(answer)
            ids = data["ids"] if batch is not None else [data["id"]]
            if batch is not None and (data["count"] != batch or len(ids) != batch):
                out["short_batches"] += 1
            out["ids"].extend(ids)
        elif len(out["errors"]) < KEEP_ERRORS:
            out["errors"].append(f"{status}: {answer[:200].decode(errors='replace')}")
        if measured:
            out["latencies"].append(elapsed)
            out["last_done"] = max(out["last_done"], done)
            if status == 201:
                out["jobs"] += batch or 1
            if status == expect:
                out["answered"] += 1


def load_process(index: int, plan: dict[str, Any], ready: Any, go: Any, start_at: Any, results: Any) -> None:
    """One load-generating process: its share of the clients, each with its own connection and token."""

    async def main() -> dict[str, Any]:
        # plain asyncio whatever the server runs: only the server differs between the variants
        kind = HttpxHttp if plan["client"] == "httpx" else RawHttp
        floor = plan["batch"] == 0
        method, path = ("GET", "/healthz") if floor else ("POST", PATH)
        conns = [kind(HOST, plan["port"], token, method, path) for token in plan["tokens"]]
        for conn in conns:
            await conn.connect()
        out: dict[str, Any] = {"statuses": {}, "warmup_statuses": {}, "latencies": [], "ids": [], "errors": [],
                               "transport_errors": 0, "short_batches": 0, "jobs": 0, "answered": 0,
                               "last_done": 0.0}
        ready.put(index)
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        start = start_at.value
        measure_from, end = start + plan["warmup"], start + plan["warmup"] + plan["duration"]
        body = b"" if floor else submission_body(plan["batch"])
        expect = 200 if floor else 201
        cpu = time.process_time()
        await asyncio.gather(*(_client(h, body, plan["batch"], expect, start, measure_from, end, out)
                               for h in conns))
        out["cpu_s"] = time.process_time() - cpu
        for conn in conns:
            await conn.close()
        return out

    try:
        results.put((index, asyncio.run(main())))
    except BaseException as exc:
        results.put((index, {"crashed": f"{type(exc).__name__}: {exc}"}))
        raise


# -- one phase: N clients for a fixed time, then the store checked ----------------------------------


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + sum(getattr(t, name, 0.0) for name in ("nice", "irq", "softirq"))


def store_state(store_path: Path) -> tuple[int, int]:
    """(jobs in the store, the largest id)."""
    with contextlib.closing(sqlite3.connect(store_path, timeout=30)) as db:
        count, top = db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM jobs").fetchone()
    return int(count), int(top)


def add_tokens(store_path: Path | str, prefix: str, n: int) -> list[str]:
    """`n` new submitter tokens, one per client, so that each has its own rate limit (a store file
    or URL)."""
    from clusterai.service.access import new_token
    from clusterai.store.open import open_store

    store = open_store(store_path)
    try:
        texts = []
        for i in range(n):
            text, record = new_token(f"{prefix}-{i}", "submitter", created_by=None)
            store.add_token(record)
            texts.append(text)
        return texts
    finally:
        store.close()


def run_phase(server: ServerProcess, store_path: Path, *, name: str, clients: int, batch: int | None,
              procs: int, duration: float, warmup: float, client: str) -> dict[str, Any]:
    tokens = add_tokens(store_path, name, clients)
    procs = max(1, min(procs, clients))
    ctx = mp.get_context("spawn")
    ready, results, go, start_at = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    count_before, top_before = store_state(store_path)
    workers = []
    for i in range(procs):
        plan = {"port": server.port, "tokens": tokens[i::procs], "batch": batch, "duration": duration,
                "warmup": warmup, "client": client}
        workers.append(ctx.Process(target=load_process, args=(i, plan, ready, go, start_at, results), daemon=True))
    for w in workers:
        w.start()
    outs: dict[int, dict[str, Any]] = {}
    try:
        for _ in workers:
            ready.get(timeout=60)
        start_at.value = start = time.time() + 0.1
        go.set()
        measure_from = start + warmup
        time.sleep(max(0.0, measure_from - time.time()))
        cpu_server, cpu_machine, wall = server.cpu_seconds(), machine_busy_seconds(), time.perf_counter()
        for _ in workers:
            index, out = results.get(timeout=duration + warmup + 120)
            outs[index] = out
        cpu_server = server.cpu_seconds() - cpu_server
        cpu_machine = machine_busy_seconds() - cpu_machine
        wall = time.perf_counter() - wall
    finally:
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    crashed = [o["crashed"] for o in outs.values() if "crashed" in o]
    if crashed:
        return {"error": f"a load process failed: {crashed[0]}"}
    count_after, top_after = store_state(store_path)

    statuses: Counter[int] = Counter()
    warm: Counter[int] = Counter()
    latencies: list[float] = []
    ids: list[int] = []
    errors: list[str] = []
    jobs = transport = short = 0
    last_done, cpu_clients = measure_from, 0.0
    for out in outs.values():
        statuses.update({int(k): v for k, v in out["statuses"].items()})
        warm.update({int(k): v for k, v in out["warmup_statuses"].items()})
        latencies += out["latencies"]
        ids += out["ids"]
        errors += out["errors"]
        jobs += out["jobs"]
        transport += out["transport_errors"]
        short += out["short_batches"]
        last_done = max(last_done, out["last_done"])
        cpu_clients += out["cpu_s"]
    window = max(1e-9, last_done - measure_from)
    requests = sum(statuses.values())
    expect = 200 if batch == 0 else 201
    ok = statuses.get(expect, 0)
    answered_jobs = len(ids)
    distinct = len(set(ids))
    in_range = all(top_before < i <= top_after for i in ids) if ids else True
    stored = count_after - count_before
    result: dict[str, Any] = {
        "clients": clients, "load_processes": procs, "batch": batch, "duration_s": duration, "warmup_s": warmup,
        "requests": requests, "expected_status": expect, "requests_expected_status": ok,
        "requests_per_s": round(ok / window, 1),
        "jobs_per_s": round(jobs / window, 1) if batch != 0 else None,
        "latency": latency_stats(latencies) if latencies else None,
        # any other status is a failure (for the submission phases: every answer but 201)
        "unexpected_statuses": {str(k): v for k, v in sorted(statuses.items()) if k != expect},
        "warmup_unexpected_statuses": {str(k): v for k, v in sorted(warm.items()) if k != expect},
        "transport_errors": transport,
        "errors_sample": errors[:KEEP_ERRORS],
        "store_check": {
            "jobs_answered_201": answered_jobs, "distinct_ids": distinct, "jobs_stored": stored,
            "ids_new": in_range, "short_batches": short,
            "ok": answered_jobs == distinct == stored and in_range and short == 0,
        },
        "cpu": {
            # the server's CPU per request tells where a ceiling is: 1.0 core is all one process's GIL allows
            "server_cores": round(cpu_server / wall, 2),
            "server_ms_per_request": round(1000 * cpu_server / requests, 3) if requests else None,
            "load_cores": round(cpu_clients / (warmup + duration), 2),
            "other_cores": round(max(0.0, cpu_machine - cpu_server - cpu_clients * duration / (warmup + duration))
                                 / wall, 2),
        },
    }
    return result


# -- the in-process breakdown: what one submission costs, piece by piece ------------------------


def _timeit(fn: Any, n: int) -> float:
    """Microseconds per call, best of 3 runs of n calls."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return round(best * 1e6, 1)


def _layer_routes(app: Any, config: Any) -> None:
    """Routes added to the real app (middleware, routing, error handlers as POST /api/v1/jobs has),
    each doing one more piece of a submission: their differences are what each piece costs."""
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from clusterai.api.deps import require
    from clusterai.api.schemas import parse_submission
    from clusterai.service.access import Permission, Principal
    from clusterai.service.submission import build_spec

    answer = {"id": 1, "state": "queued"}

    async def plain(request: Request) -> JSONResponse:
        return JSONResponse(answer, status_code=201)

    async def constant() -> str:
        return "x"

    async def dep(request: Request, value: str = Depends(constant)) -> JSONResponse:
        return JSONResponse(answer, status_code=201)

    async def hop(request: Request) -> JSONResponse:
        await run_in_threadpool(lambda: None)
        return JSONResponse(answer, status_code=201)

    async def auth(request: Request, principal: Principal = Depends(require(Permission.SUBMIT))) -> JSONResponse:
        request.state.audited = True  # no audit record: the middleware would write one to the store
        return JSONResponse(answer, status_code=201)

    async def parse(request: Request, principal: Principal = Depends(require(Permission.SUBMIT))) -> JSONResponse:
        request.state.audited = True
        item = parse_submission(json.loads(await request.body()))
        build_spec(config, item.task, item.payload, owner=principal.name, **item.options())
        return JSONResponse(answer, status_code=201)

    # this module's annotations are strings (PEP 563) that FastAPI would look up in its globals
    constant.__annotations__ = {"return": str}
    for name, endpoint in (("plain", plain), ("dep", dep), ("hop", hop), ("auth", auth), ("parse", parse)):
        endpoint.__annotations__ = {"request": Request, "return": JSONResponse,
                                    **({"value": str} if name == "dep" else {}),
                                    **({"principal": Principal} if name in ("auth", "parse") else {})}
        app.add_api_route(f"/bench/{name}", endpoint, methods=["POST"])


def breakdown(n: int = 1500) -> dict[str, Any]:
    """What POST /api/v1/jobs costs, measured in this process with no HTTP and no uvicorn: its
    pieces timed on their own, and the real ASGI app called directly, on its real route and on
    routes that do ever more of its work (see `_layer_routes`). Wall time of one request at a time
    on an otherwise idle event loop, so about its CPU cost."""
    from starlette.concurrency import run_in_threadpool

    from clusterai.api.app import create_app
    from clusterai.api.schemas import parse_submission
    from clusterai.config import parse_config
    from clusterai.core.model import AuditEntry
    from clusterai.core.tasks import import_task_modules
    from clusterai.service.access import TokenVerifier, new_token
    from clusterai.service.submission import build_spec
    from clusterai.store.open import open_store

    import_task_modules([])
    pieces: dict[str, float] = {}
    layers: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-breakdown-") as tmp:
        store = open_store(Path(tmp, "store.db"))
        config = parse_config({"store": str(Path(tmp, "store.db"))})
        text, record = new_token("breakdown", "submitter", created_by=None)
        store.add_token(record)
        body = submission_body(None)
        data = json.loads(body)
        item = parse_submission(data)
        spec = build_spec(config, item.task, item.payload, owner="breakdown", **item.options())
        audit = AuditEntry("breakdown", "submitter", "POST /api/v1/jobs", target=None, status=201, detail="1 job")
        verifier = TokenVerifier(store)
        job = store.submit_many([spec], time.time(), audit)[0]
        pieces["json_loads_us"] = _timeit(lambda: json.loads(body), n)
        pieces["parse_submission_us"] = _timeit(lambda: parse_submission(data), n)
        pieces["build_spec_us"] = _timeit(
            lambda: build_spec(config, item.task, item.payload, owner="breakdown", **item.options()), n)
        pieces["verify_token_us"] = _timeit(lambda: verifier.verify(text), n)
        pieces["submit_many_1_job_us"] = _timeit(lambda: store.submit_many([spec], time.time(), audit), n)
        pieces["job_to_dict_and_dumps_us"] = _timeit(lambda: json.dumps(job.to_dict()), n)

        async def hops(k: int) -> float:
            started = time.perf_counter()
            for _ in range(k):
                await run_in_threadpool(lambda: None)
            return (time.perf_counter() - started) / k

        pieces["threadpool_hop_us"] = round(min(asyncio.run(hops(n)) for _ in range(3)) * 1e6, 1)
        batch = [spec] * 1000
        pieces["batch1000_submit_many_ms"] = round(_timeit(lambda: store.submit_many(batch, time.time(), audit), 5)
                                                   / 1000, 2)
        batch_body = submission_body(1000)
        batch_data = json.loads(batch_body)
        pieces["batch1000_json_loads_ms"] = round(_timeit(lambda: json.loads(batch_body), 20) / 1000, 2)
        pieces["batch1000_parse_submission_ms"] = round(_timeit(lambda: parse_submission(batch_data), 20) / 1000, 2)
        items = parse_submission(batch_data).jobs
        pieces["batch1000_build_spec_ms"] = round(_timeit(
            lambda: [build_spec(config, i.task, i.payload, owner="b", **i.options()) for i in items], 20) / 1000, 2)

        app = create_app(store, config)
        _layer_routes(app, config)

        async def call_app(method: str, path: str, k: int, request_body: bytes, token: str | None) -> float:
            statuses: Counter[int] = Counter()
            headers = [(b"host", b"bench")]
            if token:
                headers.append((b"authorization", f"Bearer {token}".encode()))
            if request_body:
                headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(request_body))]

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": request_body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses[message["status"]] += 1

            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(k):
                    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
                             "server": ("127.0.0.1", 80)}
                    await app(scope, receive, send)
                best = min(best, (time.perf_counter() - started) / k)
            if set(statuses) - {200, 201}:
                raise RuntimeError(f"{method} {path} answered {dict(statuses)}")
            return best

        def fresh_token() -> str:
            # one per layer: 3 x k requests stay under a token's burst of 2,000
            token_text, token_record = new_token("breakdown", "submitter", created_by=None)
            store.add_token(token_record)
            return token_text

        k = min(n, 600)
        for name, method, path, request_body, token in (
            ("get_healthz", "GET", "/healthz", b"", None),  # routing + middleware, GET
            ("post_plain", "POST", "/bench/plain", body, None),  # + the body edges of a POST
            ("post_dep", "POST", "/bench/dep", body, None),  # plain + a trivial async dependency
            ("post_hop", "POST", "/bench/hop", body, None),  # plain + one threadpool hop
            ("post_auth", "POST", "/bench/auth", body, "new"),  # + the token dependency (a threadpool hop)
            ("post_parse", "POST", "/bench/parse", body, "new"),  # + body, JSON, pydantic, build_spec
            ("post_submit", "POST", PATH, body, "new"),  # the real route: + the store (another hop)
        ):
            layers[f"{name}_us"] = round(
                asyncio.run(call_app(method, path, k, request_body, fresh_token() if token else None)) * 1e6, 1)
        layers["post_submit_batch1000_ms"] = round(
            asyncio.run(call_app("POST", PATH, 10, batch_body, fresh_token())) * 1e3, 2)
        store.close()
    return {"calls": n, "pieces": pieces, "asgi": layers}


# -- the report -----------------------------------------------------------------------------------


def _packages() -> dict[str, str | None]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {p: version(p) for p in PACKAGES}


def _best(results: dict[str, Any], phase: str, key: str) -> tuple[float | None, str | None]:
    best: tuple[float | None, str | None] = (None, None)
    for server, phases in results.items():
        value = (phases.get(phase) or {}).get(key)
        if value is not None and (best[0] is None or value > best[0]):
            best = (value, server)
    return best


def _failures(phase: dict[str, Any]) -> int:
    """Answers other than the phase's expected status, warm-up included, and transport errors
    (of every run, with --repeats)."""
    if "failures_all_runs" in phase:
        return int(phase["failures_all_runs"])
    return (sum(phase["unexpected_statuses"].values()) + sum(phase["warmup_unexpected_statuses"].values())
            + phase["transport_errors"])


def _rate_limited(phase: dict[str, Any]) -> int:
    return phase["unexpected_statuses"].get("429", 0) + phase["warmup_unexpected_statuses"].get("429", 0)


def _store_ok(phase: dict[str, Any]) -> bool:
    return bool(phase.get("store_ok_all_runs", phase["store_check"]["ok"]))


def checks(results: dict[str, Any], clients: list[int], batch_sizes: list[int]) -> list[dict[str, Any]]:
    def check(target: str, measured: Any, met: bool | None) -> dict[str, Any]:
        return {"target": target, "measured": measured, "met": met}

    top = max(clients) if clients else None
    single, single_server = _best(results, f"single_c{top}", "requests_per_s") if top else (None, None)
    big = 1000 if 1000 in batch_sizes else (max(batch_sizes) if batch_sizes else None)
    batch_phase = next((p for server in results.values() for p in server if p.startswith(f"batch{big}_")), None)
    batched, batch_server = _best(results, batch_phase, "jobs_per_s") if batch_phase else (None, None)
    phases = [p for server in results.values() for p in server.values() if "error" not in p]
    non_201 = sum(_failures(p) for p in phases)
    stored_ok = all(_store_ok(p) for p in phases) if phases else None
    limited = sum(_rate_limited(p) for p in phases)
    return [
        check(f">= {SINGLE_TARGET:,} single-job requests/s ({top} clients)", [single, single_server],
              single >= SINGLE_TARGET if single is not None else None),
        check(f">= {BATCH_TARGET:,} jobs/s in batches of {big}", [batched, batch_server],
              batched >= BATCH_TARGET if batched is not None else None),
        check("no answer but 201 (every phase, warm-up included)",
              f"{non_201} ({limited} of them 429: one client over its token's rate limit)" if limited else non_201,
              non_201 == 0 if phases else None),
        check("the store holds exactly the jobs answered 201", None if stored_ok is None else
              ("yes" if stored_ok else "no"), stored_ok),
    ]


def _fmt_phase(server: str, phase: str, r: dict[str, Any]) -> list[Any]:
    if "error" in r:
        return [server, phase, r["error"], *([None] * 8)]
    lat = r["latency"] or {}
    runs = r.get("runs_requests_per_s") or r.get("runs_jobs_per_s")
    return [server, phase, r["requests_per_s"], r["jobs_per_s"], runs, lat.get("p50_ms"), lat.get("p99_ms"),
            _failures(r), _rate_limited(r), "ok" if _store_ok(r) else "**MISMATCH**",
            f"{r['cpu']['server_cores']} / {r['cpu']['load_cores']} / {r['cpu']['other_cores']}"]


def report(summary: dict[str, Any]) -> str:
    from bench.jobs import _table

    rows = [_fmt_phase(server, phase, r) for server, phases in summary["results"].items()
            for phase, r in phases.items()]
    table = _table(["server", "phase", "requests/s", "jobs/s", "every run", "p50 ms", "p99 ms", "failed",
                    "of them 429", "store",
                    "cores: server / load / other"], rows)
    parts = [table]
    if summary.get("breakdown"):
        b = summary["breakdown"]
        parts.append("in-process, no HTTP: pieces " + ", ".join(f"{k} {v}" for k, v in b["pieces"].items())
                     + "\nthe ASGI app called directly: " + ", ".join(f"{k} {v}" for k, v in b["asgi"].items()))
    met = {True: "yes", False: "**no**", None: "not measured"}
    parts.append(_table(["target", "measured", "met"],
                        [[t["target"], t["measured"], met[t["met"]]] for t in summary["targets"]]))
    return "\n\n".join(parts)


# -- entry point ----------------------------------------------------------------------------------


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, and every run's rate, failures and store check beside it."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    key = "requests_per_s" if good[0]["batch"] in (None, 0) else "jobs_per_s"
    median = sorted(good, key=lambda r: r[key])[(len(good) - 1) // 2]
    if len(runs) == 1:
        return median
    return {**median, "repeats": len(runs), f"runs_{key}": [r.get(key) for r in runs],
            "runs_errors": [r["error"] for r in runs if "error" in r],
            "failures_all_runs": sum(_failures(r) for r in good),
            "store_ok_all_runs": all(r["store_check"]["ok"] for r in good)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every server variant with the whole plan of phases; with --repeats, round after round (the
    variants interleaved, each on a fresh store), then each phase's median run."""
    servers = []
    for server_kind in args.servers:
        if server_kind.startswith("uvloop"):
            try:
                import uvloop  # noqa: F401
            except ImportError:
                log(f"{server_kind}: uvloop is not installed; skipped")
                continue
        servers.append(server_kind)
    plan: list[tuple[str, int, int | None]] = [(f"single_c{c}", c, None) for c in args.clients]
    plan += [(f"batch{b}_c{args.batch_clients}", args.batch_clients, b) for b in args.batch_sizes]
    if args.floor and args.clients:
        plan.append((f"healthz_c{max(args.clients)}", max(args.clients), 0))
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {name: [] for name, _, _ in plan} for s in servers}
    from clusterai.store.open import open_store

    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for round_ in range(args.repeats):
            for server_kind in servers:
                slug = server_kind.replace("+", "-")
                store_path = Path(tmp, f"{slug}-{round_}.db")
                open_store(store_path).close()  # the schema, before two processes open it
                profile = args.profile / f"server-{slug}-{round_}.prof" if args.profile else None
                log(f"server {server_kind}" + (f", round {round_ + 1} of {args.repeats}" if args.repeats > 1 else ""))
                server = ServerProcess(store_path, server_kind, profile, args.profile_timer)
                try:
                    for name, clients, batch in plan:
                        r = run_phase(server, store_path, name=f"{server_kind}-{name}-{round_}", clients=clients,
                                      batch=batch, procs=args.procs, duration=args.duration, warmup=args.warmup,
                                      client=args.client)
                        runs[server_kind][name].append(r)
                        if "error" in r:
                            log(f"  {name}: {r['error']}")
                        else:
                            log(f"  {name}: {r['requests_per_s']:,.0f} requests/s, {r['jobs_per_s'] or 0:,.0f} jobs/s"
                                f", p50 {r['latency']['p50_ms']} ms, p99 {r['latency']['p99_ms']} ms, "
                                f"failed {_failures(r)}, store {'ok' if r['store_check']['ok'] else 'MISMATCH'},"
                                f" server {r['cpu']['server_cores']} cores")
                finally:
                    server.stop()
                if profile:
                    log(f"  profile: {profile} (top functions in {profile.with_suffix('.txt')})")
    return {s: {name: _median_run(rs) for name, rs in phases.items()} for s, phases in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16],
                        help="concurrent clients of the single-job phases")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[100, 1000], help="jobs per batch request")
    parser.add_argument("--batch-clients", type=int, default=4, help="concurrent clients of the batch phases")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every phase (the variants interleaved); each phase's median run counts")
    parser.add_argument("--procs", type=int, default=2, help="load-generating processes (clients split among them)")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
                        help="uvicorn event loop + HTTP parser variants to measure")
    parser.add_argument("--client", choices=CLIENT_KINDS, default="raw",
                        help="raw: a minimal asyncio HTTP/1.1 client (least CPU per request); httpx: httpx.AsyncClient")
    parser.add_argument("--floor", action="store_true",
                        help="also GET /healthz (no token, no store) with the most clients: the HTTP + framework floor")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process breakdown")
    parser.add_argument("--profile", type=Path, help="cProfile the server (every thread) into this folder; "
                                                     "slows it down: its figures are not the benchmark's")
    parser.add_argument("--profile-timer", choices=("cpu", "wall"), default="cpu",
                        help="cpu: each thread's CPU time (accurate, costly per call); wall: perf_counter")
    parser.add_argument("--quick", action="store_true", help="2-second phases, one server; figures mean little")
    parser.add_argument("--out", type=Path, default=RESULTS / "http_submit.json")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: be the server on this store
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-kind", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.server_kind, args.profile, args.profile_timer)
        return 0
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)
        if "--servers" not in (argv if argv is not None else sys.argv):
            args.servers = [SERVERS[0]]

    from bench.jobs import machine

    started = time.perf_counter()
    info = {**machine(), "http_packages": _packages()}
    log(f"{info['nproc']} CPUs ({info['cpu']}), load average {info['loadavg_at_start']}")
    summary: dict[str, Any] = {}
    if not args.no_breakdown:
        log("in-process breakdown")
        summary["breakdown"] = breakdown()
    summary["results"] = measure(args)
    summary["targets"] = checks(summary["results"], args.clients, args.batch_sizes)
    write_json(args.out, {
        "machine": info, "quick": args.quick, "command": " ".join(["python -m bench.http_submit", *sys.argv[1:]]),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "clients": args.clients,
                     "batch_sizes": args.batch_sizes, "batch_clients": args.batch_clients, "procs": args.procs,
                     "repeats": args.repeats,
                     "client": args.client, "rate_limit": "default (1000/s, burst 2000) per token, a token per client"},
        "wall_s": round(time.perf_counter() - started, 1), **summary,
    })
    print(report(summary))
    log(f"wrote {args.out}")
    failed = any("error" in r for phases in summary["results"].values() for r in phases.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
