"""Sweeps and the model registry over HTTP. The API runs no sweep driver (the coordinator does): a
started sweep stays running with no trials, so the trials here are made and ended on the store, as
the driver would."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, ApiFactory

from clusterai.core.artifacts import ENV_ROOT, ArtifactCorrupt, ArtifactStore
from clusterai.core.model import State
from clusterai.service.submission import spec_factory

OBJECTIVE = "train.sgd_digits"
SPACE = {"alpha": {"loguniform": [1e-6, 0.1]}, "penalty": ["l1", "l2"]}
GOOD = {"objective": OBJECTIVE, "space": SPACE, "trials": 4, "sampler": "random", "metric": "accuracy"}


def start(api: Api, who: str = "submitter", **changes: Any) -> dict[str, Any]:
    r = api.client(who).post("/api/v1/sweeps", json={**GOOD, **changes})
    assert r.status_code == 201, r.text
    return r.json()


def listed(api: Api, who: str, **params: Any) -> list[int]:
    r = api.client(who).get("/api/v1/sweeps", params=params)
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()["sweeps"]]


def add_trials(api: Api, sweep_id: int, params: list[dict[str, Any]], owner: str = "submitter") -> list[int]:
    """Trials 0.. of the sweep, each with its queued job, made as the driver makes them; their job ids."""
    make = spec_factory(api.config, OBJECTIVE, owner=owner)
    jobs = api.store.add_trials(sweep_id, [(n, p, make(p)) for n, p in enumerate(params)], time.time())
    assert len(jobs) == len(params)
    return [j.id for j in jobs]


# -- starting -----------------------------------------------------------------------------------


def test_a_valid_sweep_starts_running_and_is_the_callers(api: Api) -> None:
    sweep = start(api)
    assert sweep["id"] >= 1
    assert sweep["state"] == "running"
    assert sweep["owner"] == "submitter"
    assert sweep["objective"] == OBJECTIVE and sweep["metric"] == "accuracy" and sweep["mode"] == "max"
    assert sweep["trials_wanted"] == 4 and sweep["sampler"] == "random"
    assert sweep["spec"]["space"] == {"alpha": {"loguniform": [1e-6, 0.1]}, "penalty": {"choice": ["l1", "l2"]}}
    assert sweep["trials"] == [] and sweep["best"] is None
    assert sweep["counts"]["done"] == 0
    assert listed(api, "submitter") == [sweep["id"]]
    by_operator = start(api, "operator", name="tuned")
    assert by_operator["owner"] == "operator" and by_operator["name"] == "tuned"
    shown = api.client("viewer").get(f"/api/v1/sweeps/{sweep['id']}").json()
    assert shown["id"] == sweep["id"] and shown["state"] == "running" and shown["owner"] == "submitter"


def test_a_grid_runs_every_point_by_default(api: Api) -> None:
    sweep = start(api, space={"penalty": ["l1", "l2"], "loss": ["hinge", "log_loss", "perceptron"]},
                  sampler="grid", trials=None)
    assert sweep["trials_wanted"] == 6 and sweep["sampler"] == "grid"


def test_the_model_to_register_is_kept_under_its_json_name(api: Api) -> None:
    sweep = start(api, register={"name": "digits", "alias": "staging"}, pruner="median", concurrency=2)
    assert sweep["spec"]["register"] == {"name": "digits", "alias": "staging"}
    assert sweep["spec"]["pruner"] == {"kind": "median"} and sweep["spec"]["concurrency"] == 2
    assert start(api, register="digits")["spec"]["register"] == {"name": "digits"}


BAD_SWEEPS: dict[str, tuple[dict[str, Any], str, str]] = {
    "unknown objective": ({"objective": "train.nothing"}, "sweep_invalid", "no task 'train.nothing'"),
    "a key the task does not take": ({"space": {"colour": ["red"]}}, "sweep_invalid", "colour"),
    "a value out of the task's range": ({"space": {"alpha": {"loguniform": [1e-6, 5]}}}, "sweep_invalid",
                                        "alpha"),
    "an empty space": ({"space": {}}, "sweep_invalid", "space"),
    "no trials": ({"trials": 0}, "sweep_invalid", "trials"),
    "more trials than the grid has points": ({"sampler": "grid", "space": {"penalty": ["l1", "l2"]}, "trials": 3},
                                             "sweep_invalid", "the grid has only 2 points"),
    "an unknown sampler": ({"sampler": "bayes"}, "sweep_invalid", "bayes"),
    "an unknown mode": ({"mode": "most"}, "request_invalid", "mode"),
    "an unknown field": ({"colour": "red"}, "request_invalid", "colour"),
    "the register field by its Python name": ({"register_model": "digits"}, "request_invalid", "register_model"),
    "a bad model name to register": ({"register": {"name": "not ok!"}}, "sweep_invalid", "register.name"),
    "an unknown pruner": ({"pruner": "sometimes"}, "sweep_invalid", "sometimes"),
    "a job option trials cannot have": ({"job": {"idempotency_key": "k"}}, "sweep_invalid", "idempotency_key"),
    "no objective": ({"objective": None}, "request_invalid", "objective"),
}


@pytest.mark.parametrize("case", BAD_SWEEPS, ids=str)
def test_a_bad_sweep_is_refused_with_its_problem_named_and_nothing_stored(api: Api, case: str) -> None:
    changes, code, named = BAD_SWEEPS[case]
    body = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    r = api.client("submitter").post("/api/v1/sweeps", json=body)
    assert r.status_code == 422, r.text
    answer = r.json()
    assert answer["code"] == code, answer
    assert named in answer["error"], answer
    assert listed(api, "admin") == []
    assert sum(api.store.job_counts().values()) == 0


def test_a_malformed_or_non_object_body_is_400_or_422(api: Api) -> None:
    c = api.client("submitter")
    r = c.post("/api/v1/sweeps", content=b'{"objective":', headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_request" and "malformed JSON" in r.json()["error"]
    r = c.post("/api/v1/sweeps", json=[GOOD])
    assert r.status_code == 422 and r.json()["code"] == "request_invalid", r.text
    assert listed(api, "admin") == []


def test_starting_needs_submit_and_the_token_is_checked_first(api: Api) -> None:
    assert api.client("viewer").post("/api/v1/sweeps", json=GOOD).status_code == 403
    r = api.client().post("/api/v1/sweeps", content=b'{"objective":', headers={"Content-Type": "application/json"})
    assert r.status_code == 401
    assert listed(api, "admin") == []


# -- who sees what ------------------------------------------------------------------------------


def test_a_submitter_sees_only_its_own_sweeps(api: Api) -> None:
    mine = start(api, "submitter")["id"]
    theirs = start(api, "other")["id"]
    by_operator = start(api, "operator")["id"]
    assert listed(api, "submitter") == [mine]
    assert listed(api, "other") == [theirs]
    assert listed(api, "viewer") == [by_operator, theirs, mine]  # newest first
    assert listed(api, "viewer", limit=1) == [by_operator]
    assert listed(api, "viewer", state="running") == [by_operator, theirs, mine]
    assert listed(api, "viewer", state="cancelled") == []
    c = api.client("submitter")
    for path in ("", "/best", "/trials/0/metrics"):
        assert c.get(f"/api/v1/sweeps/{mine}{path}").status_code == 200
        for sweep_id in (theirs, 999_999):  # another's sweep answers exactly as one that does not exist
            r = c.get(f"/api/v1/sweeps/{sweep_id}{path}")
            assert r.status_code == 404, r.text
            assert r.json() == {"error": f"no sweep with id {sweep_id}", "code": "sweep_not_found",
                                "sweep": sweep_id}
    assert api.client("viewer").get(f"/api/v1/sweeps/{theirs}").status_code == 200


def test_bad_list_parameters_and_ids_are_422(api: Api) -> None:
    c = api.client("viewer")
    for params in ({"state": "sleeping"}, {"limit": 0}, {"limit": 1001}):
        r = c.get("/api/v1/sweeps", params=params)
        assert r.status_code == 422 and r.json()["code"] == "request_invalid", (params, r.text)
    for path in ("/api/v1/sweeps/0", "/api/v1/sweeps/abc", f"/api/v1/sweeps/{2**63}",
                 "/api/v1/sweeps/1/trials/-1/metrics"):
        r = c.get(path)
        assert r.status_code == 422, (path, r.text)


# -- cancel and resume --------------------------------------------------------------------------


def test_cancel_then_resume(api: Api) -> None:
    sweep_id = start(api)["id"]
    [done, running] = add_trials(api, sweep_id, [{"alpha": 0.01}, {"alpha": 0.001}])
    api.store.finish_trials([(sweep_id, 0, "succeeded", 0.9, None)], time.time())
    assert api.client("submitter").post(f"/api/v1/sweeps/{sweep_id}/cancel").status_code == 403  # no `cancel`
    operator = api.client("operator")

    r = operator.post(f"/api/v1/sweeps/{sweep_id}/cancel")
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
    assert [t["state"] for t in cancelled["trials"]] == ["succeeded", "cancelled"]
    assert api.store.get(running).state is State.CANCELLED
    assert listed(api, "viewer", state="cancelled") == [sweep_id]

    r = operator.post(f"/api/v1/sweeps/{sweep_id}/cancel")
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "invalid_transition" and "is cancelled" in r.json()["error"]

    assert api.client("submitter").post(f"/api/v1/sweeps/{sweep_id}/resume").status_code == 403  # no `operate`
    r = operator.post(f"/api/v1/sweeps/{sweep_id}/resume")
    assert r.status_code == 200, r.text
    resumed = r.json()
    assert resumed["state"] == "running" and resumed["finished_at"] is None
    assert [t["state"] for t in resumed["trials"]] == ["succeeded", "running"]  # the finished one is kept
    assert api.store.get(running).state is State.QUEUED
    assert api.store.get(done).state is State.QUEUED  # never run here: its job was not touched by cancel

    r = operator.post(f"/api/v1/sweeps/{sweep_id}/resume")
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "invalid_transition" and "is running" in r.json()["error"]


def test_cancel_and_resume_of_an_unknown_sweep_are_404(api: Api) -> None:
    c = api.client("admin")
    for action in ("cancel", "resume"):
        r = c.post(f"/api/v1/sweeps/424242/{action}")
        assert r.status_code == 404 and r.json()["code"] == "sweep_not_found", r.text


def test_a_succeeded_sweep_cannot_be_resumed(api: Api) -> None:
    sweep_id = start(api)["id"]
    api.store.update_sweep(sweep_id, "succeeded", time.time(), expected="running")
    r = api.client("operator").post(f"/api/v1/sweeps/{sweep_id}/resume")
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition", r.text
    r = api.client("operator").post(f"/api/v1/sweeps/{sweep_id}/cancel")
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition", r.text


# -- the best trial and the reported metrics ----------------------------------------------------


def best(api: Api, sweep_id: int, who: str = "submitter") -> dict[str, Any]:
    r = api.client(who).get(f"/api/v1/sweeps/{sweep_id}/best")
    assert r.status_code == 200, r.text
    return r.json()


def test_best_is_null_until_a_trial_succeeds_then_the_best_one(api: Api) -> None:
    sweep_id = start(api)["id"]
    assert best(api, sweep_id) == {"sweep": sweep_id, "state": "running", "best": None}
    params = [{"alpha": 0.01, "penalty": "l1"}, {"alpha": 0.001, "penalty": "l2"}, {"alpha": 0.05, "penalty": "l1"},
              {"alpha": 1e-5, "penalty": "l2"}]
    jobs = add_trials(api, sweep_id, params)
    assert best(api, sweep_id)["best"] is None  # trials running, none finished
    now = time.time()
    api.store.finish_trials([(sweep_id, 2, "failed", None, "boom"), (sweep_id, 3, "pruned", 0.99, "pruned")], now)
    assert best(api, sweep_id)["best"] is None  # neither failed nor pruned trials count
    api.store.finish_trials([(sweep_id, 0, "succeeded", 0.81, None), (sweep_id, 1, "succeeded", 0.93, None)], now)
    assert best(api, sweep_id)["best"] == {"number": 1, "value": 0.93, "params": params[1], "job_id": jobs[1]}
    api.store.update_sweep(sweep_id, "succeeded", now, expected="running", best=1)
    assert best(api, sweep_id, "viewer") == {"sweep": sweep_id, "state": "succeeded",
                                             "best": {"number": 1, "value": 0.93, "params": params[1],
                                                      "job_id": jobs[1]}}
    status = api.client("submitter").get(f"/api/v1/sweeps/{sweep_id}").json()
    assert status["counts"] == {"running": 0, "succeeded": 2, "pruned": 1, "failed": 1, "cancelled": 0, "done": 4}
    assert [t["number"] for t in status["trials"]] == [0, 1, 2, 3]
    listed_best = api.client("submitter").get("/api/v1/sweeps").json()["sweeps"][0]["best"]
    assert listed_best["number"] == 1


def test_best_of_a_minimising_sweep_is_the_lowest(api: Api) -> None:
    sweep_id = start(api, metric="loss", mode="min")["id"]
    add_trials(api, sweep_id, [{"alpha": 0.01}, {"alpha": 0.02}, {"alpha": 0.03}])
    api.store.finish_trials([(sweep_id, n, "succeeded", v, None) for n, v in enumerate([0.5, 0.2, 0.7])],
                            time.time())
    assert best(api, sweep_id)["best"]["number"] == 1


def test_a_trials_metrics_come_back_in_step_order(api: Api) -> None:
    sweep_id = start(api)["id"]
    add_trials(api, sweep_id, [{"alpha": 0.01}, {"alpha": 0.02}])
    at = time.time()
    api.store.add_trial_metrics([(sweep_id, 0, 2, {"accuracy": 0.6, "loss": 1.1}, at + 2),
                                 (sweep_id, 0, 1, {"accuracy": 0.4, "loss": 1.5}, at + 1),
                                 (sweep_id, 1, 1, {"accuracy": 0.3}, at + 1),
                                 (sweep_id, 0, 3, {"loss": 0.9}, at + 3)])
    c = api.client("submitter")
    r = c.get(f"/api/v1/sweeps/{sweep_id}/trials/0/metrics")
    assert r.status_code == 200, r.text
    assert r.json() == {"sweep": sweep_id, "trial": 0, "metrics": [
        {"step": 1, "metrics": {"accuracy": 0.4, "loss": 1.5}, "at": at + 1},
        {"step": 2, "metrics": {"accuracy": 0.6, "loss": 1.1}, "at": at + 2},
        {"step": 3, "metrics": {"loss": 0.9}, "at": at + 3}]}
    assert c.get(f"/api/v1/sweeps/{sweep_id}/trials/7/metrics").json()["metrics"] == []  # nothing reported
    # the status shows each trial's curve of the sweep's metric (accuracy) and how many steps it reported
    status = c.get(f"/api/v1/sweeps/{sweep_id}").json()
    assert [(t["curve"], t["steps"]) for t in status["trials"]] == [([[1, 0.4], [2, 0.6]], 3), ([[1, 0.3]], 1)]
    plain = c.get(f"/api/v1/sweeps/{sweep_id}", params={"curves": "false"}).json()
    assert all("curve" not in t for t in plain["trials"])
    # a step reported again (a resumed trial) replaces what it said before
    api.store.add_trial_metrics([(sweep_id, 0, 2, {"accuracy": 0.65}, at + 4)])
    points = c.get(f"/api/v1/sweeps/{sweep_id}/trials/0/metrics").json()["metrics"]
    assert [p["metrics"] for p in points] == [{"accuracy": 0.4, "loss": 1.5}, {"accuracy": 0.65}, {"loss": 0.9}]


# -- the model registry -------------------------------------------------------------------------


@pytest.fixture
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    """The artifact store the API's registry reads (set before the API first touches it)."""
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "artifacts"))
    return ArtifactStore()


