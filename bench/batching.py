"""Batched generation (issue: dynamic batching): the model server's throughput when 8 clients send at
once against one client sending the same requests one after another.

    PYTHONPATH=. .venv/bin/python -m bench.batching [--quick] [--requests 64] [--tokens 32] [--clients 8]
                                                    [--rounds 5] [--out bench/results/batching.json]

The model is the tiny GPT-2 the tests build (tests/support/tinylm.py: 2 layers, 48 wide, a 400-token
vocabulary), served on the CPU by `clusterai serve-model` in a process of its own on loopback. The
load comes from this process: greedy Ollama /api/generate requests, not streamed, `--tokens` new
tokens each, every one with a prompt of its own (2 to 9 words). Each round makes three runs of the
same `--requests` requests: one client sending them one after another; `--clients` clients at once
on a server started with `--max-batch 1` (one request at a time, what the server did before
batching); `--clients` clients at once with batching (`--max-batch 8`). Every run's texts must be
those of the one-client run, exactly. Medians of the rounds; results in bench/results/batching.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, free_port, log, stop_group, wait_until, write_json

WORDS = ["the", "cluster", "runs", "a", "worker", "that", "keeps", "jobs", "in", "its", "store", "and", "answers",
         "the", "head"]


def prompts(n: int) -> list[str]:
    return [f"Request {i}: " + " ".join(WORDS[i % 7:i % 7 + 2 + i % 8]) for i in range(n)]


def build_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    import tinylm

    return tinylm.build_tiny_gpt2(folder / "tiny-gpt2")


def start_server(model: Path, max_batch: int, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clusterai.cli.entry", "serve-model", f"tiny={model}",
                             "--port", str(port), "--device", "cpu", "--max-batch", str(max_batch)],
                            stdout=(folder / f"server-{max_batch}.log").open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/api/tags", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 120, f"the model server (--max-batch {max_batch})")
    return proc, url


def run(url: str, texts: list[str], tokens: int, clients: int) -> dict[str, Any]:
    """Every prompt answered once by `clients` clients taking the next one as they finish."""
    import httpx

    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(texts)):
        todo.put(i)
    answers: list[dict[str, Any]] = [{} for _ in texts]
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            start.wait()
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                r = http.post(f"{url}/api/generate", json={"model": "tiny", "prompt": texts[i], "stream": False,
                                                           "options": {"num_predict": tokens}})
                if r.status_code != 200:
                    failures.append(r.text)
                    return
                answers[i] = r.json()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed: {failures[0]}")
    generated = sum(a["eval_count"] for a in answers)
    return {"clients": clients, "seconds": round(took, 3), "requests_per_s": round(len(texts) / took, 2),
            "tokens_per_s": round(generated / took, 1), "tokens": generated,
            "texts": [a["response"] for a in answers]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run of the harness; its figures mean nothing")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "batching.json")
    opts = parser.parse_args()
    n = 16 if opts.quick else opts.requests
    rounds = 1 if opts.quick else opts.rounds
    texts = prompts(n)
    runs: dict[str, list[dict[str, Any]]] = {"one_client": [], "clients_max_batch_1": [], "clients_batched": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_model(folder)
        servers = {size: start_server(model, size, folder) for size in (1, 8)}
        try:
            for _, url in servers.values():  # warm: the first requests pay for imports and allocations
                run(url, texts[:opts.clients], opts.tokens, opts.clients)
            for r in range(rounds):
                log(f"round {r + 1}/{rounds}")
                runs["one_client"].append(run(servers[8][1], texts, opts.tokens, 1))
                runs["clients_max_batch_1"].append(run(servers[1][1], texts, opts.tokens, opts.clients))
                runs["clients_batched"].append(run(servers[8][1], texts, opts.tokens, opts.clients))
        finally:
            for proc, _ in servers.values():
                stop_group(proc)
    reference = runs["one_client"][0]["texts"]
    same = all(one["texts"] == reference for results in runs.values() for one in results)
    summary = summarize(runs)
    summary["texts_identical_to_one_client"] = same
    for results in runs.values():
        for one in results:
            del one["texts"]
    write_json(opts.out, {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                      "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                          "requests": n, "tokens": opts.tokens, "clients": opts.clients, "rounds": runs,
                          "summary": summary})
    log(f"summary: {summary}")
    if not same:
        raise SystemExit("batched texts differ from the one-client run's")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(name: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[name]))

    out: dict[str, Any] = {name: {"requests_per_s": med(name, "requests_per_s"),
                                  "tokens_per_s": med(name, "tokens_per_s"),
                                  "runs_requests_per_s": [r["requests_per_s"] for r in results]}
                           for name, results in runs.items()}
    one = out["one_client"]["requests_per_s"]
    out["batched_vs_one_client"] = round(out["clients_batched"]["requests_per_s"] / one, 2)
    out["max_batch_1_vs_one_client"] = round(out["clients_max_batch_1"]["requests_per_s"] / one, 2)
    return out


if __name__ == "__main__":
    main()
