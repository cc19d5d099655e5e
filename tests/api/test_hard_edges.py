"""The edges of the API under bad input and bad days: each answers a 4xx or 503 that says what is
wrong, and stores nothing; never a 500."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import Api, ApiFactory

from clusterai.core.model import Outcome, State

LIMIT = 2048


def job_count(api: Api) -> int:
    return sum(api.store.job_counts().values())


def chunks(data: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def big_job(size: int) -> bytes:
    return json.dumps({"task": "test.record", "payload": {"path": "/dev/null", "key": "k" * size}}).encode()


@pytest.fixture
def small(api_factory: ApiFactory) -> Api:
    return api_factory({"api": {"max_body_bytes": LIMIT}})


# -- size and content type --------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_by_content_length(small: Api) -> None:
    c = small.client("submitter")
    body = big_job(LIMIT)
    assert len(body) > LIMIT
    r = c.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert f"limit of {LIMIT} bytes" in r.json()["error"]
    assert job_count(small) == 0
    # just under the limit is fine
    ok = big_job(LIMIT - 200)
    assert len(ok) <= LIMIT
    r = c.post("/api/v1/jobs", content=ok, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert job_count(small) == 1


def test_a_chunked_body_over_the_limit_is_413(small: Api) -> None:
    c = small.client("submitter")
    body = big_job(2 * LIMIT)
    r = c.post("/api/v1/jobs", content=chunks(body), headers={"Content-Type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert job_count(small) == 0
    # a chunked body under the limit goes through
    r = c.post("/api/v1/jobs", content=chunks(big_job(100)), headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert job_count(small) == 1


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/dlq/requeue"])
def test_a_chunked_body_over_the_limit_is_413_on_routes_with_a_body_model(small: Api, path: str) -> None:
    """Routes whose body FastAPI parses (a pydantic model) read it before the handler runs."""
    c = small.client("admin")
    body = json.dumps({"name": "n" * (2 * LIMIT), "role": "viewer"}).encode()
    r = c.post(path, content=chunks(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert len(small.store.list_tokens()) == 5


def test_a_body_that_is_not_json_is_415(api: Api) -> None:
    c = api.client("submitter")
    for content_type, body in [("text/plain", "task=bench.noop"),
                               ("application/x-www-form-urlencoded", "task=bench.noop"),
                               ("multipart/form-data; boundary=x", "--x\r\n\r\nbench.noop\r\n--x--\r\n"),
                               ("", '{"task": "bench.noop"}')]:
        r = c.post("/api/v1/jobs", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 415, (content_type, r.text)
        assert "application/json" in r.json()["error"]
    r = c.post("/api/v1/jobs", data={"task": "bench.noop"})  # a real form post
    assert r.status_code == 415
    assert job_count(api) == 0
    # JSON with a charset, and a +json type, are JSON
    r = c.post("/api/v1/jobs", content=b'{"task": "bench.noop"}',
               headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    r = c.post("/api/v1/jobs", content=b'{"task": "bench.noop"}', headers={"Content-Type": "application/vnd.x+json"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("length, allowed", [(b"12abc", {400}), (b"9" * 5000, {400, 413})])
def test_a_content_length_that_is_not_a_usable_number_is_refused(api: Api, length: bytes, allowed: set[int]) -> None:
    """httpx will not send a bad Content-Length; write the request on a socket."""
    import socket

    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + length + b"\r\nConnection: close\r\n\r\n")
        answer = s.recv(4096)
    status = int(answer.split()[1])
    assert status in allowed, answer  # the HTTP parser or the API refuses it: never a 5xx


# -- malformed and invalid bodies -------------------------------------------------------------


def test_malformed_json_is_400_with_a_message(api: Api) -> None:
    c = api.client("admin")
    for path in ("/api/v1/jobs", "/api/v1/tokens", "/api/v1/dlq/requeue"):
        r = c.post(path, content=b'{"task": "bench.noop",', headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        assert "malformed JSON" in r.json()["error"], r.text
    r = c.post("/api/v1/jobs", content=b"\xff\xfe{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert job_count(api) == 0


def test_a_field_of_the_wrong_type_is_422_naming_it(api: Api) -> None:
    c = api.client("admin")
    r = c.post("/api/v1/jobs", json={"task": "bench.noop", "priority": 5})
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["fields"]] == ["body.priority"]
    assert "body.priority" in r.json()["error"]
    r = c.post("/api/v1/jobs", json={"task": "bench.noop", "retries": "many", "nonsense": 1})
    assert r.status_code == 422
    assert {f["field"] for f in r.json()["fields"]} == {"body.retries", "body.nonsense"}
    r = c.post("/api/v1/jobs", json=["bench.noop"])
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "body"
    r = c.post("/api/v1/tokens", json={"name": "x", "role": "viewer", "expires_in": "soon"})
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["fields"]] == ["body.expires_in"]
    r = c.get("/api/v1/jobs", params={"limit": "lots"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "query.limit"
    r = c.get("/api/v1/jobs", params={"since": "last tuesday"})
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "query.since"
    r = c.get("/api/v1/jobs/not-a-number")
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "path.job_id"
    assert job_count(api) == 0


def test_an_unknown_task_is_422_listing_the_known_ones(api: Api) -> None:
    r = api.client("submitter").post("/api/v1/jobs", json={"task": "no.such.task"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert "no.such.task" in body["error"]
    assert {"primes.count", "bench.noop", "test.record"} <= set(body["known_tasks"])
    assert body["known_tasks"] == sorted(body["known_tasks"])
    assert job_count(api) == 0


def test_a_bad_payload_is_422_naming_the_field(api: Api) -> None:
    c = api.client("submitter")
    r = c.post("/api/v1/jobs", json={"task": "primes.count", "payload": {"limit": "x"}})
    assert r.status_code == 422, r.text
    assert "limit" in r.json()["error"] and "primes.count" in r.json()["error"]
    r = c.post("/api/v1/jobs", json={"task": "primes.count", "payload": {"limit": 1}})
    assert r.status_code == 422 and "limit" in r.json()["error"]
    r = c.post("/api/v1/jobs", json={"task": "primes.count", "payload": {}})
    assert r.status_code == 422 and "limit" in r.json()["error"]
    r = c.post("/api/v1/jobs", json={"task": "primes.count", "payload": {"limit": 10, "extra": 1}})
    assert r.status_code == 422 and "extra" in r.json()["error"]
    assert job_count(api) == 0
    r = c.post("/api/v1/jobs", json={"task": "primes.count", "payload": {"limit": 10}})
    assert r.status_code == 201 and r.json()["payload"] == {"limit": 10}


def test_a_batch_with_one_bad_job_stores_nothing(api: Api) -> None:
    c = api.client("submitter")
    api.add_job()
    before = job_count(api)
    events_before = api.store.event_bounds()
    jobs = [{"task": "primes.count", "payload": {"limit": 100 + i}} for i in range(5)]
    jobs[2]["payload"] = {"limit": "x"}
    r = c.post("/api/v1/jobs", json={"jobs": jobs})
    assert r.status_code == 422, r.text
    assert "jobs[2]" in r.json()["error"] and "limit" in r.json()["error"]
    # a schema error in job 3: the field path names it
    jobs[2] = {"task": "primes.count", "payload": {"limit": 10}, "priority": "urgent"}
    r = c.post("/api/v1/jobs", json={"jobs": jobs})
    assert r.status_code == 422, r.text
    assert [f["field"] for f in r.json()["fields"]] == ["body.jobs.2.priority"]
    # an unknown task in job 3
    jobs[2] = {"task": "nope"}
    r = c.post("/api/v1/jobs", json={"jobs": jobs})
    assert r.status_code == 422 and "jobs[2]" in r.json()["error"]
    assert job_count(api) == before
    assert api.store.event_bounds() == events_before
    # an empty batch is refused, a good one stored whole
    assert c.post("/api/v1/jobs", json={"jobs": []}).status_code == 422
    jobs[2] = {"task": "primes.count", "payload": {"limit": 10}}
    r = c.post("/api/v1/jobs", json={"jobs": jobs})
    assert r.status_code == 201 and r.json()["count"] == 5
    assert job_count(api) == before + 5


def test_an_idempotency_key_returns_the_same_job_or_409(api: Api) -> None:
    c = api.client("submitter")
    request = {"task": "primes.count", "payload": {"limit": 100}, "idempotency_key": "order-17"}
    first = c.post("/api/v1/jobs", json=request)
    assert first.status_code == 201, first.text
    again = c.post("/api/v1/jobs", json=request)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    other = c.post("/api/v1/jobs", json={**request, "payload": {"limit": 101}})
    assert other.status_code == 409, other.text
    assert other.json()["job"] == first.json()["id"] and "order-17" in other.json()["error"]
    assert c.post("/api/v1/jobs", json={**request, "task": "bench.noop", "payload": {}}).status_code == 409
    assert job_count(api) == 1


def test_operator_mistakes_are_4xx(api: Api) -> None:
    c = api.client("admin")
    job = api.add_job()
    assert c.post(f"/api/v1/jobs/{job.id}/retry").status_code == 409  # queued: nothing to retry
    assert c.delete(f"/api/v1/jobs/{job.id}").status_code == 200
    assert c.delete(f"/api/v1/jobs/{job.id}").status_code == 409  # already cancelled
    assert c.delete("/api/v1/jobs/424242").status_code == 404
    assert c.post("/api/v1/jobs/424242/retry").status_code == 404
    r = c.post("/api/v1/dlq/requeue", json={"ids": [job.id]})
    assert r.status_code == 422 and "not dead" in r.json()["error"]
    assert c.post("/api/v1/dlq/requeue", json={"ids": [424242]}).status_code == 422
    assert c.post("/api/v1/dlq/requeue", json={}).status_code == 422
    assert c.delete("/api/v1/tokens/nope").status_code == 422
    r = c.post("/api/v1/workers/nobody/drain", params={"wait": 0})
    assert r.status_code == 404 and "nobody" in r.json()["error"]
    assert c.get("/api/v1/workers/nobody").status_code == 404
    assert c.post("/api/v1/tokens", json={"name": "x", "role": "root"}).status_code == 422
    assert c.post("/api/v1/tokens", json={"name": " ", "role": "viewer"}).status_code == 422


# -- text from jobs is data -------------------------------------------------------------------


def test_error_text_from_a_job_is_a_plain_json_string(api: Api) -> None:
    nasty = ["<script>alert('x')</script>", "cos\nsystem\n(S'echo pwned'\ntR.", "\x00\x1b[31mred\u2028end",
             '{"error": "nested"}']
    ids = []
    for text in nasty:
        job = api.add_job(retries=0)
        api.finish(job.id, Outcome.FAILED, State.DEAD, error=text)
        ids.append(job.id)
    ok = api.add_job()
    api.finish(ok.id, Outcome.SUCCEEDED, State.SUCCEEDED, result={"html": "<b>bold</b>", "pickle": "\x80\x04K\x01."})
    c = api.client("viewer")
    for job_id, text in zip(ids, nasty):
        r = c.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        body = json.loads(r.content)
        assert body["error"] == text and isinstance(body["error"], str)
        assert body["attempts"][0]["error"] == text
    body = c.get(f"/api/v1/jobs/{ok.id}").json()
    assert body["result"] == {"html": "<b>bold</b>", "pickle": "\x80\x04K\x01."}
    dead = c.get("/api/v1/dlq").json()["jobs"]
    assert sorted(j["error"] for j in dead) == sorted(nasty)


# -- the store on a bad day -------------------------------------------------------------------


def test_a_locked_store_is_503_with_retry_after(api: Api) -> None:
    c = api.client("submitter")
    job = api.add_job()
    lock = sqlite3.connect(api.store.path, timeout=0, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        begun = time.monotonic()
        r = c.post("/api/v1/jobs", json={"task": "bench.noop"})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "2"
        assert "unavailable" in r.json()["error"]
        assert time.monotonic() - begun < 5
        admin = api.client("admin")
        for method, path, body in [("DELETE", f"/api/v1/jobs/{job.id}", None),
                                   ("POST", "/api/v1/tokens", {"name": "t", "role": "viewer"})]:
            r = admin.request(method, path, json=body)
            assert r.status_code == 503, (method, path, r.text)
            assert r.headers["retry-after"] == "2"
        # reads go on (WAL): the readers do not need the write lock
        assert c.get("/api/v1/jobs").status_code == 200
        assert api.client().get("/readyz").status_code == 200
    finally:
        lock.rollback()
        lock.close()
    assert c.post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 201
    assert job_count(api) == 2


def test_a_store_that_is_no_longer_a_database_is_503(api: Api) -> None:
    """The file overwritten with garbage under the open store: reads fail for real."""
    c = api.client("viewer")
    assert c.get("/api/v1/jobs").status_code == 200
    assert api.client().get("/readyz").status_code == 200
    path = Path(api.store.path)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(b"this is not an SQLite database. " * (size // 32 + 1))
    for wal in (Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        if wal.exists():
            wal.write_bytes(b"\0garbage" * 64)
    r = api.client().get("/readyz")
    if r.status_code == 200:
        pytest.skip("SQLite still answered from the file overwritten under it; the broken-store readyz check "
                    "could not be made to fail")
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "2"
    assert r.json()["status"] == "unavailable"
    assert c.get("/api/v1/jobs").status_code == 503
    assert api.client("submitter").post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 503
    assert api.client().get("/healthz").status_code == 200  # the process itself is alive


# -- rate limit ---------------------------------------------------------------------------------


def test_the_rate_limit_is_per_token(api_factory: ApiFactory) -> None:
    api = api_factory({"api": {"rate_limit": 5, "rate_burst": 5}})
    c = api.client("viewer")
    begun = time.monotonic()
    answers = [c.get("/api/v1/whoami") for _ in range(10)]
    elapsed = time.monotonic() - begun
    statuses = [r.status_code for r in answers]
    assert statuses[:5] == [200] * 5  # the burst
    if elapsed < 0.2:  # as usual: not even one more request's worth has come back
        assert statuses[5:] == [429] * 5
    else:  # a slow machine: at most what 5/s gave back in the meantime
        assert statuses.count(200) <= 5 + int(elapsed * 5) + 1 and 429 in statuses
    for r in answers:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "rate limit" in r.json()["error"]
    assert api.client("operator").get("/api/v1/whoami").status_code == 200  # its own bucket
    assert api.client().get("/healthz").status_code == 200  # public: not limited
    time.sleep(0.25)  # 5/s: one request's worth after 0.2 s
    assert c.get("/api/v1/whoami").status_code == 200


def test_a_request_without_a_body_is_not_refused(small: Api) -> None:
    """POST routes with no body at all (retry, worker commands) pass the content-type check."""
    job = small.add_job()
    small.store.cancel(job.id, time.time())
    r = small.client("operator").post(f"/api/v1/jobs/{job.id}/retry")
    assert r.status_code == 200, r.text
    r = httpx.post(f"{small.url}/api/v1/jobs/{job.id}/retry", headers=small.headers("operator"),
                   content=b"", timeout=5)
    assert r.status_code == 409, r.text  # it is queued again: not 415


HUGE = 2**64  # beyond SQLite's 64-bit integers


@pytest.mark.parametrize("method, path, options", [
    pytest.param("GET", f"/api/v1/jobs/{HUGE}", {}, id="GET job"),
    pytest.param("DELETE", f"/api/v1/jobs/{HUGE}", {}, id="DELETE job"),
    pytest.param("POST", f"/api/v1/jobs/{HUGE}/retry", {}, id="POST retry"),
    pytest.param("GET", f"/api/v1/jobs/{-HUGE}", {}, id="GET job negative"),
    pytest.param("GET", "/api/v1/jobs", {"params": {"cursor": HUGE}}, id="GET jobs cursor"),
    pytest.param("GET", "/api/v1/jobs", {"params": {"ids": f"1,{HUGE}"}}, id="GET jobs ids"),
    pytest.param("GET", "/api/v1/dlq", {"params": {"cursor": HUGE}}, id="GET dlq cursor"),
    pytest.param("GET", "/api/v1/audit", {"params": {"cursor": HUGE}}, id="GET audit cursor"),
    pytest.param("POST", "/api/v1/dlq/requeue", {"json": {"ids": [HUGE]}}, id="POST requeue ids"),
])
def test_an_integer_too_large_for_the_store_is_4xx(api: Api, method: str, path: str, options: dict) -> None:
    """Integers beyond SQLite's 64 bits once reached the store and raised OverflowError: a 500."""
    r = httpx.request(method, api.url + path, headers=api.headers("admin"), timeout=10, **options)
    assert r.status_code == 422, r.text


