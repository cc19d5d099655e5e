"""The audit log: every mutating call made with a valid token, with who, what and how it ended;
reads are not in it."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from typing import Any

import pytest
from api_support import WORKER, WORKER_ADDRESS, Api, ApiFactory

from clusterai.core.model import Outcome, State


def audit(api: Api, expect: int | None = None, **params: Any) -> list[dict[str, Any]]:
    """The audit log, newest first. With `expect`, waits (a little) for that many rows: the API
    writes a call's row after its answer has gone (see the report), except the submit's."""
    deadline = time.monotonic() + 5
    while True:
        r = api.client("admin").get("/api/v1/audit", params=params)
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["entries"]
        if expect is None or len(entries) >= expect or time.monotonic() > deadline:
            return entries
        time.sleep(0.01)


def test_every_mutating_call_is_audited(api: Api) -> None:
    api.add_worker()
    submitter, operator, admin = api.client("submitter"), api.client("operator"), api.client("admin")
    r = submitter.post("/api/v1/jobs", json={"task": "primes.count", "payload": {"limit": 100}})
    assert r.status_code == 201
    job = r.json()["id"]
    batch = {"jobs": [{"task": "bench.noop"}, {"task": "primes.count", "payload": {"limit": 5}}]}
    assert submitter.post("/api/v1/jobs", json=batch).status_code == 201
    assert submitter.post("/api/v1/jobs", json={"task": "nope"}).status_code == 422
    assert operator.delete(f"/api/v1/jobs/{job}").status_code == 200
    assert operator.post(f"/api/v1/jobs/{job}/retry").status_code == 200
    dead = api.add_job(retries=0)
    api.finish(dead.id, Outcome.FAILED, State.DEAD, error="boom")
    assert operator.post("/api/v1/dlq/requeue", json={"ids": [dead.id]}).status_code == 200
    assert operator.post(f"/api/v1/workers/{WORKER}/drain", params={"wait": 0}).status_code == 202
    r = admin.post("/api/v1/tokens", json={"name": "ci", "role": "submitter"})
    assert r.status_code == 201
    token_id = r.json()["id"]
    assert admin.delete(f"/api/v1/tokens/{token_id}").status_code == 200
    assert submitter.delete(f"/api/v1/jobs/{job}").status_code == 403  # refused: audited too
    assert api.client("viewer").post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 403

    entries = audit(api, expect=11)
    got = [(e["actor"], e["role"], e["action"], e["status"], e["target"]) for e in reversed(entries)]
    # as a multiset: the rows written after the answer may commit out of call order
    assert Counter(got) == Counter([
        ("submitter", "submitter", "POST /api/v1/jobs", 201, None),
        ("submitter", "submitter", "POST /api/v1/jobs", 201, None),
        ("submitter", "submitter", "POST /api/v1/jobs", 422, None),
        ("operator", "operator", f"DELETE /api/v1/jobs/{job}", 200, f"job {job}"),
        ("operator", "operator", f"POST /api/v1/jobs/{job}/retry", 200, f"job {job}"),
        ("operator", "operator", "POST /api/v1/dlq/requeue", 200, "1 dead letters"),
        ("operator", "operator", f"POST /api/v1/workers/{WORKER}/drain", 202, f"worker {WORKER} ({WORKER_ADDRESS})"),
        ("admin", "admin", "POST /api/v1/tokens", 201, f"token {token_id} (ci, submitter)"),
        ("admin", "admin", f"DELETE /api/v1/tokens/{token_id}", 200, f"token {token_id}"),
        ("submitter", "submitter", f"DELETE /api/v1/jobs/{job}", 403, None),
        ("viewer", "viewer", "POST /api/v1/tokens", 403, None),
    ])
    submits = [e for e in reversed(entries) if e["action"] == "POST /api/v1/jobs" and e["status"] == 201]
    assert [e["detail"] for e in submits] == ["1 job(s) of primes.count", "2 job(s) of bench.noop, primes.count"]
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert all(abs(e["at"] - time.time()) < 60 for e in entries)
    # the token text is never in the log
    assert "cai_" not in json.dumps(entries)


def test_reads_and_anonymous_calls_are_not_audited(api: Api) -> None:
    job = api.add_job()
    viewer = api.client("viewer")
    for path in ("/api/v1/jobs", f"/api/v1/jobs/{job.id}", "/api/v1/workers", "/api/v1/cluster/status",
                 "/api/v1/dlq", "/api/v1/tasks", "/api/v1/whoami", "/metrics"):
        assert viewer.get(path).status_code == 200, path
    assert api.client("admin").get("/api/v1/tokens").status_code == 200
    assert api.client("admin").get("/api/v1/audit").status_code == 200
    # no token: nobody to name, nothing written
    assert api.client().post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 401
    # a bad one: not as someone's call but as a failed authentication from the client's address,
    # written before its answer (tests/security/test_sec_api_auth.py has the rest)
    bad = api.client(None, headers={"Authorization": "Bearer cai_nope_nope"})
    assert bad.delete(f"/api/v1/jobs/{job.id}").status_code == 401
    # a last call that is audited, after the answer like the others would be: once its row is
    # there, theirs would have been too
    assert viewer.delete(f"/api/v1/jobs/{job.id}").status_code == 403
    entries = audit(api, expect=2)
    assert [(e["actor"], e["status"]) for e in entries] == [("viewer", 403), ("(unauthenticated)", 401)]
    assert entries[1]["target"] == "client 127.0.0.1" and "nope" not in json.dumps(entries[1])


def test_the_submit_row_commits_with_the_jobs(api: Api) -> None:
    """Written by the store in the submit's own transaction: one row, with the jobs' commit time."""
    r = api.client("submitter").post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"}] * 3})
    ids = r.json()["ids"]
    [entry] = audit(api)
    assert entry["detail"] == "3 job(s) of bench.noop"
    assert {api.store.get(i).created_at for i in ids} == {entry["at"]}


@pytest.mark.usefixtures("quiet_server_errors")
def test_no_job_is_stored_when_its_audit_row_cannot_be(api: Api) -> None:
    """The store refuses the submit's audit row (a trigger): the jobs roll back with it."""
    db = sqlite3.connect(api.store.path, isolation_level=None)
    try:
        db.execute("CREATE TRIGGER refuse_submit_audit BEFORE INSERT ON audit WHEN NEW.detail LIKE '%job(s) of%'"
                   " BEGIN SELECT RAISE(ABORT, 'audit refused by the test'); END")
    finally:
        db.close()
    events = api.store.event_bounds()
    r = api.client("submitter").post("/api/v1/jobs", json={"task": "bench.noop"})
    assert r.status_code == 500, r.text  # a constraint failure is a bug, and stays loud
    assert "audit refused" not in r.text  # the reason is in the server log, not the answer
    assert sum(api.store.job_counts().values()) == 0
    assert api.store.event_bounds() == events
    [entry] = audit(api, expect=1)
    assert (entry["action"], entry["status"], entry["detail"]) == ("POST /api/v1/jobs", 500, None)


