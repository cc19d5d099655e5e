"""Model-aware routing (issue: model routing): two backends that each hold one model at a time, load
a model in 2 s and answer one request at a time; two models; one mixed request stream sent through
clusterai's gateway, LiteLLM's proxy (least-busy routing) and Open WebUI (its own choice among
several Ollama URLs), in one run. What counts: cold loads per 100 requests (what the backends
themselves counted), and the latency the clients saw.

    PYTHONPATH=. .venv/bin/python -m bench.model_routing [--quick] [--litellm PATH/TO/litellm]
        [--systems clusterai,litellm,openwebui] [--requests 200] [--clients 4] [--logs DIR]

Every server runs in a process of its own on loopback. The backends are two fake Ollama servers
(tests/support/fake_ollama.py, `python -m fake_ollama`): models m1 and m2, 2 s to load one,
0.05 s per answer, one model in memory at a time (loading the other evicts it), one generation at
a time; each counts its loads and writes them to a file when it is stopped. Each system gets two
fresh fakes, so each starts cold and the loads counted are its own:

- clusterai: the API server with the gateway (the app `clusterai up` serves), a cluster.yaml whose
  gateway.backends are the two fakes, each `max_concurrency: 1`; every other gateway setting is
  its default (health_interval 5 s, cold_load_wait 5 s, no gateway.models).
- LiteLLM: `litellm --config` (its own virtualenv), model_list with each model twice (one
  deployment per fake, `openai/<model>` with api_base `<fake>/v1`), router_settings
  routing_strategy least-busy, one worker.
- Open WebUI: `open-webui serve` (.venv-openwebui) with OLLAMA_BASE_URLS set to both fakes; it
  picks uniformly at random among the URLs that list the model.

The load is one more process: `clients` clients in a closed loop (each sends its next request when
the last one is answered) draw from one fixed sequence of `requests` models (m1 with probability
0.6, else m2, seeded). Every request is a non-streamed OpenAI chat completion: /v1/chat/completions
for clusterai and LiteLLM, /api/chat/completions (with the admin's token) for Open WebUI, which
turns it into the backend's /api/chat. No warm-up: the first loads are part of what is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, free_port, log, percentile, spawn, stop_group, wait_until, write_json

MODELS = ("m1", "m2")
SHARE_M1 = 0.6
SEED = 20261124
LOAD_SECONDS = 2.0
GENERATE_SECONDS = 0.05
SYSTEMS = ("clusterai", "litellm", "openwebui")
REQUEST_TIMEOUT = 120.0


def request_stream(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [MODELS[0] if rng.random() < SHARE_M1 else MODELS[1] for _ in range(n)]


# -- processes -----------------------------------------------------------------------------------


class Fakes:
    """Two fake Ollama servers, each in a process of its own; `stop` returns what they counted."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ports = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "support")}
        self.procs = []
        for i, port in enumerate(self.ports):
            args = [sys.executable, "-m", "fake_ollama", "--port", str(port),
                    *(a for m in MODELS for a in ("--model", m)), "--load-seconds", str(LOAD_SECONDS),
                    "--generate-seconds", str(GENERATE_SECONDS), "--max-loaded", "1",
                    "--stats", str(folder / f"fake{i}.json")]
            self.procs.append(spawn(args, folder / f"fake{i}.log", env=env))
        import httpx

        for url in self.urls:
            tags = f"{url}/api/tags"
            wait_until(lambda: _answers(httpx, tags), 30, f"fake Ollama at {url}")  # noqa: B023 (called at once)

    def stop(self) -> list[dict[str, Any]]:
        counts = []
        for i, proc in enumerate(self.procs):
            stop_group(proc, 15)
            stats = self.folder / f"fake{i}.json"
            counts.append(json.loads(stats.read_text()) if stats.exists() else {"loads": {}, "served": {},
                                                                                   "missing": True})
        return counts


