"""Model servers die under the gateway: two `clusterai serve-model` processes with the tiny GPT-2,
the API's gateway in front. A server SIGKILLed mid-generation: the client's stream ends with the
protocol's error (Ollama's last NDJSON line, OpenAI's error event, which each official client
raises); new requests avoid it and its breaker opens; started again on its port, its breaker closes
and it takes requests again. With every server dead a request gets a clear error, not a hang."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api, running_api
from conftest import wait_for
from nodes import ModelServer, Scheduler, Worker, stopping, worker_token

pytest.importorskip("transformers")
ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]
# sampled, so that the tiny model does not stop early at its end token: a stream long enough to cut
LONG = {"num_predict": 250, "temperature": 1.0, "seed": 7}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def states(api: Api) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in api.client("viewer").get("/api/v1/models").json()["backends"]}


def wait_state(api: Api, name: str, breaker: str, reachable: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = states(api)[name]
        if now["breaker"] == breaker and now["reachable"] is reachable:
            return
        assert time.monotonic() < deadline, f"backend {name} is {now}, not breaker {breaker} reachable {reachable}"
        time.sleep(0.1)


def test_a_model_server_killed_mid_stream(tmp_path: Path, tiny_gpt2: Path) -> None:
    tokens = {"a": "token-of-a", "b": "token-of-b"}
    ports = {name: free_port() for name in tokens}
    spec = f"tiny={tiny_gpt2}"
    servers = {name: ModelServer([spec], ports[name], tokens[name], tmp_path, name) for name in tokens}
    with stopping(*servers.values()) as nodes:
        for server in servers.values():
            server.wait_up(120)
        backends = []
        for name in tokens:
            os.environ[f"CLUSTERAI_TEST_SERVE_{name.upper()}"] = tokens[name]
            backends.append({"name": name, "url": servers[name].url, "max_concurrency": 4,
                             "token_env": f"CLUSTERAI_TEST_SERVE_{name.upper()}"})
        settings = {"gateway": {"backends": backends, "health_interval": 0.3,
                                "breaker": {"failures": 2, "cooldown": 1.0}}}
        with running_api(tmp_path / "api", settings) as api:
            http = api.client("submitter", timeout=60)
            wait_state(api, "a", "closed", True)
            wait_state(api, "b", "closed", True)

            # an Ollama stream, its server killed after the first lines
            with http.stream("POST", "/api/generate",
                             json={"model": "tiny", "prompt": "The cluster", "options": LONG}) as r:
                assert r.status_code == 200
                victim = r.headers["x-clusterai-backend"]
                lines = r.iter_lines()
                first = [json.loads(next(lines)) for _ in range(2)]
                servers[victim].kill()
                rest = [json.loads(line) for line in lines if line]
            survivor = "b" if victim == "a" else "a"
            assert all("response" in line and not line["done"] for line in first)
            assert rest and "stopped answering mid-stream" in rest[-1]["error"]
            assert not any(line.get("done") for line in rest)

            # new requests avoid it; its breaker opens
            for _ in range(10):
                r = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                     "options": {"num_predict": 2}})
                assert r.status_code == 200 and r.headers["x-clusterai-backend"] == survivor
            wait_state(api, victim, "open", False, timeout=10)

            # started again on its port: the breaker closes and it takes requests again
            after = len(servers[victim].output())
            servers[victim] = ModelServer([spec], ports[victim], tokens[victim], tmp_path, victim)
            nodes.append(servers[victim])
            servers[victim].wait_up(120, after=after)
            wait_state(api, victim, "closed", True)
            used = {http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                     "options": {"num_predict": 1}}).headers["x-clusterai-backend"]
                    for _ in range(20)}
            assert used == {"a", "b"}

            # an OpenAI stream, its server killed: the official client raises the error event
            o = openai.OpenAI(base_url=f"{api.url}/v1", api_key=api.tokens["submitter"], max_retries=0)
            raw = o.chat.completions.with_raw_response.create(
                model="tiny", messages=[{"role": "user", "content": "The cluster"}], stream=True,
                max_tokens=LONG["num_predict"], temperature=LONG["temperature"], seed=LONG["seed"])
            victim = raw.headers["x-clusterai-backend"]
            chunks = iter(raw.parse())
            next(chunks), next(chunks)
            servers[victim].kill()
            with pytest.raises(openai.APIError, match="stopped answering mid-stream"):
                for _ in chunks:
                    pass

            # the ollama client raises on Ollama's error line: the last server killed under its stream
            last = "b" if victim == "a" else "a"
            c = ollama.Client(host=api.url, headers=api.headers("submitter"))
            stream = c.generate(model="tiny", prompt="The cluster", stream=True, options=LONG)
            next(stream), next(stream)
            servers[last].kill()
            with pytest.raises(ollama.ResponseError, match="stopped answering mid-stream"):
                for _ in stream:
                    pass

            # with no server left a request gets a clear error at once, in its protocol's shape
            r = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
            assert r.status_code in (502, 503) and isinstance(r.json()["error"], str)
            with pytest.raises(openai.APIStatusError):
                o.completions.create(model="tiny", prompt="x", max_tokens=1)


@pytest.mark.cluster
def test_a_worker_serving_a_model_killed_mid_stream(tmp_path: Path, tiny_gpt2: Path) -> None:
    """The same with models hosted by `clusterai worker --serve-model`: a worker's whole process group
    SIGKILLed under a stream; the stream ends with Ollama's error, the other worker answers the next
    requests, the dead worker's backend leaves the gateway, and comes back when the worker does."""
    store = f"sqlite:///{tmp_path / 'clusterai.db'}"
    head = Scheduler(store, tmp_path)
    with stopping(head) as nodes:
        head.wait_up(90)
        workers = {}
        for name in ("box-1", "box-2"):
            workers[name] = Worker(head.address, worker_token(store, name, tmp_path), name, tmp_path,
                                   extra=["--serve-model", f"tiny={tiny_gpt2}"])
            nodes.append(workers[name])
        for worker in workers.values():
            worker.wait_line("joined", 120)
        http = httpx.Client(base_url=head.api, headers={"Authorization": f"Bearer {head.admin_token()}"},
                            timeout=60)

        def backends() -> set[str]:
            return {b["name"] for b in http.get("/api/v1/models").json()["backends"]}

        wait_for(lambda: backends() == {"worker box-1", "worker box-2"} or None, 60, "both workers' backends")
        with http.stream("POST", "/api/generate",
                         json={"model": "tiny", "prompt": "The cluster", "options": LONG}) as r:
            victim = r.headers["x-clusterai-backend"].removeprefix("worker ")
            lines = r.iter_lines()
            next(lines), next(lines)
            workers[victim].kill()
            rest = [json.loads(line) for line in lines if line]
        assert "stopped answering mid-stream" in rest[-1]["error"]
        survivor = "box-2" if victim == "box-1" else "box-1"
        for _ in range(5):
            r = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                 "options": {"num_predict": 2}})
            assert r.status_code == 200 and r.headers["x-clusterai-backend"] == f"worker {survivor}"
        wait_for(lambda: backends() == {f"worker {survivor}"} or None, 60, "the dead worker's backend to go")

        workers[victim] = Worker(head.address, worker_token(store, f"{victim}-again", tmp_path), victim,
                                 tmp_path, extra=["--serve-model", f"tiny={tiny_gpt2}"])
        nodes.append(workers[victim])
        wait_for(lambda: backends() == {"worker box-1", "worker box-2"} or None, 120, "the worker to come back")
        used = {http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                 "options": {"num_predict": 1}}).headers["x-clusterai-backend"]
                for _ in range(20)}
        assert used == {"worker box-1", "worker box-2"}