@pytest.fixture
def registry(artifacts: ArtifactStore, api_factory: ApiFactory) -> Api:
    return api_factory()


def register(api: Api, ref: dict[str, Any], name: str = "digits", **extra: Any) -> dict[str, Any]:
    r = api.client("operator").post(f"/api/v1/registry/{name}", json={"artifact": ref, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def version_of(api: Api, ref: str, name: str = "digits") -> dict[str, Any]:
    r = api.client("viewer").get(f"/api/v1/registry/{name}/versions/{ref}")
    assert r.status_code == 200, r.text
    return r.json()


def test_versions_are_numbered_and_found_by_number_alias_or_latest(registry: Api, artifacts: ArtifactStore) -> None:
    viewer = registry.client("viewer")
    assert viewer.get("/api/v1/registry").json() == {"models": []}
    first = artifacts.put_bytes("models/a", "model.bin", b"first weights")
    second = artifacts.put_bytes("models/b", "model.bin", b"second weights")

    v1 = register(registry, first, params={"alpha": 0.01}, metrics={"accuracy": 0.8}, alias="staging")
    assert v1["version"] == 1 and v1["name"] == "digits" and v1["aliases"] == ["staging"]
    assert v1["created_by"] == "operator" and v1["params"] == {"alpha": 0.01} and v1["metrics"] == {"accuracy": 0.8}
    assert v1["artifact"] == first
    v2 = register(registry, second, metrics={"accuracy": 0.9})
    assert v2["version"] == 2 and v2["aliases"] == []

    assert version_of(registry, "1")["artifact"] == first
    assert version_of(registry, "2")["artifact"] == second
    assert version_of(registry, "latest")["version"] == 2
    assert version_of(registry, "staging")["version"] == 1
    versions = viewer.get("/api/v1/registry/digits/versions").json()
    assert versions["name"] == "digits" and [v["version"] for v in versions["versions"]] == [2, 1]
    assert [v["version"] for v in viewer.get("/api/v1/registry/digits/versions", params={"limit": 1}).json()[
        "versions"]] == [2]
    [model] = viewer.get("/api/v1/registry").json()["models"]
    assert model["name"] == "digits" and model["versions"] == 2 and model["latest"] == 2
    assert model["aliases"] == {"staging": 1} and model["metrics"] == {"accuracy": 0.9}

    # another model numbers its own versions
    assert register(registry, first, name="other-model")["version"] == 1
    assert [m["name"] for m in viewer.get("/api/v1/registry").json()["models"]] == ["digits", "other-model"]


def test_an_alias_moves_and_is_removed(registry: Api, artifacts: ArtifactStore) -> None:
    for n in range(3):
        register(registry, artifacts.put_bytes(f"models/{n}", "model.bin", f"weights {n}".encode()))
    operator = registry.client("operator")
    r = operator.put("/api/v1/registry/digits/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["aliases"] == ["production"]
    assert version_of(registry, "production")["version"] == 1

    r = operator.put("/api/v1/registry/digits/aliases/production", json={"version": "3"})
    assert r.status_code == 200 and r.json()["version"] == 3, r.text
    assert version_of(registry, "production")["version"] == 3
    assert version_of(registry, "1")["aliases"] == []
    r = operator.put("/api/v1/registry/digits/aliases/staging", json={"version": "production"})  # via an alias
    assert r.status_code == 200 and r.json()["version"] == 3 and r.json()["aliases"] == ["production", "staging"]

    r = operator.delete("/api/v1/registry/digits/aliases/production")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "digits", "alias": "production", "removed": True}
    r = registry.client("viewer").get("/api/v1/registry/digits/versions/production")
    assert r.status_code == 404 and r.json()["code"] == "registry_not_found", r.text
    assert "production" in r.json()["error"]
    r = operator.delete("/api/v1/registry/digits/aliases/production")
    assert r.status_code == 404 and r.json()["code"] == "registry_not_found", r.text
    assert version_of(registry, "staging")["version"] == 3

    assert registry.client("viewer").put("/api/v1/registry/digits/aliases/x", json={"version": 1}).status_code == 403
    assert registry.client("submitter").delete("/api/v1/registry/digits/aliases/staging").status_code == 403


def test_bad_alias_requests_say_what_is_wrong(registry: Api, artifacts: ArtifactStore) -> None:
    register(registry, artifacts.put_bytes("models/a", "model.bin", b"w"))
    operator = registry.client("operator")
    for alias in ("7", "latest"):  # either would read as a version
        r = operator.put(f"/api/v1/registry/digits/aliases/{alias}", json={"version": 1})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "bad_input" and "would read as a version" in r.json()["error"]
    r = operator.put("/api/v1/registry/digits/aliases/prod", json={"version": 9})
    assert r.status_code == 404 and r.json() == {"error": "no model 'digits' version 9", "code": "registry_not_found"}
    r = operator.put("/api/v1/registry/nothing/aliases/prod", json={"version": 1})
    assert r.status_code == 404 and r.json()["code"] == "registry_not_found", r.text
    r = operator.put("/api/v1/registry/digits/aliases/prod", json={"version": 1, "extra": True})
    assert r.status_code == 422 and r.json()["code"] == "request_invalid" and "extra" in r.text
    r = operator.put("/api/v1/registry/digits/aliases/prod", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_request", r.text
    r = operator.put("/api/v1/registry/digits/aliases/bad alias!", json={"version": 1})
    assert r.status_code == 422 and "alias" in r.json()["error"], r.text
    assert version_of(registry, "latest")["aliases"] == []


def test_download_returns_the_bytes_checked_against_their_sha256(registry: Api, artifacts: ArtifactStore) -> None:
    data = bytes(range(256)) * 40
    register(registry, artifacts.put_bytes("models/a", "model.bin", data), alias="production")
    register(registry, artifacts.put_bytes("models/b", "model.bin", b"v2"))
    viewer = registry.client("viewer")
    for ref, want, number in (("1", data, 1), ("production", data, 1), ("latest", b"v2", 2)):
        r = viewer.get(f"/api/v1/registry/digits/versions/{ref}/download")
        assert r.status_code == 200, r.text
        assert r.content == want
        assert r.headers["x-clusterai-sha256"] == hashlib.sha256(want).hexdigest()
        assert r.headers["x-clusterai-version"] == str(number)
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"] == f'attachment; filename="digits-v{number}.bin"'
    assert registry.client("submitter").get("/api/v1/registry/digits/versions/1/download").status_code == 403


def test_a_tampered_artifact_is_not_served(registry: Api, artifacts: ArtifactStore) -> None:
    ref = artifacts.put_bytes("models/a", "model.bin", b"the real weights")
    register(registry, ref)
    artifacts.put_bytes("models/a", "model.bin", b"something else!!")  # same size, other bytes
    r = registry.client("viewer").get("/api/v1/registry/digits/versions/1/download")
    assert r.status_code == ArtifactCorrupt.http_status and r.status_code != 200, r.text
    assert r.json()["code"] == "artifact_corrupt"
    assert "sha256" in r.json()["error"] and "changed since written" in r.json()["error"]
    assert "x-clusterai-sha256" not in r.headers
    artifacts.put_bytes("models/a", "model.bin", b"short")
    r = registry.client("viewer").get("/api/v1/registry/digits/versions/1/download")
    assert r.json()["code"] == "artifact_corrupt" and "5 bytes" in r.json()["error"], r.text


def test_registering_checks_the_artifact(registry: Api, artifacts: ArtifactStore) -> None:
    ref = artifacts.put_bytes("models/a", "model.bin", b"weights")
    operator = registry.client("operator")
    bad = {
        "not a reference": ({"artifact": {"url": ref["artifact"]}}, "bad_input", "artifact"),
        "outside the store": ({"artifact": {**ref, "artifact": "file:///etc/passwd"}}, "bad_input",
                              "outside this artifact store"),
        "missing": ({"artifact": {**ref, "artifact": ref["artifact"].replace("models/a", "models/z")}}, "bad_input",
                    "no artifact"),
        "wrong sha256": ({"artifact": {**ref, "sha256": "0" * 64}}, "bad_input", "sha256"),
        "an unknown field": ({"artifact": ref, "colour": "red"}, "request_invalid", "colour"),
        "no artifact": ({"params": {}}, "request_invalid", "artifact"),
        "a bad alias": ({"artifact": ref, "alias": "not ok!"}, "bad_input", "alias"),
    }
    for what, (body, code, named) in bad.items():
        r = operator.post("/api/v1/registry/digits", json=body)
        assert 400 <= r.status_code < 500, (what, r.text)  # the caller's mistake, never the server's
        assert r.json()["code"] == code and named in r.json()["error"], (what, r.text)
    r = operator.post("/api/v1/registry/not a name!", json={"artifact": ref})
    assert r.status_code == 422 and r.json()["code"] == "bad_input", r.text
    r = operator.post("/api/v1/registry/digits", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_request", r.text
    assert registry.client("viewer").get("/api/v1/registry").json() == {"models": []}
    assert registry.client("viewer").post("/api/v1/registry/digits", json={"artifact": ref}).status_code == 403
    assert register(registry, ref)["version"] == 1  # the good one after all that is still version 1


def test_an_unknown_model_or_version_is_404(registry: Api, artifacts: ArtifactStore) -> None:
    viewer = registry.client("viewer")
    for path in ("/api/v1/registry/nothing/versions", "/api/v1/registry/nothing/versions/latest",
                 "/api/v1/registry/nothing/versions/1/download"):
        r = viewer.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json() == {"error": "no model 'nothing'" + (" version 1" if "/1/" in path else ""),
                            "code": "registry_not_found"}
    register(registry, artifacts.put_bytes("models/a", "model.bin", b"w"))
    for ref, message in (("5", "no model 'digits' version 5"), ("nightly", "model 'digits' has no alias 'nightly'")):
        r = viewer.get(f"/api/v1/registry/digits/versions/{ref}")
        assert r.status_code == 404 and r.json() == {"error": message, "code": "registry_not_found"}, r.text
    r = viewer.get("/api/v1/registry/digits/versions/0")
    assert r.status_code == 422 and "start at 1" in r.json()["error"], r.text
    r = viewer.get("/api/v1/registry/bad name!/versions")
    assert r.status_code == 422 and r.json()["code"] == "bad_input", r.text
