"""Every route of the app against every kind of caller: no token, a bad one, and each role.

EXPECTED is the access policy, written down by hand; a route the app serves that is not in it fails
the suite, so a new route cannot ship without a decision on who may call it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_support import ROLES, WORKER, Api, running_api
from fastapi import FastAPI
from fastapi.routing import APIRoute

from clusterai.api.app import create_app
from clusterai.api.routes.system import PUBLIC_PATHS
from clusterai.config import ClusterConfig
from clusterai.core.artifacts import ENV_ROOT, ArtifactStore
from clusterai.core.model import Outcome, State
from clusterai.service.registry import RegistryService
from clusterai.service.submission import spec_factory
from clusterai.service.sweeps import SweepService
from clusterai.store.open import open_store

PUBLIC = frozenset({"/healthz", "/livez", "/readyz", "/login", "/logout", "/static/{name}", "/", "/api/v1/join/ca"})
ALL = frozenset(ROLES)
READERS = frozenset({"viewer", "operator", "admin"})  # read everything
OPERATORS = frozenset({"operator", "admin"})
ADMIN = frozenset({"admin"})
SUBMITTERS = frozenset({"submitter", "operator", "admin"})

# (method, path) -> the roles allowed; None: public (no token needed)
EXPECTED: dict[tuple[str, str], frozenset[str] | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/livez"): None,
    ("GET", "/metrics"): READERS,
    ("GET", "/api/v1/tasks"): ALL,
    ("GET", "/api/v1/whoami"): ALL,
    ("POST", "/api/v1/jobs"): SUBMITTERS,
    ("GET", "/api/v1/jobs"): ALL,  # a submitter sees only its own (test_ownership)
    ("GET", "/api/v1/jobs/{job_id}"): ALL,  # the job here is the submitter's own
    ("DELETE", "/api/v1/jobs/{job_id}"): OPERATORS,
    ("POST", "/api/v1/jobs/{job_id}/retry"): OPERATORS,
    ("GET", "/api/v1/dlq"): READERS,
    ("POST", "/api/v1/dlq/requeue"): OPERATORS,
    ("GET", "/api/v1/workers"): READERS,
    ("GET", "/api/v1/workers/{name}"): READERS,
    ("POST", "/api/v1/workers/{name}/drain"): OPERATORS,
    ("POST", "/api/v1/workers/{name}/undrain"): OPERATORS,
    ("POST", "/api/v1/workers/{name}/remove"): OPERATORS,
    ("POST", "/api/v1/workers/{name}/restart"): OPERATORS,
    ("GET", "/api/v1/cluster/status"): READERS,
    ("GET", "/api/v1/events"): ALL,  # a submitter gets only its own jobs' events
    ("GET", "/api/v1/tokens"): ADMIN,
    ("POST", "/api/v1/tokens"): ADMIN,
    ("DELETE", "/api/v1/tokens/{token_id}"): ADMIN,
    ("GET", "/api/v1/audit"): ADMIN,
    ("GET", "/openapi.json"): ALL,
    ("GET", "/docs"): ALL,
    ("GET", "/api/v1/cluster/history"): READERS,
    ("GET", "/api/v1/pipelines"): ALL,
    ("GET", "/api/v1/pipelines/runs"): ALL,  # a submitter sees only its own runs
    ("POST", "/api/v1/pipelines/runs"): SUBMITTERS,
    ("POST", "/api/v1/pipelines/{name}/runs"): SUBMITTERS,
    ("GET", "/api/v1/pipelines/runs/{run_id}"): ALL,  # the run here is the submitter's own
    ("GET", "/api/v1/pipelines/runs/{run_id}/outputs"): ALL,
    ("DELETE", "/api/v1/pipelines/runs/{run_id}"): OPERATORS,
    ("POST", "/api/v1/pipelines/runs/{run_id}/retry"): OPERATORS,
    ("GET", "/api/v1/counts"): READERS,
    ("GET", "/api/v1/autoscale"): READERS,
    ("PUT", "/api/v1/autoscale"): OPERATORS,
    # sweeps: a submitter starts, lists and reads its own (test_sweeps_api); the sweep here is the submitter's
    ("POST", "/api/v1/sweeps"): SUBMITTERS,
    ("GET", "/api/v1/sweeps"): ALL,
    ("GET", "/api/v1/sweeps/{sweep_id}"): ALL,
    ("GET", "/api/v1/sweeps/{sweep_id}/best"): ALL,
    ("GET", "/api/v1/sweeps/{sweep_id}/trials/{number}/metrics"): ALL,
    ("POST", "/api/v1/sweeps/{sweep_id}/cancel"): OPERATORS,  # the roles with `cancel`
    ("POST", "/api/v1/sweeps/{sweep_id}/resume"): OPERATORS,
    # the model registry: reading needs `read`, changing it `operate`
    ("GET", "/api/v1/registry"): READERS,
    ("POST", "/api/v1/registry/{name}"): OPERATORS,
    ("GET", "/api/v1/registry/{name}/versions"): READERS,
    ("GET", "/api/v1/registry/{name}/versions/{ref}"): READERS,
    ("GET", "/api/v1/registry/{name}/versions/{ref}/download"): READERS,
    ("PUT", "/api/v1/registry/{name}/aliases/{alias}"): OPERATORS,
    ("DELETE", "/api/v1/registry/{name}/aliases/{alias}"): OPERATORS,
    ("GET", "/api/v1/join/ca"): None,  # the CA is public: a joining machine checks it against its pin
    ("POST", "/api/v1/join"): ADMIN,  # and worker join tokens (tests/e2e/test_join.py)
    # the gateway: inference needs a token that may submit; the model lists any token
    **{("POST", path): SUBMITTERS for path in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
                                               "/api/show", "/v1/chat/completions", "/v1/completions",
                                               "/v1/embeddings", "/api/v1/generate")},
    **{("GET", path): ALL for path in ("/api/tags", "/api/ps", "/api/version", "/v1/models", "/api/v1/models")},
    # the model fleet changes what the backends hold: operators only (an inference token cannot pull or delete)
    **{("POST", path): OPERATORS for path in ("/api/pull", "/api/copy", "/api/create", "/api/v1/models/load",
                                              "/api/v1/models/unload")},
    ("DELETE", "/api/delete"): OPERATORS,
    # the dashboard: its page (a redirect to the login without a session), the login and its assets
    ("GET", "/"): None,
    ("GET", "/login"): None,
    ("POST", "/login"): None,
    ("POST", "/logout"): None,
    ("GET", "/static/{name}"): None,
}

# the schema and the reference page: any valid token (kept out of the schema itself)
DOCS = frozenset({"/openapi.json", "/docs"})


def route_table(app: FastAPI) -> tuple[set[tuple[str, str]], set[str]]:
    """((method, path) of every API route, paths of every other route). Recent FastAPI keeps
    included routers as lazy entries of app.routes; iter_route_contexts flattens them."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is flat
        contexts: list[Any] = list(app.routes)
    else:
        contexts = list(iter_route_contexts(app.routes))
    api_routes, others = set(), set()
    for ctx in contexts:
        original = getattr(ctx, "original_route", ctx)
        if isinstance(original, APIRoute):
            api_routes |= {(m, ctx.path) for m in ctx.methods}
        else:
            others.add(ctx.path)
    return api_routes, others


