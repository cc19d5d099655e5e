"""The real Open WebUI in front of the cluster: `open-webui` from PyPI, in a virtualenv of its own
(.venv-openwebui, installed on first use; skipped with the reason when it cannot be), configured with
the gateway of `clusterai up` as its Ollama connection and a submitter token as that connection's
key, lists the cluster's models and chats through it, streamed and not.

The issue's whole story: the cluster lists two Ollama servers (stand-ins: tests/support/
fake_ollama.py) beside the model it serves itself; one `clusterai models pull` puts a model on both;
Open WebUI chats with it through the gateway; and the gateway says where it is loaded."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import start_up, stop_up, wait_for
from fake_ollama import FakeOllama
from nodes import cli
from openwebui import INSTALL_TIMEOUT, OpenWebUI, Unavailable, connection_env, ensure

pytest.importorskip("transformers")

# Open WebUI's first start (migrations of a fresh database, its frontend, torch imported) takes
# about 15 s on 2 busy cores: 180 s leaves room for a slow machine. Installing it, when the venv is
# missing, has a bound of its own (INSTALL_TIMEOUT).
START_TIMEOUT = 180
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(INSTALL_TIMEOUT + START_TIMEOUT + 240)]


@pytest.fixture(scope="session")
def open_webui_venv() -> str:
    """The open-webui version in .venv-openwebui, installed when missing."""
    try:
        return ensure()
    except Unavailable as exc:
        if os.environ.get("CLUSTERAI_REQUIRE_OPEN_WEBUI"):
            pytest.fail(f"Open WebUI is required here but cannot be installed: {exc}")
        pytest.skip(f"Open WebUI cannot be installed: {exc}")


@pytest.fixture
def ollamas() -> Iterator[list[FakeOllama]]:
    started = [FakeOllama(load_seconds=0.1).start(), FakeOllama(load_seconds=0.1).start()]
    yield started
    for f in started:
        f.stop()


@pytest.fixture
def cluster(tmp_path: Path, tiny_gpt2: Path, ollamas: list[FakeOllama]) -> Iterator[tuple[str, str]]:
    """`clusterai up` serving the tiny GPT-2 as "tiny" to its own gateway, which also lists two Ollama
    servers; yields its URL and admin token."""
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///.clusterai/clusterai.db", "api": {"port": 0},
        "cluster": {"workers": 1, "dashboard": False, "memory_limit": "2GiB"},
        "gateway": {"serve": [f"tiny={tiny_gpt2}"], "serve_device": "cpu", "health_interval": 1,
                    "backends": [{"name": "ollama-1", "url": ollamas[0].url},
                                 {"name": "ollama-2", "url": ollamas[1].url}]},
    }))
    up, url = start_up(tmp_path)
    try:
        yield url, (tmp_path / ".clusterai" / "admin.token").read_text().strip()
    finally:
        stop_up(up)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_open_webui_lists_the_clusters_models_and_chats_through_the_gateway(
        open_webui_venv: str, cluster: tuple[str, str], ollamas: list[FakeOllama], tmp_path: Path) -> None:
    url, admin = cluster
    # one command puts the model on both Ollama servers (the admin token `up` wrote is an operator's)
    pulled = cli("--url", url, "--token", admin, "models", "pull", "llama3.2", cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert "ollama-1: success" in pulled.stdout and "ollama-2: success" in pulled.stdout
    assert all("llama3.2" in o.models for o in ollamas)
    made = cli("token", "create", "open-webui", "--role", "submitter", cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    token = made.stdout.splitlines()[0].strip()
    gateway = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30)

    def head_requests() -> int:
        backends = gateway.get("/api/v1/models").json()["backends"]
        return sum(b["requests"] for b in backends if b["name"] == "head")

    wait_for(lambda: {"tiny", "llama3.2"} <= {m["model"] for m in gateway.get("/api/tags").json()["models"]}, 60,
             "the gateway to list tiny and llama3.2")
    assert httpx.get(f"{url}/api/tags").status_code == 401  # so Open WebUI lists it with the connection's key
    before = head_requests()

    webui = OpenWebUI(tmp_path / "open-webui", connection_env(url, token))
    try:
        webui.wait_up(START_TIMEOUT)
        with webui.sign_up_admin() as ui:
            listed = ui.get("/api/models")
            assert listed.status_code == 200, listed.text
            ollama = {m["id"]: m for m in listed.json()["data"] if m.get("owned_by") == "ollama"}
            assert {"tiny", "llama3.2"} <= set(ollama), f"Open WebUI lists {sorted(ollama)}; its log:\n{webui.tail()}"

            # the pulled model, on an Ollama server, through the gateway
            pulled_chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "Hello"}], "stream": False}
            answer = ui.post("/api/chat/completions", json=pulled_chat)
            assert answer.status_code == 200, f"{answer.text}\n{webui.tail()}"
            assert answer.json()["choices"][0]["message"]["content"] == "fake answer"
            assert sum(o.served["llama3.2"] for o in ollamas) == 1

            chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6}
            answer = ui.post("/api/chat/completions", json={**chat, "stream": False})
            assert answer.status_code == 200, f"{answer.text}\n{webui.tail()}"
            message = answer.json()["choices"][0]["message"]
            assert message["role"] == "assistant" and isinstance(message["content"], str)
            assert 1 <= answer.json()["usage"]["completion_tokens"] <= 6, answer.json()  # max_tokens reached the model

            # the way its chat page asks: streamed, Ollama's NDJSON turned into OpenAI's events
            with ui.stream("POST", "/api/chat/completions", json={**chat, "stream": True}) as streamed:
                assert streamed.status_code == 200, streamed.read()
                events = sse_events(streamed)
            assert events and events[-1] == "[DONE]", events
            chunks = [json.loads(e) for e in events[:-1]]
            assert all(c["model"] == "tiny" for c in chunks if "model" in c), chunks
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
            assert text and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length"), chunks
            assert 1 <= chunks[-1]["usage"]["completion_tokens"] <= 6, chunks[-1]
    finally:
        webui.stop()
    # both chats went through the gateway to the model clusterai serves (listing is not counted)
    assert head_requests() >= before + 2
    # and the gateway says where the pulled model is now loaded (what the dashboard's Models section shows)
    llama = next(m for m in gateway.get("/api/v1/models").json()["models"] if m["model"] == "llama3.2")
    assert [b["name"] for b in llama["backends"] if b["loaded"]] == [
        f"ollama-{i + 1}" for i, o in enumerate(ollamas) if "llama3.2" in o.loaded]
    assert llama["loaded_on"] == 1 and llama["requests"] == 1
