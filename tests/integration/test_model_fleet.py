"""The model fleet through the gateway, in front of stand-in Ollama servers (tests/support/
fake_ollama.py: a model list, pulls with progress, loads that take time, one model in memory at a
time, keep_alive as Ollama reads it): pull to every backend or to N by free memory, delete, copy,
create where supported, ps with expires_at, load and unload, keep_alive pinned by gateway.models,
preload and replicas kept by the placement loop (also for a backend that joins later), routing that
keeps cold loads rare, the per-model metrics, and who may do what."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import Api, running_api
from fake_ollama import FakeOllama
from waiting import wait_for

pytestmark = pytest.mark.timeout(120)
MB = 1_000_000


@pytest.fixture
def fakes() -> Iterator[list[FakeOllama]]:
    started = [FakeOllama(load_seconds=0.05).start(), FakeOllama(load_seconds=0.05).start()]
    yield started
    for f in started:
        f.stop()


def settings(fakes: list[FakeOllama], **gateway: Any) -> dict[str, Any]:
    backends = [{"name": name, "url": f.url, **gateway.pop(name, {})} for name, f in zip("ab", fakes, strict=False)]
    return {"gateway": {"backends": backends, "health_interval": 0.3, **gateway}}


@pytest.fixture
def api(fakes: list[FakeOllama], tmp_path: Path) -> Iterator[Api]:
    with running_api(tmp_path / "api", settings(fakes)) as served:
        yield served


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_one_pull_reaches_every_backend_with_progress_from_each(api: Api, fakes: list[FakeOllama]) -> None:
    c = api.client("operator")
    response = c.post("/api/pull", json={"model": "llama3.2"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    frames = lines(response)
    assert {f.get("backend") for f in frames if "digest" in f} == {"a", "b"}  # each backend's layer progress
    assert any("total" in f and "backend" not in f for f in frames)  # and the sum of both
    assert frames[-1] == {"status": "success", "backends": {"a": "success", "b": "success"}}
    assert all("llama3.2" in f.models for f in fakes)
    wait_for(
        lambda: {m["model"] for m in c.get("/api/tags").json()["models"]} == {"llama3.2"}, timeout=5, what="the fleet"
    )
    # the same with the official client, as `ollama pull` would do it
    ollama = pytest.importorskip("ollama")
    progress = list(ollama.Client(host=api.url, headers=api.headers("operator")).pull("qwen3", stream=True))
    assert progress[-1].status == "success" and all("qwen3" in f.models for f in fakes)


def test_pull_to_chosen_backends_or_to_replicas_by_free_memory(fakes: list[FakeOllama], tmp_path: Path) -> None:
    fakes[0].models["big"] = 6 * MB
    with running_api(tmp_path / "api", settings(fakes, a={"memory": "8MB"}, b={"memory": "8MB"})) as api:
        c = api.client("operator")
        assert c.post("/api/v1/models/load", json={"model": "big", "keep_alive": -1}).json()["loaded"] == ["a"]
        wait_for(lambda: c.get("/api/ps").json()["models"], timeout=5, what="the fleet")
        done = c.post("/api/pull", json={"model": "small", "replicas": 1, "stream": False})
        assert done.status_code == 200 and done.json()["backends"] == {"b": "success"}  # b has the free memory
        assert "small" in fakes[1].models and "small" not in fakes[0].models
        chosen = c.post("/api/pull", json={"model": "other", "backends": ["a"], "stream": False})
        assert chosen.json()["backends"] == {"a": "success"} and "other" not in fakes[1].models
        unknown = c.post("/api/pull", json={"model": "x", "backends": ["nope"]})
        assert unknown.status_code == 422 and "no backend named nope" in unknown.json()["error"]


def test_a_pull_that_fails_says_where_and_loses_nothing(api: Api, fakes: list[FakeOllama]) -> None:
    fakes[1].pullable = ("only-this",)
    c = api.client("operator")
    frames = lines(c.post("/api/pull", json={"model": "llama3.2"}))
    assert frames[-1]["backends"] == {"a": "success", "b": "error: HTTP 500: pull model manifest: file does not exist"}
    assert "failed on b" in frames[-1]["error"]
    whole = c.post("/api/pull", json={"model": "llama3.2", "stream": False})
    assert whole.status_code == 502 and "failed on b" in whole.json()["error"]
    assert "llama3.2" in fakes[0].models  # what succeeded stays
    bad = c.post("/api/pull", json={"replicas": 0, "model": "m"})
    assert bad.status_code == 422
    assert c.post("/api/pull", json={}).status_code == 422


def test_delete_copy_and_create(api: Api, fakes: list[FakeOllama]) -> None:
    for f in fakes:
        f.models["llama3.2"] = MB
    fakes[1].can_create = False
    c = api.client("operator")
    copied = c.post("/api/copy", json={"source": "llama3.2", "destination": "mine"})
    assert copied.status_code == 200 and sorted(copied.json()["copied"]) == ["a", "b"]
    assert all("mine" in f.models for f in fakes)
    created = lines(c.post("/api/create", json={"model": "tuned", "from": "llama3.2", "system": "be brief"}))
    assert created[-1]["backends"] == {"a": "success", "b": "error: this backend cannot create models"}
    assert "tuned" in fakes[0].models
    deleted = c.request("DELETE", "/api/delete", json={"model": "mine"})
    assert deleted.status_code == 200 and sorted(deleted.json()["deleted"]) == ["a", "b"]
    assert not any("mine" in f.models for f in fakes)
    gone = c.request("DELETE", "/api/delete", json={"model": "mine"})
    assert gone.status_code == 404 and "not found" in gone.json()["error"]


def test_ps_says_where_a_model_is_loaded_and_until_when(api: Api, fakes: list[FakeOllama]) -> None:
    for f in fakes:
        f.models["llama3.2"] = MB
    c = api.client("operator")
    loaded = c.post("/api/v1/models/load", json={"model": "llama3.2", "replicas": 2, "keep_alive": "10m"})
    assert sorted(loaded.json()["loaded"]) == ["a", "b"]
    assert fakes[0].keep_alives[-1] == "10m"
    wait_for(
        lambda: (
            len(c.get("/api/ps").json()["models"][0]["backends"]) == 2 if c.get("/api/ps").json()["models"] else False
        ),
        timeout=5,
        what="the fleet",
    )
    entry = api.client("viewer").get("/api/ps").json()["models"][0]
    assert entry["model"] == "llama3.2" and entry["size_vram"] == 2 * MB
    left = time.mktime(time.strptime(entry["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())
    assert 500 < left <= 601
    unloaded = c.post("/api/v1/models/unload", json={"model": "llama3.2"})
    assert sorted(unloaded.json()["unloaded"]) == ["a", "b"] and fakes[0].keep_alives[-1] == 0
    assert not any(f.loaded for f in fakes)
    wait_for(lambda: c.get("/api/ps").json()["models"] == [], timeout=5, what="the fleet")


def test_the_pinned_keep_alive_overrides_the_clients(fakes: list[FakeOllama], tmp_path: Path) -> None:
    fakes[0].models["llama3.2"] = MB
    pinned = settings(fakes, models={"llama3.2": {"keep_alive": -1}})
    with running_api(tmp_path / "api", pinned) as api:
        c = api.client("submitter")
        answer = c.post(
            "/api/generate", json={"model": "llama3.2", "prompt": "hi", "keep_alive": "1s", "stream": False}
        )
        assert answer.status_code == 200
        assert fakes[0].keep_alives[-1] == -1 and fakes[0].loaded["llama3.2"] == float("inf")


def test_preload_and_replicas_are_kept_also_for_a_backend_that_joins_later(
    fakes: list[FakeOllama], tmp_path: Path
) -> None:
    fakes[0].models["llama3.2"] = MB
    late = FakeOllama(load_seconds=0.05)
    late_port = _free_port()
    placed = settings(fakes, models={"llama3.2": {"replicas": 2, "preload": True, "keep_alive": -1}})
    placed["gateway"]["backends"].append({"name": "late", "url": f"http://127.0.0.1:{late_port}"})
    with running_api(tmp_path / "api", placed) as api:
        c = api.client("viewer")
        c.get("/api/v1/models")  # the first look starts the placement loop
        # a had it: loaded there; b lacked it: pulled, then loaded; two replicas, as asked
        wait_for(lambda: all("llama3.2" in f.loaded for f in fakes), timeout=15, what="the fleet")
        assert fakes[1].pulls == ["llama3.2"] and not late.pulls
        row = next(m for m in c.get("/api/v1/models").json()["models"] if m["model"] == "llama3.2")
        assert row["replicas"] == 2 and row["preload"] and row["keep_alive"] == -1
        wait_for(
            lambda: (
                next(m for m in c.get("/api/v1/models").json()["models"] if m["model"] == "llama3.2")["loaded_on"] == 2
            ),
            timeout=5,
            what="the fleet",
        )
        # a backend that joins with the model is loaded at once (preload), though two replicas exist
        late.models["llama3.2"] = MB
        late.start(late_port)
        try:
            wait_for(lambda: "llama3.2" in late.loaded, timeout=10, what="the fleet")
            assert late.keep_alives[-1] == -1
        finally:
            late.stop()


def test_routing_keeps_each_model_where_it_is_loaded(fakes: list[FakeOllama], tmp_path: Path) -> None:
    for f in fakes:
        f.models.update({"m1": MB, "m2": MB})
        f.load_seconds, f.generate_seconds = 0.3, 0.01
    with running_api(tmp_path / "api", settings(fakes, a={"max_concurrency": 1}, b={"max_concurrency": 1})) as api:
        c = api.client("submitter")
        errors: list[int] = []

        def client(model: str) -> None:
            with httpx.Client(base_url=api.url, headers=api.headers("submitter"), timeout=30) as own:
                for _ in range(25):
                    r = own.post(
                        "/api/chat",
                        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False},
                    )
                    if r.status_code != 200:
                        errors.append(r.status_code)

        threads = [threading.Thread(target=client, args=(m,)) for m in ("m1", "m2", "m1", "m2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        loads = sum(sum(f.loads.values()) for f in fakes)
        assert loads <= 4, f"{loads} cold loads for 100 requests: {[dict(f.loads) for f in fakes]}"
        models = {m["model"]: m for m in c.get("/api/v1/models").json()["models"]}
        assert sum(m["requests"] for m in models.values()) == 100
        assert sum(m["cold_loads"] for m in models.values()) == loads  # the gateway counted what happened
        metrics = api.client("viewer").get("/metrics").text
        for name in (
            "model_inference_time_count",
            "model_tokens_generated_total",
            "model_load_time_count",
            "model_cache_hit_rate",
            "gateway_cold_loads_total",
            "gateway_model_loaded",
        ):
            assert f'{name}{{backend="' in metrics or f'{name}{{model="' in metrics, name


def test_only_operators_change_the_fleet(api: Api, fakes: list[FakeOllama]) -> None:
    fakes[0].models["llama3.2"] = MB
    for who in ("submitter", "viewer"):
        c = api.client(who)
        assert c.post("/api/pull", json={"model": "x"}).status_code == 403
        assert c.request("DELETE", "/api/delete", json={"model": "llama3.2"}).status_code == 403
        assert c.post("/api/v1/models/unload", json={"model": "llama3.2"}).status_code == 403
    assert "llama3.2" in fakes[0].models and not fakes[0].pulls
    assert api.client("admin").post("/api/v1/models/load", json={"model": "llama3.2"}).status_code == 200


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_delete_where_the_model_is_already_gone_is_not_a_failure(api: Api, fakes: list[FakeOllama]) -> None:
    for f in fakes:
        f.models["llama3.2"] = MB
    c = api.client("operator")
    wait_for(lambda: c.get("/api/tags").json()["models"], timeout=5, what="the model listed")
    del fakes[1].models["llama3.2"]  # gone from b behind the gateway's back, before its next health check
    deleted = c.request("DELETE", "/api/delete", json={"model": "llama3.2"})
    assert deleted.status_code == 200 and deleted.json()["deleted"] == ["a"] and deleted.json()["failed"] == {}
    again = c.request("DELETE", "/api/delete", json={"model": "llama3.2"})  # at once: the gateway knows it is gone
    assert again.status_code == 404
