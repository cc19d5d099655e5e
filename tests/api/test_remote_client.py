"""`clusterai.connect(url=..., token=...)`: the Python client over the REST API does what the local
client does, and turns HTTP errors back into clusterai's own errors."""

from __future__ import annotations

import threading
import time

import pytest
from api_support import Api

import clusterai
from clusterai.core.model import Outcome, State
from clusterai.errors import (
    AuthRefused,
    BadInput,
    IdempotencyConflict,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    ResultTimeout,
    UnknownTaskError,
    Unreachable,
)
from clusterai.sdk.remote import RemoteClient


def remote(api: Api, who: str = "admin") -> RemoteClient:
    client = clusterai.connect(url=api.url, token=api.tokens[who])
    assert isinstance(client, RemoteClient)
    return client


def test_submit_read_list_cancel_retry_over_http(api: Api) -> None:
    with remote(api, "operator") as c:
        job = c.submit("primes.count", {"limit": 100}, priority="high", queue="q1", labels={})
        assert (job.state, job.priority.name, job.queue, job.owner) == (State.QUEUED, "HIGH", "q1", "operator")
        many = c.submit_many("primes.count", [{"limit": n} for n in range(2, 2502)])
        assert len(many) == 2500 and [j.payload["limit"] for j in many[:3]] == [2, 3, 4]
        assert [j.id for j in c.get_many([many[5].id, job.id])] == [many[5].id, job.id]
        assert c.get(job).id == job.id and c.counts()["queued"] == 2501
        page = c.list(state="queued", after_id=job.id, limit=10)
        assert [j.id for j in page] == [j.id for j in many[:10]]
        assert c.cancel(job).state is State.CANCELLED
        with pytest.raises(InvalidTransition):
            c.cancel(job)
        assert c.retry(job).state is State.QUEUED
        status = c.status()
        assert status["jobs"]["queued"] == 2501 and status["queue_depth"] == 2501
        assert "primes.count" in {t["name"] for t in c.tasks()}


def test_result_waits_for_the_job_and_raises_when_it_fails(api: Api) -> None:
    with remote(api) as c:
        good = c.submit("bench.noop")
        bad = c.submit("bench.noop")
        timer = threading.Timer(0.3, lambda: api.finish(good.id, Outcome.SUCCEEDED, State.SUCCEEDED, result={"ok": 1}))
        timer.start()
        started = time.monotonic()
        assert c.result(good, timeout=10) == {"ok": 1}
        assert 0.25 < time.monotonic() - started < 5
        api.finish(bad.id, Outcome.FAILED, State.DEAD, error="ValueError: <script>alert(1)</script>")
        with pytest.raises(JobFailed, match="<script>"):
            c.result(bad, timeout=5)
        with pytest.raises(ResultTimeout):
            c.wait([c.submit("bench.noop")], timeout=0.3)
        assert [j.id for j in c.dead_letters()] == [bad.id]
        assert c.requeue_dead(everything=True) == [bad.id]


def test_http_errors_become_clusterai_errors(api: Api) -> None:
    with remote(api) as c:
        with pytest.raises(UnknownTaskError) as unknown:
            c.submit("no.such.task")
        assert "primes.count" in unknown.value.known
        with pytest.raises(BadInput, match="limit"):
            c.submit("primes.count", {"limit": "many"})
        with pytest.raises(JobNotFound):
            c.get(10**9)
        first = c.submit("bench.noop", idempotency_key="once")
        assert c.submit("bench.noop", idempotency_key="once").id == first.id
        with pytest.raises(IdempotencyConflict) as conflict:
            c.submit("primes.count", {"limit": 3}, idempotency_key="once")
        assert (conflict.value.key, conflict.value.job_id) == ("once", first.id)
    with remote(api, "viewer") as viewer, pytest.raises(AuthRefused) as refused:
        viewer.submit("bench.noop")
    assert refused.value.status == 403
    with pytest.raises(AuthRefused) as refused:
        RemoteClient(api.url, "cai_000000000000_wrong").counts()
    assert refused.value.status == 401
    with pytest.raises(Unreachable, match="cannot reach"):
        RemoteClient("http://127.0.0.1:9", "t").counts()  # nothing listens on the discard port
    with pytest.raises(BadInput):
        RemoteClient("ftp://example", "t")


def test_tokens_and_audit_over_http(api: Api) -> None:
    with remote(api) as admin:
        made = admin.create_token("ci", "submitter", expires_in=60)
        assert made["token"].startswith("cai_") and made["role"] == "submitter"
        with RemoteClient(api.url, made["token"]) as ci:
            assert ci.submit("bench.noop").owner == "ci"
        admin.revoke_token(made["id"])
        with RemoteClient(api.url, made["token"]) as ci, pytest.raises(AuthRefused, match="revoked"):
            ci.submit("bench.noop")
        assert any(t["id"] == made["id"] and t["revoked_at"] for t in admin.list_tokens())
        actions = [e["action"] for e in admin.audit(actor="admin")]
        assert f"DELETE /api/v1/tokens/{made['id']}" in actions and "POST /api/v1/tokens" in actions


def test_connect_reads_the_url_and_token_from_the_environment(api: Api, monkeypatch) -> None:
    monkeypatch.setenv("CLUSTERAI_URL", api.url)
    monkeypatch.setenv("CLUSTERAI_TOKEN", api.tokens["viewer"])
    with clusterai.connect() as c:
        assert isinstance(c, RemoteClient) and c.counts()["queued"] == 0