def _app_routes() -> set[tuple[str, str]]:
    store = open_store(":memory:")
    try:
        routes, _ = route_table(create_app(store, ClusterConfig()))
    finally:
        store.close()
    return routes


APP_ROUTES = sorted(_app_routes())


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1]}"


def test_every_route_has_a_decided_policy() -> None:
    store = open_store(":memory:")
    try:
        routes, others = route_table(create_app(store, ClusterConfig()))
    finally:
        store.close()
    undecided = routes - set(EXPECTED)
    assert not undecided, f"routes without an access policy in EXPECTED: {sorted(undecided)}"
    stale = set(EXPECTED) - routes
    assert not stale, f"EXPECTED names routes the app does not serve: {sorted(stale)}"
    assert not others, f"routes that are not API routes: {sorted(others)}"
    public = {path for (method, path), roles in EXPECTED.items() if roles is None}
    assert public == PUBLIC == PUBLIC_PATHS


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API for the whole module (the matrix makes a few hundred calls). Hundreds of them fail
    authentication on purpose, all from loopback: the throttle of failed authentications per address
    (tests/security/test_sec_api_auth.py) is off here, or it would answer 429 from the tenth on. The
    model registry's artifacts live in a folder of the module's own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_ROOT, str(tmp_path_factory.mktemp("matrix-artifacts")))
        with running_api(tmp_path_factory.mktemp("matrix"), {"api": {"auth_failures": 0}}) as api:
            api.add_worker()
            yield api


MODEL = "matrix-model"
SWEEP = {"objective": "train.sgd_digits", "space": {"alpha": {"loguniform": [1e-5, 0.1]}}, "trials": 2,
         "sampler": "random"}


def add_sweep(api: Api, *, cancelled: bool = False) -> int:
    """A sweep of the submitter's with one trial that reported a step (the API runs no sweep driver)."""
    sweeps = SweepService(api.store, api.config)
    sweep_id = int(sweeps.start(SWEEP, owner="submitter")["id"])
    make = spec_factory(api.config, "train.sgd_digits", owner="submitter")
    api.store.add_trials(sweep_id, [(0, {"alpha": 0.01}, make({"alpha": 0.01}))], time.time())
    api.store.add_trial_metrics([(sweep_id, 0, 1, {"accuracy": 0.5}, time.time())])
    if cancelled:
        sweeps.cancel(sweep_id)
    return sweep_id


