"""Batch inference on the job plane: `llm.generate` and `llm.embed` send each job's request
through the cluster's gateway, so the same routing (model-aware, least busy, breakers, queue)
applies to a folder of prompts as to live requests. The head gives each attempt the gateway's
address and a credential good for inference only; $CLUSTERAI_GATEWAY_URL and
$CLUSTERAI_GATEWAY_TOKEN on a worker override them.
Standard library only: light workers can run these.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from clusterai.core.tasks import task
from clusterai.errors import NonRetryableError
from clusterai.worker.execute import current_job

URL_ENV = "CLUSTERAI_GATEWAY_URL"
TOKEN_ENV = "CLUSTERAI_GATEWAY_TOKEN"


def _gateway() -> tuple[str, str]:
    """Where the gateway is and the token to show it: the worker's environment if it says (a worker
    that reaches the head's API by another address), else what the head gave this attempt."""
    url, token = os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV)
    job = current_job()
    given = job.gateway if job is not None and job.gateway else {}
    url, token = url or given.get("url"), token or given.get("token")
    if not url or not token:
        raise NonRetryableError(f"this worker does not know the gateway: the head serves no API, or this job "
                                f"ran outside a cluster; set ${URL_ENV} and ${TOKEN_ENV} (a token that may "
                                "submit) in the worker's environment")
    return url, token


def _call(path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    url, token = _gateway()
    request = urllib.request.Request(
        url.rstrip("/") + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the configured gateway
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode(errors="replace")
        if exc.code in (400, 401, 403, 404, 422):  # asking again cannot help
            raise NonRetryableError(f"gateway refused {path} ({exc.code}): {detail}") from None
        raise RuntimeError(f"gateway answered {exc.code} on {path}: {detail}") from None  # 502/503: retry later
    except urllib.error.URLError as exc:  # retried: the head may be moving to a standby
        raise RuntimeError(f"cannot reach the gateway at {url} ({exc.reason}); if the head's API listens on "
                           f"loopback only, workers on other machines need api.host, or ${URL_ENV}") from None


@task("llm.generate", retries=5, backoff=2.0, gateway=True)
def generate(model: str, prompt: str, system: str | None = None, options: dict[str, Any] | None = None,
             timeout: float = 600.0) -> dict[str, Any]:
    """One generation (Ollama's /api/generate, not streamed) through the gateway."""
    body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": False, "options": options or {}}
    if system:
        body["system"] = system
    answer = _call("/api/generate", body, timeout)
    return {"model": model, "response": answer.get("response", ""), "done_reason": answer.get("done_reason"),
            "prompt_tokens": answer.get("prompt_eval_count"), "tokens": answer.get("eval_count")}


@task("llm.embed", retries=5, backoff=2.0, gateway=True)
def embed(model: str, input: str | list[str], timeout: float = 300.0) -> dict[str, Any]:  # noqa: A002 - Ollama's name
    """Embeddings (Ollama's /api/embed) through the gateway: one vector per input text."""
    answer = _call("/api/embed", {"model": model, "input": input}, timeout)
    return {"model": model, "embeddings": answer.get("embeddings", [])}