def test_a_refused_body_is_audited_with_the_status_sent(api_factory: ApiFactory) -> None:
    api = api_factory({"api": {"max_body_bytes": 1024}})
    body = json.dumps({"task": "bench.noop", "idempotency_key": "k" * 2000}).encode()

    def chunked() -> Any:
        yield body[:500]
        yield body[500:]

    r = api.client("submitter").post("/api/v1/jobs", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    [entry] = audit(api, expect=1)
    assert (entry["actor"], entry["status"]) == ("submitter", 413)


def test_the_audit_log_filters_and_pages(api: Api) -> None:
    for who in ("submitter", "other", "submitter", "operator", "submitter"):
        assert api.client(who).post("/api/v1/jobs", json={"task": "bench.noop"}).status_code == 201
    assert [e["actor"] for e in audit(api, actor="submitter")] == ["submitter"] * 3
    assert audit(api, since=time.time() + 60) == []
    r = api.client("admin").get("/api/v1/audit", params={"limit": 2})
    page = r.json()
    assert len(page["entries"]) == 2 and page["next_cursor"] == page["entries"][-1]["id"]
    rest = audit(api, cursor=page["next_cursor"])
    assert [e["actor"] for e in page["entries"] + rest] == ["submitter", "operator", "submitter", "other", "submitter"]
