"""The trust boundary at the REST API (issue 15), attacked the way a submitter would: a token over real
HTTP against a real API. Deep JSON, another owner's idempotency key, a quota of unfinished jobs per
token, and names from outside the safe character set. Each attack must fail, and leave the store as
it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_support import Api, ApiFactory
from typer.testing import CliRunner

from clusterai.cli.main import app as cli_app
from clusterai.core.model import Outcome, State
from clusterai.core.nesting import MAX_DEPTH
from clusterai.errors import BadInput
from clusterai.service.submission import build_spec

JSON = {"Content-Type": "application/json"}


def nested(depth: int) -> str:
    """JSON of `depth` levels (lists in lists)."""
    return "[" * depth + "]" * depth


def job_body(depth: int) -> bytes:
    """A job whose body nests exactly `depth` levels: {"payload": {"values": [[...]]}} is 2 + the lists."""
    return ('{"task": "test.total", "payload": {"path": "/dev/null", "values": ' + nested(depth - 2) + "}}").encode()


def written(api: Api) -> tuple[Any, ...]:
    """What a refused request must not change: jobs, pipeline runs, tokens, events."""
    runs = api.store.list_runs(limit=1000)
    return (api.store.job_counts(), len(runs), len(api.store.list_tokens()), api.store.event_bounds())


# -- 1. deep JSON ------------------------------------------------------------------------------------


ROUTES = [("submitter", "/api/v1/jobs"), ("submitter", "/api/v1/pipelines/runs"),
          ("submitter", "/api/v1/pipelines/video-analysis/runs"), ("admin", "/api/v1/tokens"),
          ("operator", "/api/v1/dlq/requeue"), (None, "/login"),
          ("submitter", "/api/generate"), ("submitter", "/api/chat"), ("submitter", "/api/embed"),
          ("submitter", "/api/show"), ("submitter", "/v1/chat/completions"), ("submitter", "/v1/embeddings"),
          ("submitter", "/api/v1/generate")]


@pytest.mark.parametrize(("who", "path"), ROUTES, ids=[p for _, p in ROUTES])
def test_json_nested_100000_deep_is_a_400_on_every_route_that_reads_json(api: Api, who: str | None,
                                                                         path: str) -> None:
    before = written(api)
    c = api.client(who)
    for body in (nested(100_000), '{"a": ' + nested(100_000) + "}", '{"model": "m", "x": ' + nested(5000) + "}"):
        r = c.post(path, content=body.encode(), headers=JSON)
        assert r.status_code == 400, (path, r.status_code, r.text[:300])
        message = r.json()["error"]
        message = message["message"] if isinstance(message, dict) else message  # OpenAI's error shape
        assert f"deeper than {MAX_DEPTH} levels" in message, message
    assert written(api) == before
    assert c.get("/healthz").status_code == 200  # the server still answers


def test_a_body_just_over_the_depth_limit_is_refused_and_at_the_limit_is_taken(api: Api) -> None:
    c = api.client("submitter")
    before = written(api)
    for path, body in [("/api/v1/jobs", job_body(MAX_DEPTH + 1)),
                       ("/api/v1/jobs", b'{"jobs": [' + job_body(MAX_DEPTH - 1) + b"]}"),
                       ("/api/v1/pipelines/runs", ('{"input": {"x": ' + nested(MAX_DEPTH - 1) + '}, "pipeline": '
                                                   '{"stages": [{"name": "a", "task": "bench.noop"}]}}').encode()),
                       ("/api/generate", ('{"model": "m", "options": ' + nested(MAX_DEPTH) + "}").encode())]:
        r = c.post(path, content=body, headers=JSON)
        assert r.status_code == 400, (path, r.text)
    assert written(api) == before
    r = c.post("/api/v1/jobs", content=job_body(MAX_DEPTH), headers=JSON)
    assert r.status_code == 201, r.text
    assert sum(api.store.job_counts().values()) == 1


def test_the_python_client_refuses_a_payload_over_the_depth_limit(api: Api) -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(BadInput, match=f"deeper than {MAX_DEPTH} levels"):
        build_spec(api.config, "test.total", {"path": "/dev/null", "values": deep})
    assert build_spec(api.config, "test.total", {"path": "/dev/null", "values": json.loads(nested(MAX_DEPTH - 1))})


# -- 2. idempotency keys belong to their owner ---------------------------------------------------------


def test_another_owners_key_does_not_return_their_job_or_result(api: Api) -> None:
    mine = {"task": "primes.count", "payload": {"limit": 100}, "idempotency_key": "order-17"}
    first = api.client("submitter").post("/api/v1/jobs", json=mine)
    assert first.status_code == 201, first.text
    theirs = first.json()["id"]
    api.add_worker()
    api.finish(theirs, Outcome.SUCCEEDED, State.SUCCEEDED, result={"secret": "submitter's result"})

    intruder = api.client("other")
    again = intruder.post("/api/v1/jobs", json=mine)
    assert again.status_code == 201, again.text  # a new job of its own, not the other's
    job = again.json()
    assert job["id"] != theirs and job["owner"] == "other" and job["result"] is None
    assert job["idempotency_key"] == "order-17" and "secret" not in again.text
    # a different payload under the same key: a conflict with its own job, never with the other's
    other_payload = intruder.post("/api/v1/jobs", json={**mine, "payload": {"limit": 5}})
    assert other_payload.status_code == 409, other_payload.text
    assert other_payload.json()["job"] == job["id"] and f"job {theirs} " not in other_payload.json()["error"]
    fresh = api.client("other").post("/api/v1/jobs", json={**mine, "idempotency_key": "theirs-only",
                                                            "payload": {"limit": 5}})
    assert fresh.status_code == 201
    # and the owner still gets its own job back, result included
    back = api.client("submitter").post("/api/v1/jobs", json=mine)
    assert back.status_code == 200 and back.json()["id"] == theirs
    assert back.json()["result"] == {"secret": "submitter's result"}
    assert api.store.get(theirs).idempotency_key == "order-17"
    assert sum(api.store.job_counts().values()) == 3


def test_keys_with_control_characters_are_refused(api: Api) -> None:
    before = written(api)
    c = api.client("submitter")
    for key in ("a\x1fb", "line\nbreak", "\x00", ""):
        r = c.post("/api/v1/jobs", json={"task": "bench.noop", "idempotency_key": key})
        assert r.status_code == 422, (key, r.text)
        assert "idempotency_key" in r.text
    assert written(api) == before
    with pytest.raises(BadInput, match="idempotency_key"):
        build_spec(api.config, "bench.noop", {}, idempotency_key="a\x1fb")


# -- 4. a quota of unfinished jobs per token; safe names ---------------------------------------------


def test_unfinished_jobs_per_token_are_capped_batches_included(api_factory: ApiFactory) -> None:
    api = api_factory({"api": {"max_queued_per_token": 5}})
    c = api.client("submitter")
    assert c.post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"}] * 3}).status_code == 201
    before = written(api)
    r = c.post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"}] * 3})  # 6 > 5: refused whole
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1 and "limit of 5" in r.json()["error"]
    assert written(api) == before
    assert c.post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"}] * 2}).status_code == 201
    assert c.post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 429
    assert api.client("other").post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 201  # its own
    too_big = c.post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"}] * 6})
    assert too_big.status_code == 422 and "smaller batches" in too_big.json()["error"]
    # finished jobs no longer count (once the cached count is taken again)
    api.add_worker()
    mine = [j.id for j in api.store.list_jobs(owner="submitter", limit=10)]
    for job_id in mine[:2]:
        api.finish(job_id, Outcome.SUCCEEDED, State.SUCCEEDED, result=1)
    api.app.state.ctx.quota._bounds.clear()
    assert c.post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"}] * 2}).status_code == 201
    assert api.store.unfinished_of("submitter") == 5


BAD_NAMES = [{"queue": "a b"}, {"queue": "<script>"}, {"queue": "x" * 101}, {"labels": {"region": "eu west"}},
             {"labels": {"bad key": "eu"}}, {"prefers": {"zone": "a\nb"}}, {"resources": {"GPU;1": 1}},
             {"labels": {"region": ""}}, {"prefers": {"model": "x" * 201}}]


@pytest.mark.parametrize("options", BAD_NAMES, ids=[json.dumps(o)[:40] for o in BAD_NAMES])
def test_names_outside_the_safe_set_are_422_naming_the_field(api: Api, options: dict[str, Any]) -> None:
    before = written(api)
    field = next(iter(options))
    r = api.client("submitter").post("/api/v1/jobs", json={"task": "bench.noop", **options})
    assert r.status_code == 422, r.text
    assert any(f["field"].startswith(f"body.{field}") for f in r.json()["fields"]), r.json()
    batch = api.client("submitter").post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"},
                                                                        {"task": "bench.noop", **options}]})
    assert batch.status_code == 422
    assert written(api) == before
    spec_options = {("requires" if k == "resources" else k): v for k, v in options.items()}
    with pytest.raises(BadInput, match=field if field != "resources" else "requires"):
        build_spec(api.config, "bench.noop", {}, **spec_options)


def test_safe_names_are_taken(api: Api) -> None:
    r = api.client("submitter").post("/api/v1/jobs", json={
        "task": "bench.noop", "queue": "gpu-2.eu:a_b", "prefers": {"model": "org/model:7b"}, "resources": {"CPU": 1}})
    assert r.status_code == 201, r.text
    spec = build_spec(api.config, "bench.noop", {}, labels={"region": "eu-west-1", "zone.a": "x:1"})
    assert spec.labels == {"region": "eu-west-1", "zone.a": "x:1"}


def test_the_cli_exits_2_on_an_unsafe_name_locally_and_over_the_api(api: Api) -> None:
    runner = CliRunner()
    before = written(api)
    for where in (["--store", api.config.store], ["--url", api.url, "--token", api.tokens["submitter"]]):
        for option in (["--queue", "a b"], ["--label", "region=eu west"], ["--prefer", "zone=<b>"]):
            result = runner.invoke(cli_app, [*where, "submit", "bench.noop", *option])
            assert result.exit_code == 2, (where[0], option, result.output)
    assert written(api) == before