def add_model_version(api: Api) -> int:
    """A new version of MODEL whose artifact is really in the artifact store (downloads check it)."""
    ref = ArtifactStore().put_bytes("matrix", f"model-{time.monotonic_ns()}.bin", b"weights")
    return RegistryService(api.store).register(MODEL, ref, metrics={"accuracy": 0.5})["version"]


def fill(api: Api, method: str, path: str, role: str | None) -> dict[str, Any]:
    """A request that would succeed for a role allowed to make it: real ids, valid bodies, and a
    fresh object where the call changes one."""
    params: dict[str, Any] = {}
    body: Any = None
    if "{job_id}" in path:
        if method == "GET":
            job = api.add_job(owner="submitter")  # the submitter's own job: readable by every role
        elif path.endswith("/retry"):
            job = api.add_job(owner="submitter")
            api.store.cancel(job.id, time.time())  # retry needs a finished job
        else:
            job = api.add_job(owner="submitter")
        path = path.replace("{job_id}", str(job.id))
    if "{run_id}" in path:
        run_id = api.store.create_run("p", {"name": "p", "stages": [{"name": "a", "task": "bench.noop"}]}, {},
                                      time.time(), owner="submitter")
        if path.endswith("/retry"):
            api.store.update_run(run_id, "failed", {}, time.time())  # retry needs a finished run
        path = path.replace("{run_id}", str(run_id))
    if path == "/api/v1/pipelines/{name}/runs":
        path, body = "/api/v1/pipelines/video-analysis/runs", {"input": {"videos": []}}
    elif path == "/api/v1/pipelines/runs" and method == "POST":
        body = {"pipeline": {"stages": [{"name": "a", "task": "bench.noop"}]}}
    if method == "POST" and (path.startswith(("/api/generate", "/api/chat", "/api/embed", "/api/show", "/v1/"))
                             or path == "/api/v1/generate"):
        body = {"model": "none-configured", "prompt": "x"}  # no backend here: a 404 for the allowed roles
    if "{token_id}" in path:
        _, token_id = api.add_token("viewer")
        path = path.replace("{token_id}", token_id)
    if "{sweep_id}" in path:
        sweep_id = add_sweep(api, cancelled=path.endswith("/resume"))  # cancel needs a running one
        path = path.replace("{sweep_id}", str(sweep_id)).replace("{number}", "0")
    elif (method, path) == ("POST", "/api/v1/sweeps"):
        body = SWEEP
    if path.startswith("/api/v1/registry/{name}"):
        version = add_model_version(api)
        path = path.replace("{name}", MODEL).replace("{ref}", str(version))
        if "{alias}" in path:
            api.store.set_model_alias(MODEL, "matrix-alias", version, time.time())  # DELETE removes it
            path = path.replace("{alias}", "matrix-alias")
            body = {"version": version} if method == "PUT" else None
        elif method == "POST":
            ref = ArtifactStore().put_bytes("matrix", f"made-{time.monotonic_ns()}.bin", b"more weights")
            body = {"artifact": ref, "metrics": {"accuracy": 0.75}, "params": {"alpha": 0.01}}
    if path == "/static/{name}":
        path = "/static/app.js"
    if "{name}" in path:
        path = path.replace("{name}", WORKER)
        if method == "POST":
            params["wait"] = 0
    if (method, path) == ("POST", "/api/v1/jobs"):
        body = {"task": "bench.noop"}
    elif (method, path) == ("POST", "/api/v1/tokens"):
        body = {"name": "made-by-matrix", "role": "viewer", "expires_in": 60}
    elif (method, path) == ("POST", "/api/v1/join"):
        body = {"node": "matrix-node"}
    elif (method, path) == ("PUT", "/api/v1/autoscale"):
        body = {"enabled": False}
    elif path in ("/api/pull", "/api/delete", "/api/create", "/api/v1/models/load", "/api/v1/models/unload"):
        body = {"model": "matrix-model"}
    elif path == "/api/copy":
        body = {"source": "matrix-model", "destination": "matrix-copy"}
    elif (method, path) == ("POST", "/login"):
        body = {"token": api.tokens["viewer"]}
    elif (method, path) == ("POST", "/api/v1/dlq/requeue"):
        dead = api.add_job(owner="submitter")
        api.finish(dead.id, Outcome.FAILED, State.DEAD, error="boom")
        body = {"ids": [dead.id]}
    return {"method": method, "url": path, "params": params, "json": body}


def call(client: httpx.Client, request: dict[str, Any]) -> int:
    """The status of the request; an event stream is closed as soon as its status is known."""
    with client.stream(**request) as response:
        return response.status_code