def test_integers_at_the_store_limit_are_fine(api: Api) -> None:
    c = api.client("admin")
    top = 2**63 - 1
    assert c.get(f"/api/v1/jobs/{top}").status_code == 404
    assert c.get("/api/v1/jobs", params={"cursor": top}).status_code == 200
    assert c.get("/api/v1/jobs", params={"ids": f"1,{'9' * 18}"}).status_code == 200
    assert c.get("/api/v1/jobs", params={"ids": f"1,{top}"}).status_code == 422  # ids: 18 digits at most
    assert c.post("/api/v1/dlq/requeue", json={"ids": [top]}).status_code == 422


def test_errors_have_one_shape(api: Api) -> None:
    """Every error is {"error": message, "code": stable code, ...details}: the router's 404 and 405
    too, not FastAPI's {"detail": ...}."""
    c = api.client("viewer")
    for r, status, code in [(c.get("/api/v1/no-such-thing"), 404, "not_found"),
                            (c.put("/api/v1/jobs"), 405, "method_not_allowed"),
                            (c.get("/api/v1/jobs/1"), 404, "job_not_found"),
                            (api.client().get("/api/v1/jobs"), 401, "auth_refused"),
                            (c.post("/api/v1/jobs", json={}), 403, "auth_refused")]:
        assert r.status_code == status
        body = r.json()
        assert body["code"] == code and body["error"], r.text
        assert "detail" not in body
