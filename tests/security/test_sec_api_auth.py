"""Guessing tokens (bearer, session cookie, the dashboard's sign-in, the gateway's routes) from one
client address is throttled and audited without ever writing the secret; the inference-only
credential of batch workers is one per worker, rate-limited, good only while its worker is in the
registry, and made anew by each start of the API."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from api_support import Api, ApiFactory, running_api

from clusterai.api.server import ApiServer
from clusterai.api.throttle import ACTOR, AuthThrottle
from clusterai.config import parse_config
from clusterai.store.open import open_store

LIMIT = 10
JSON = {"Content-Type": "application/json"}


def from_address(api: Api, address: str, **options: Any) -> httpx.Client:
    """A client whose connections come from another loopback address (Linux routes all of 127/8 to lo)."""
    return api.client(transport=httpx.HTTPTransport(local_address=address), **options)


def failures_in_audit(api: Api) -> list[dict[str, Any]]:
    admin = from_address(api, "127.0.0.2", headers=api.headers("admin"))
    entries = admin.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
    return [e for e in entries if e["actor"] == ACTOR]


def test_a_burst_of_bad_tokens_from_one_address_is_throttled_on_every_way_in(api: Api,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, admin_id, _ = api.tokens["admin"].split("_", 2)
    guesses = [f"cai_{admin_id}_{secrets.token_urlsafe(32)}" for _ in range(4)]  # the right id, wrong secrets
    pasted = "cai_" + secrets.token_urlsafe(40)  # a malformed one: nothing of it may be kept
    anonymous = api.client()
    # ten failures, by every way a token comes in
    attempts = [
        lambda: anonymous.get("/api/v1/jobs", headers={"Authorization": f"Bearer {guesses[0]}"}),
        lambda: anonymous.get("/api/v1/whoami", headers={"Authorization": f"Bearer {pasted}"}),
        lambda: api.client(None, cookies={"clusterai_session": guesses[1]}).get("/api/v1/whoami"),
        lambda: api.client(None, cookies={"clusterai_session": guesses[1]}).get("/"),
        lambda: anonymous.post("/login", json={"token": guesses[2]}),
        lambda: anonymous.post("/login", json={"token": pasted}),
        lambda: anonymous.post("/api/generate", json={"model": "m", "prompt": "x"},
                               headers={"Authorization": f"Bearer {guesses[3]}"}),
        lambda: anonymous.post("/v1/chat/completions", json={"model": "m", "messages": []},
                               headers={"Authorization": f"Bearer {guesses[3]}"}),
        lambda: anonymous.get("/api/tags", headers={"Authorization": f"Bearer {guesses[0]}"}),
        lambda: anonymous.get("/v1/models", headers={"Authorization": f"Bearer {guesses[0]}"}),
    ]
    assert len(attempts) == LIMIT
    statuses = [attempt().status_code for attempt in attempts]
    assert statuses == [401, 401, 401, 303, 401, 401, 401, 401, 401, 401]  # "/" sends a bad session to the login
    # from now on every way in is refused for this address, a valid token included
    refused = [
        anonymous.get("/api/v1/jobs", headers={"Authorization": f"Bearer {guesses[0]}"}),
        api.client("admin").get("/api/v1/whoami"),
        api.client(None, cookies={"clusterai_session": api.tokens["viewer"]}).get("/api/v1/whoami"),
        anonymous.post("/login", json={"token": api.tokens["viewer"]}),
        api.client("submitter").post("/api/generate", json={"model": "m", "prompt": "x"}),
        api.client("submitter").post("/api/show", json={"model": "m"}),
        api.client("viewer").get("/api/tags"),
        api.client("viewer").get("/api/v1/models"),
    ]
    for r in refused:
        assert r.status_code == 429, (r.request.url, r.text)
        assert 1 <= int(r.headers["retry-after"]) <= 60
    assert refused[4].json()["error"].startswith("too many failed authentications")  # in Ollama's shape
    # another address is not throttled
    other = from_address(api, "127.0.0.3", headers=api.headers("viewer"))
    assert other.get("/api/v1/whoami").status_code == 200

    records = failures_in_audit(api)
    assert [(e["status"], e["target"]) for e in records] == [(429, "client 127.0.0.1"), (401, "client 127.0.0.1")]
    tripped, first = records
    assert first["action"] == "GET /api/v1/jobs" and admin_id in first["detail"]
    assert f"{LIMIT} failed authentications" in tripped["detail"] and admin_id in tripped["detail"]
    everything = json.dumps(records) + caplog.text
    for secret in [g.split("_", 2)[2] for g in guesses] + [pasted, pasted[4:]]:
        assert secret not in everything


def test_a_flood_of_bad_tokens_writes_a_bounded_audit(api: Api) -> None:
    anonymous = api.client()
    statuses = [anonymous.get("/api/v1/whoami", headers={"Authorization": f"Bearer cai_{i:012x}_x"}).status_code
                for i in range(60)]
    assert statuses == [401] * LIMIT + [429] * 50
    assert len(failures_in_audit(api)) == 2


def test_the_audit_of_failures_is_capped_across_addresses() -> None:
    throttle = AuthThrottle(LIMIT, 60.0, max_addresses=1000, audit_per_window=100)
    written = [r for i in range(5000) for r in throttle.failed(f"10.0.{i // 250}.{i % 250}", None, "GET /", now=1.0)]
    assert len(written) == 100 and len(throttle._addresses) == 1000  # memory is bounded too
    later = throttle.failed("10.9.9.9", None, "GET /", now=62.0)
    assert len(later) == 2 and "4900 more failed-authentication records left out" in later[0].detail


def test_a_throttled_address_may_try_again_after_the_window(api_factory: ApiFactory) -> None:
    api = api_factory({"api": {"auth_failures": 3, "auth_failure_window": 1.0}})
    anonymous = api.client()
    assert [anonymous.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"}).status_code
            for _ in range(4)] == [401, 401, 401, 429]
    import time

    time.sleep(1.1)
    assert api.client("viewer").get("/api/v1/whoami").status_code == 200


# -- the inference-only credential of batch workers -----------------------------------------------


def slot(address: str, status: str = "ready") -> SimpleNamespace:
    return SimpleNamespace(address=address, name=address.rsplit(":", 1)[-1], status=status, model_server=None)


WORKER_A, WORKER_B = "tcp://127.0.0.1:40101", "tcp://10.0.0.7:40102"


def test_a_worker_credential_is_good_only_for_a_worker_in_the_registry(tmp_path: Path) -> None:
    registry = [slot(WORKER_A), slot(WORKER_B)]
    with running_api(tmp_path, {"api": {"rate_limit": 0.01, "rate_burst": 3}}, worker_slots=lambda: registry) as api:
        credentials = api.app.state.ctx.credentials
        mine = credentials.credential_for(WORKER_A)
        assert mine != credentials.credential_for(WORKER_B)

        def infer(credential: str, path: str = "/api/embed") -> httpx.Response:
            return api.client().post(path, json={"model": "m", "input": "x"},
                                     headers={"Authorization": f"Bearer {credential}"})

        assert infer(mine).status_code == 404  # let in: no backend has model m here
        assert api.client(headers={"Authorization": f"Bearer {mine}"}).get("/api/v1/jobs").status_code == 401
        unknown = infer(credentials.credential_for("tcp://127.0.0.1:49999"))  # never in the registry
        assert unknown.status_code == 401 and "worker credential" in unknown.json()["error"]
        forged = mine.rsplit(".", 1)[0] + "." + "0" * 64
        assert infer(forged).status_code == 401
        registry[1] = slot(WORKER_B, status="gone")  # that machine left (or was put out of the cluster)
        assert infer(credentials.credential_for(WORKER_B)).status_code == 401
        # rate-limited like a token, in a bucket of its own: burst 3, then 429
        assert infer(mine, "/v1/embeddings").status_code == 404
        assert infer(mine).status_code == 404
        limited = infer(mine)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert api.client("submitter").post("/api/embed", json={"model": "m", "input": "x"}).status_code == 404


def test_each_start_of_the_api_makes_new_credentials_and_refuses_the_old(tmp_path: Path) -> None:
    registry = [slot(WORKER_A)]
    config = parse_config({"store": f"sqlite:///{tmp_path / 's.db'}"})
    store = open_store(tmp_path / "s.db")
    try:
        first, second = ApiServer(config, store, port=0), ApiServer(config, store, port=0)
        assert first.credential_for(WORKER_A) != second.credential_for(WORKER_A)
    finally:
        store.close()
    with running_api(tmp_path / "one", worker_slots=lambda: registry) as one:
        old = one.app.state.ctx.credentials.credential_for(WORKER_A)
    with running_api(tmp_path / "two", worker_slots=lambda: registry) as two:
        new = two.app.state.ctx.credentials.credential_for(WORKER_A)
        assert new != old
        c = two.client()
        body = {"model": "m", "prompt": "x"}
        assert c.post("/api/generate", json=body, headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert c.post("/api/generate", json=body, headers={"Authorization": f"Bearer {new}"}).status_code == 404