def _answers(httpx: Any, url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return bool(httpx.get(url, headers=headers or {}, timeout=2).status_code == 200)
    except httpx.HTTPError:
        return False


# -- clusterai's API server with the gateway ------------------------------------------------------


def serve_clusterai(port: int, folder: Path) -> None:
    import uvicorn

    from clusterai.api.app import create_app
    from clusterai.config import load_config
    from clusterai.service.access import new_token
    from clusterai.store.open import open_store

    config = load_config(folder / "cluster.yaml")
    store = open_store(config.store)
    text, record = new_token("bench", "submitter", created_by=None)
    store.add_token(record)
    (folder / "token").write_text(text)
    uvicorn.run(create_app(store, config), host="127.0.0.1", port=port, log_level="info", access_log=False,
                http="httptools", lifespan="off")


def clusterai_yaml(folder: Path, urls: list[str]) -> dict[str, Any]:
    return {"store": f"sqlite:///{folder / 'clusterai.db'}",
            "gateway": {"backends": [{"name": f"fake{i}", "url": url, "kind": "ollama", "max_concurrency": 1}
                                     for i, url in enumerate(urls)]}}


# -- the load ------------------------------------------------------------------------------------


async def _drive(target: dict[str, Any], models: list[str], clients: int) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    samples: list[dict[str, Any]] = []
    nxt = iter(range(len(models)))
    async with httpx.AsyncClient(headers=target["headers"], timeout=REQUEST_TIMEOUT, limits=limits) as client:
        t_zero = time.perf_counter()

        async def one_client(who: int) -> None:
            for i in nxt:
                body = {"model": models[i], "messages": [{"role": "user", "content": f"request {i}"}],
                        "stream": False, "max_tokens": 8}
                t0 = time.perf_counter()
                status, error, backend = 0, None, None
                try:
                    response = await client.post(target["url"], json=body)
                    status = response.status_code
                    backend = response.headers.get("x-clusterai-backend") or \
                        response.headers.get("x-litellm-model-api-base")
                    if status == 200:
                        answer = response.json()
                        if not answer.get("choices"):
                            error = f"no choices: {response.text[:200]}"
                    else:
                        error = response.text[:300]
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                t1 = time.perf_counter()
                samples.append({"i": i, "model": models[i], "client": who, "start_s": round(t0 - t_zero, 4),
                                "latency_s": round(t1 - t0, 4), "status": status, "backend": backend,
                                "error": error})

        await asyncio.gather(*(one_client(c) for c in range(clients)))
        took = time.perf_counter() - t_zero
    samples.sort(key=lambda s: s["i"])
    return {"samples": samples, "took_s": took}


def load(target: dict[str, Any], requests: int, clients: int) -> dict[str, Any]:
    return asyncio.run(_drive(target, request_stream(requests), clients))


def _run_load(target: dict[str, Any], requests: int, clients: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.model_routing", "--role", "load", "--target", json.dumps(target),
            "--requests", str(requests), "--clients", str(clients)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=1800,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return dict(json.loads(out.stdout))


# -- the three systems ---------------------------------------------------------------------------


def run_clusterai(folder: Path, fakes: Fakes, requests: int, clients: int) -> dict[str, Any]:
    import httpx
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cluster.yaml").write_text(yaml.safe_dump(clusterai_yaml(folder, fakes.urls), sort_keys=False))
    port = free_port()
    proc = spawn([sys.executable, "-m", "bench.model_routing", "--role", "clusterai", "--port", str(port),
                   "--folder", str(folder)], folder / "clusterai.log")
    try:
        wait_until(lambda: (folder / "token").exists(), 60, "the clusterai token")
        headers = {"Authorization": f"Bearer {(folder / 'token').read_text()}"}
        base = f"http://127.0.0.1:{port}"

        def listed() -> bool:  # the gateway knows both backends' models (a health check, never a generation)
            try:
                tags = httpx.get(f"{base}/api/tags", headers=headers, timeout=5)
            except httpx.HTTPError:
                return False
            return tags.status_code == 200 and {m["name"] for m in tags.json()["models"]} >= set(MODELS)

        wait_until(listed, 60, "clusterai's gateway to list m1 and m2")
        figures = _run_load({"url": f"{base}/v1/chat/completions", "headers": headers}, requests, clients)
        seen = httpx.get(f"{base}/api/v1/models", headers=headers, timeout=10).json()
        figures["gateway_view"] = {m["model"]: {b["name"]: {k: b.get(k) for k in ("requests", "cold_loads", "loaded")}
                                                for b in m["backends"]} for m in seen["models"]}
        return figures
    finally:
        stop_group(proc, 15)


def run_litellm(folder: Path, fakes: Fakes, requests: int, clients: int, litellm: str) -> dict[str, Any]:
    import httpx

    folder.mkdir(parents=True, exist_ok=True)
    master = "sk-" + os.urandom(24).hex()
    config = {"model_list": [{"model_name": m, "litellm_params": {"model": f"openai/{m}", "api_base": f"{url}/v1",
                                                                 "api_key": "none"}}
                             for m in MODELS for url in fakes.urls],
              "router_settings": {"routing_strategy": "least-busy"},
              "litellm_settings": {"telemetry": False}, "general_settings": {"master_key": master}}
    (folder / "litellm.yaml").write_text(json.dumps(config, indent=2))
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # offline: its bundled price list, no fetch at start
    proc = spawn([os.path.abspath(litellm), "--config", str(folder / "litellm.yaml"), "--port", str(port),
                   "--host", "127.0.0.1", "--num_workers", "1"], folder / "litellm.log", env=env, cwd=folder)
    try:
        headers = {"Authorization": f"Bearer {master}"}
        base = f"http://127.0.0.1:{port}"

        def listed() -> bool:  # the proxy is up and has both model groups (no call to a backend)
            try:
                got = httpx.get(f"{base}/v1/models", headers=headers, timeout=5)
            except httpx.HTTPError:
                return False
            return got.status_code == 200 and {m["id"] for m in got.json()["data"]} >= set(MODELS)

        wait_until(listed, 240, "LiteLLM's proxy", pause=0.5)
        return _run_load({"url": f"{base}/v1/chat/completions", "headers": headers}, requests, clients)
    finally:
        stop_group(proc, 15)


def run_openwebui(folder: Path, fakes: Fakes, requests: int, clients: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from openwebui import OpenWebUI, ensure

    version = ensure()
    folder.mkdir(parents=True, exist_ok=True)
    webui = OpenWebUI(folder, {"OLLAMA_BASE_URLS": ";".join(fakes.urls)})
    try:
        webui.wait_up(300)
        with webui.sign_up_admin() as ui:
            def listed() -> bool:  # it asked both URLs' /api/tags and lists both models
                got = ui.get("/api/models")
                return got.status_code == 200 and {m["id"] for m in got.json()["data"]} >= set(MODELS)

            wait_until(listed, 60, "Open WebUI to list m1 and m2", pause=1)
            headers = {"Authorization": str(ui.headers["Authorization"])}
        figures = _run_load({"url": f"{webui.url}/api/chat/completions", "headers": headers}, requests, clients)
        figures["version"] = version
        return figures
    finally:
        webui.stop()


# -- figures -------------------------------------------------------------------------------------


def summarize(figures: dict[str, Any], counts: list[dict[str, Any]], requests: int) -> dict[str, Any]:
    samples = figures["samples"]
    ok = [s for s in samples if s["status"] == 200 and not s["error"]]
    ms = [s["latency_s"] * 1000 for s in ok] or [float("nan")]
    loads = sum(sum(c["loads"].values()) for c in counts)
    served = sum(sum(c["served"].values()) for c in counts)
    ends = [s["start_s"] + s["latency_s"] for s in samples]
    return {"requests": len(samples), "ok": len(ok), "errors": len(samples) - len(ok),
            "cold_loads": loads, "cold_loads_per_100": round(loads * 100 / requests, 1),
            "loads_by_backend": [c["loads"] for c in counts], "served_by_backend": [c["served"] for c in counts],
            "served": served,
            "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1),
            "max_ms": round(max(ms), 1), "requests_per_s": round(len(ok) / max(ends), 2) if ends else 0.0,
            "wall_s": round(figures["took_s"], 1)}


def table(summary: dict[str, Any]) -> str:
    rows = ["| system | cold loads | per 100 requests | p50 ms | p95 ms | p99 ms | requests/s | errors |",
            "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        if "error" in s:
            rows.append(f"| {name} | did not run: {s['error'][:120]} | | | | | | |")
            continue
        rows.append(f"| {name} | {s['cold_loads']} | {s['cold_loads_per_100']} | {s['p50_ms']:,.0f} | "
                    f"{s['p95_ms']:,.0f} | {s['p99_ms']:,.0f} | {s['requests_per_s']} | {s['errors']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="40 requests: a smoke run of the harness")
    parser.add_argument("--litellm", default=shutil.which("litellm"), help="the litellm command (its own venv)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--logs", type=Path, help="keep every server's log and config in this folder")
    parser.add_argument("--out", type=Path, default=RESULTS / "model_routing.json")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role == "clusterai":
        return serve_clusterai(opts.port, opts.folder)
    if opts.role == "load":
        print(json.dumps(load(json.loads(opts.target), opts.requests, opts.clients)))
        return None

    requests = 40 if opts.quick else opts.requests
    systems = [s for s in opts.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    stream = request_stream(requests)
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        top = opts.logs or Path(tmp)
        for name in systems:
            folder = top / name
            if folder.exists():
                shutil.rmtree(folder)
            log(f"{name}: {requests} requests from {opts.clients} clients, two fresh fakes")
            fakes = Fakes(folder / "fakes")
            counts: list[dict[str, Any]] = []
            try:
                if name == "clusterai":
                    figures = run_clusterai(folder, fakes, requests, opts.clients)
                elif name == "litellm":
                    if not opts.litellm:
                        raise RuntimeError("no litellm command (bench/run_model_routing.sh installs one)")
                    figures = run_litellm(folder, fakes, requests, opts.clients, opts.litellm)
                else:
                    figures = run_openwebui(folder, fakes, requests, opts.clients)
            except Exception as exc:  # one system that cannot run is reported, the others still run
                log(f"{name} did not run: {type(exc).__name__}: {exc}")
                summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
                fakes.stop()
                continue
            counts = fakes.stop()
            summary[name] = summarize(figures, counts, requests)
            results[name] = {**figures, "fakes": counts}
            log(f"{name}: {json.dumps(summary[name])}")
    write_json(opts.out, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                      "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                          "setup": {"requests": requests, "clients": opts.clients, "share_m1": SHARE_M1,
                                    "seed": SEED, "load_seconds": LOAD_SECONDS,
                                    "generate_seconds": GENERATE_SECONDS,
                                    "stream_m1": stream.count("m1"), "stream_m2": stream.count("m2")},
                          "summary": summary, "runs": results})
    print(table(summary))
    return None


if __name__ == "__main__":
    main()