@pytest.mark.parametrize("route", APP_ROUTES, ids=route_id)
def test_no_bad_or_missing_token_gets_in(served: Api, route: tuple[str, str]) -> None:
    method, path = route
    revoked_text, _ = served.add_token("admin", "revoked-admin", revoked_at=time.time() - 1)
    expired_text, _ = served.add_token("admin", "expired-admin", created_at=time.time() - 120,
                                       expires_at=time.time() - 60)
    _, admin_id, _ = served.tokens["admin"].split("_", 2)
    garbage = {
        "none": None,
        "bogus": "cai_000000000000_notasecret",
        "not-ours": "Bearer-something-else",
        "right id, wrong secret": f"cai_{admin_id}_{'x' * 43}",
        "revoked": revoked_text,
        "expired": expired_text,
    }
    client = served.client()
    for what, token in garbage.items():
        request = fill(served, method, path, None)
        request["headers"] = {"Authorization": f"Bearer {token}"} if token else {}
        status = call(client, request)
        if path in PUBLIC:  # "/" sends a visitor without a session to the login page
            # this API enrolls no machines (no CA key): the CA route says so, to anyone
            want = {"/": 303, "/api/v1/join/ca": 404}.get(path, 200)
            assert status == want, f"{method} {path} with {what} token: {status}, want {want} (public)"
        else:
            assert status == 401, f"{method} {path} with {what} token: {status}, want 401"


@pytest.mark.parametrize("route", APP_ROUTES, ids=route_id)
def test_role_matrix(served: Api, route: tuple[str, str]) -> None:
    method, path = route
    assert route in EXPECTED, f"{method} {path} has no access policy in EXPECTED"
    allowed = EXPECTED[route]
    client = served.client()
    for role in ROLES:
        request = fill(served, method, path, role)
        request["headers"] = served.headers(role)
        status = call(client, request)
        if allowed is None or role in allowed:
            assert status not in (401, 403), f"{role} {method} {path}: {status}, but the role is allowed"
            assert status < 500, f"{role} {method} {path}: {status}"
        else:
            assert status == 403, f"{role} {method} {path}: {status}, want 403"


def test_a_token_revoked_through_the_api_stops_at_once(served: Api) -> None:
    text, token_id = served.add_token("operator", "short-lived")
    c = served.client(None, headers={"Authorization": f"Bearer {text}"})
    assert c.get("/api/v1/whoami").status_code == 200  # now cached by the verifier
    assert served.client("admin").delete(f"/api/v1/tokens/{token_id}").status_code == 200
    assert c.get("/api/v1/whoami").status_code == 401


def test_the_session_cookie_reads_but_changes_only_with_the_csrf_header(served: Api) -> None:
    """A page elsewhere can make a browser send the cookie, not a custom header: a change made with
    the cookie alone (a forged request) is refused."""
    token = served.tokens["operator"]
    browser = served.client(None, cookies={"clusterai_session": token})
    assert browser.get("/api/v1/whoami").json()["role"] == "operator"
    forged = browser.post("/api/v1/jobs", json={"task": "bench.noop"})
    assert forged.status_code == 403 and "x-clusterai-request" in forged.json()["error"]
    made = browser.post("/api/v1/jobs", json={"task": "bench.noop"}, headers={"X-Clusterai-Request": "1"})
    assert made.status_code == 201
    assert served.client(None, cookies={"clusterai_session": "cai_x_y"}).get("/api/v1/whoami").status_code == 401
    assert served.client().get("/api/v1/whoami", params={"token": token}).status_code == 401


def test_401_says_how_to_authenticate(served: Api) -> None:
    r = served.client().get("/api/v1/jobs")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["error"]


def test_docs_need_a_token_and_the_schema_declares_bearer_auth(served: Api) -> None:
    anonymous = served.client()
    for path in sorted(DOCS) + ["/redoc", "/docs/oauth2-redirect"]:
        assert anonymous.get(path).status_code in (401, 404), path
    viewer = served.client("viewer")
    page = viewer.get("/docs")
    assert page.status_code == 200 and "/api/v1/jobs" in page.text and "<script" not in page.text
    schema = viewer.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"bearer": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []


def test_unknown_paths_are_404(served: Api) -> None:
    r = served.client().get("/api/v1/nothing-here")
    assert r.status_code == 404


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/tokens", "/api/v1/dlq/requeue", "/api/v1/sweeps",
                                  "/api/v1/registry/digits"])
def test_a_malformed_body_without_a_token_is_401(served: Api, path: str) -> None:
    """The token is checked before the body is parsed (FastAPI parses a route's body model before
    its dependencies run, so these routes read their bodies themselves)."""
    r = served.client().post(path, content=b'{"name":', headers={"Content-Type": "application/json"})
    assert r.status_code == 401, r.text
