"""The gateway's added latency and throughput (issue: LLM gateway): a minimal upstream that answers
at once, called directly, through clusterai's gateway, and through LiteLLM's proxy, in one run.

    PYTHONPATH=. .venv/bin/python -m bench.gateway [--quick] [--litellm PATH/TO/litellm]

Each server runs in a process of its own on loopback: the upstream (a bare ASGI app on uvicorn),
clusterai's API server with the gateway in front of it (the same app `clusterai up` serves, one
backend: the upstream), a second one with the upstream declared OpenAI-only and asked Ollama's
/api/chat (what translating adds), and LiteLLM's proxy (`litellm --config`, its own virtualenv) in front of the
same upstream. The load comes from one more process: a single client sending requests one after
another (latency: p50/p99 per path, and what each proxy adds to the direct call), then 16 clients at
once (requests/s). Every request is a non-streamed OpenAI chat completion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, free_port, log, percentile, spawn, stop_group, wait_until, write_json

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()
REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
# the same chat in Ollama's terms, for a backend that speaks only OpenAI's API: the gateway translates
OLLAMA_REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                  "options": {"num_predict": 1}}


# -- the upstream: answers at once ----------------------------------------------------------------


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while True:  # drain the body
        message = await receive()
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/api/tags" or path == "/api/ps":
        body = json.dumps({"models": [{"name": "m", "model": "m"}]}).encode()
    elif path == "/v1/models":
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
    else:
        body = ANSWER
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                http="httptools", lifespan="off")


# -- clusterai's API server with the gateway ------------------------------------------------------


def serve_clusterai(port: int, upstream: str, folder: Path, kind: str = "ollama") -> None:
    import uvicorn

    from clusterai.api.app import create_app
    from clusterai.config import parse_config
    from clusterai.service.access import new_token
    from clusterai.store.open import open_store

    backend = {"name": "up", "url": upstream, "kind": kind, "max_concurrency": 256}
    config = parse_config({"store": f"sqlite:///{folder / 'bench.db'}", "api": {"rate_limit": 0},
                           "gateway": {"backends": [backend], "queue_size": 1024, "health_interval": 60}},
                          source="bench")
    store = open_store(config.store)
    text, record = new_token("bench", "submitter", created_by=None)
    store.add_token(record)
    (folder / "token").write_text(text)
    uvicorn.run(create_app(store, config), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                http="httptools", lifespan="off")


# -- the load ------------------------------------------------------------------------------------


async def _latency(url: str, headers: dict[str, str], rounds: int, body: dict[str, Any]) -> list[float]:
    import httpx

    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        for _ in range(max(20, rounds // 10)):  # warm the connection and the server
            (await client.post(url, json=body)).raise_for_status()
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            response = await client.post(url, json=body)
            samples.append(time.perf_counter() - t0)
            response.raise_for_status()
    return samples


async def _throughput(url: str, headers: dict[str, str], clients: int, seconds: float,
                      body: dict[str, Any]) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, timeout=30, limits=limits) as client:
        done = errors = 0
        stop = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                response = await client.post(url, json=body)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(min(clients, 4))))  # warm-up connections
        done = errors = 0
        stop = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        took = time.perf_counter() - started
    return {"requests_per_s": done / took, "errors": errors, "requests": done}


def load(target: dict[str, Any], rounds: int, seconds: float) -> dict[str, Any]:
    body = target.get("body", REQUEST)
    samples = asyncio.run(_latency(target["url"], target["headers"], rounds, body))
    ms = [s * 1000 for s in samples]
    single = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "mean_ms": statistics.fmean(ms)}
    many = asyncio.run(_throughput(target["url"], target["headers"], 16, seconds, body))
    return {"single": single, "sixteen": many}


# -- driving -------------------------------------------------------------------------------------


def _up(url: str, headers: dict[str, str], timeout: float = 90, body: dict[str, Any] | None = None) -> None:
    import httpx

    def ready() -> bool:
        try:
            return httpx.post(url, json=body or REQUEST, headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--litellm", default=shutil.which("litellm"), help="the litellm command (its own venv)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gateway.json")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="ollama", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role == "upstream":
        return serve_upstream(opts.port)
    if opts.role == "clusterai":
        return serve_clusterai(opts.port, opts.upstream, opts.folder, opts.kind)
    if opts.role == "load":
        target = json.loads(opts.upstream)
        print(json.dumps(load(target, 200 if opts.quick else 2000, 3 if opts.quick else 10)))
        return None

    rounds = 1 if opts.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        up_port, ca_port, tr_port, ll_port = free_port(), free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs = [spawn([sys.executable, "-m", "bench.gateway", "--role", "upstream", "--port", str(up_port)],
                        folder / "upstream.log")]
        targets: dict[str, dict[str, Any]] = {"direct": {"url": f"{upstream}/v1/chat/completions", "headers": {}}}
        try:
            _up(targets["direct"]["url"], {})
            procs.append(spawn([sys.executable, "-m", "bench.gateway", "--role", "clusterai", "--port", str(ca_port),
                                 "--upstream", upstream, "--folder", str(folder)], folder / "clusterai.log"))
            wait_until(lambda: (folder / "token").exists(), 60, "the clusterai token")
            targets["clusterai"] = {"url": f"http://127.0.0.1:{ca_port}/v1/chat/completions",
                                    "headers": {"Authorization": f"Bearer {(folder / 'token').read_text()}"}}
            _up(targets["clusterai"]["url"], targets["clusterai"]["headers"])
            # the same upstream declared as OpenAI-only, asked in Ollama's terms: what translation adds
            (folder / "translated").mkdir()
            procs.append(spawn([sys.executable, "-m", "bench.gateway", "--role", "clusterai", "--port", str(tr_port),
                                 "--upstream", upstream, "--folder", str(folder / "translated"), "--kind", "openai"],
                                folder / "translated.log"))
            wait_until(lambda: (folder / "translated" / "token").exists(), 60, "the second clusterai token")
            targets["clusterai-translated"] = {
                "url": f"http://127.0.0.1:{tr_port}/api/chat", "body": OLLAMA_REQUEST,
                "headers": {"Authorization": f"Bearer {(folder / 'translated' / 'token').read_text()}"}}
            _up(targets["clusterai-translated"]["url"], targets["clusterai-translated"]["headers"],
                body=OLLAMA_REQUEST)
            if opts.litellm:
                config = folder / "litellm.yaml"
                master = "sk-" + os.urandom(24).hex()  # both proxies check a key: the comparison is fair
                config.write_text(json.dumps({"model_list": [{"model_name": "m", "litellm_params": {
                    "model": "openai/m", "api_base": f"{upstream}/v1", "api_key": "none"}}],
                    "litellm_settings": {"telemetry": False}, "general_settings": {"master_key": master}}))
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                procs.append(spawn([opts.litellm, "--config", str(config), "--port", str(ll_port), "--host",
                                     "127.0.0.1", "--num_workers", "1"], folder / "litellm.log", env=env))
                targets["litellm"] = {"url": f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                                      "headers": {"Authorization": f"Bearer {master}"}}
                _up(targets["litellm"]["url"], targets["litellm"]["headers"], timeout=180)
            figures: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for r in range(rounds):
                for name, target in targets.items():
                    log(f"round {r + 1}/{rounds}: {name}")
                    args = [sys.executable, "-m", "bench.gateway", "--role", "load", "--upstream", json.dumps(target)]
                    if opts.quick:
                        args.append("--quick")
                    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
                    figures[name].append(json.loads(out.stdout))
        finally:
            for proc in reversed(procs):
                stop_group(proc)
    summary = summarize(figures)
    write_json(opts.out, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                      "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                          "rounds": figures, "summary": summary})
    print(json.dumps(summary, indent=2))
    return None


def summarize(figures: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(name: str, *path: str) -> float:
        values = []
        for f in figures[name]:
            value: Any = f
            for key in path:
                value = value[key]
            values.append(float(value))
        return statistics.median(values)

    out: dict[str, Any] = {}
    direct_p50, direct_p99 = med("direct", "single", "p50_ms"), med("direct", "single", "p99_ms")
    direct_rps = med("direct", "sixteen", "requests_per_s")
    for name in figures:
        p50, p99, rps = med(name, "single", "p50_ms"), med(name, "single", "p99_ms"), med(name, "sixteen",
                                                                                          "requests_per_s")
        out[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "added_p50_ms": round(p50 - direct_p50, 3),
                     "added_p99_ms": round(p99 - direct_p99, 3), "requests_per_s_16": round(rps, 1),
                     "vs_direct_16": round(rps / direct_rps, 3)}
    if "litellm" in figures:
        out["clusterai_vs_litellm_16"] = round(out["clusterai"]["requests_per_s_16"]
                                               / out["litellm"]["requests_per_s_16"], 2)
    return out


if __name__ == "__main__":
    main()
