"""`clusterai models pull|ps|load|unload|rm` against an API whose gateway lists two stand-in Ollama
servers (tests/support/fake_ollama.py): one command pulls a model to both, ps says where it is
loaded, a failure on one backend is exit 1 with the reason, and a token that may only infer is
refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import Api, running_api
from fake_ollama import FakeOllama
from test_cli import run_cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Api, list[FakeOllama]]]:
    fakes = [FakeOllama(load_seconds=0.05).start(), FakeOllama(load_seconds=0.05).start()]
    settings = {"gateway": {"backends": [{"name": "a", "url": fakes[0].url}, {"name": "b", "url": fakes[1].url}],
                            "health_interval": 0.3}}
    try:
        with running_api(tmp_path / "api", settings) as api:
            yield api, fakes
    finally:
        for f in fakes:
            f.stop()


def models(api: Api, *args: str, who: str = "operator", cwd: Path) -> tuple[int, str, str]:
    done = run_cli("--url", api.url, "--token", api.tokens[who], "models", *args, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


def test_pull_to_both_then_ps_load_unload_and_rm(fleet: tuple[Api, list[FakeOllama]], tmp_path: Path) -> None:
    api, fakes = fleet
    code, stdout, stderr = models(api, "pull", "llama3.2", cwd=tmp_path)
    assert code == 0, stdout + stderr
    assert "a: success" in stdout and "b: success" in stdout
    assert "a: pulling manifest" in stderr  # each backend's steps, as they came
    assert all("llama3.2" in f.models for f in fakes)

    code, stdout, stderr = models(api, "load", "llama3.2", "--replicas", "2", "--keep-alive", "-1", cwd=tmp_path)
    assert code == 0 and "loaded on a, b" in stdout.replace("b, a", "a, b"), stdout + stderr
    code, stdout, _ = models(api, "ps", cwd=tmp_path)
    assert code == 0 and stdout.count("llama3.2") == 2 and "kept" in stdout
    listed = run_cli("--url", api.url, "--token", api.tokens["viewer"], "models", cwd=tmp_path)
    assert listed.returncode == 0 and "a*, b*" in listed.stdout  # the plain listing still works

    code, stdout, _ = models(api, "unload", "llama3.2", "--backend", "b", cwd=tmp_path)
    assert code == 0 and "unloaded on b" in stdout
    assert "llama3.2" in fakes[0].loaded and "llama3.2" not in fakes[1].loaded

    code, stdout, _ = models(api, "rm", "llama3.2", cwd=tmp_path)
    assert code == 0 and not any("llama3.2" in f.models for f in fakes)


def test_a_failure_on_one_backend_is_exit_1_and_an_inference_token_is_refused(
        fleet: tuple[Api, list[FakeOllama]], tmp_path: Path) -> None:
    api, fakes = fleet
    fakes[1].pullable = ("something-else",)
    code, stdout, stderr = models(api, "pull", "llama3.2", cwd=tmp_path)
    assert code == 1 and "a: success" in stdout and "pull failed" in stderr and "file does not exist" in stderr
    code, _, stderr = models(api, "pull", "qwen3", who="submitter", cwd=tmp_path)
    assert code != 0 and "may not do this" in stderr and "qwen3" not in fakes[0].pulls
    code, _, stderr = models(api, "pull", "x", "--backend", "nope", cwd=tmp_path)
    assert code == 2 and "no backend named nope" in stderr
