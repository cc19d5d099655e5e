"""/api/v1/autoscale over real HTTP: viewers read the report and the decision log, operators switch
the autoscaler and change bounds, bad changes are refused with the reason and change nothing; the
metrics carry the desired count an HPA or KEDA scales on; the remote client and the CLI agree."""

from __future__ import annotations

import time

from api_support import Api
from test_metrics_api import scrape, values

STATE = {"enabled": True, "interval_s": 5, "provider": "local", "unmanaged": 0, "error": None,
         "profiles": [{"name": "default", "min": 1, "max": 4, "current": 2, "ready": 1, "starting": 1,
                       "draining": 1, "busy": 3, "desired": 3, "reason": "target_tracking: backlog",
                       "labels": [], "resources": {}, "models": [], "concurrency": 1, "start_s": 2.0,
                       "workers": ["as-default-1", "as-default-2", "as-default-3"]}],
         "unschedulable": [{"queue": "gpu", "requires": {"GPU": 1.0}, "labels": [], "queued": 7}],
         "samples": [[1.0, {"default": [1, 3]}]]}


def report(api: Api, **changes) -> None:
    api.store.put_autoscale("state", {**STATE, **changes}, time.time())
    api.store.add_scale_decisions([{"at": time.time(), "profile": "default", "from": 1, "to": 3,
                                    "reason": "target_tracking: backlog", "inputs": {"queued": 30}}])


def test_viewers_read_the_report_and_the_decisions(api: Api):
    report(api)
    r = api.client("viewer").get("/api/v1/autoscale")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["running"] is True and body["enabled"] is True and body["configured"] is False
    assert body["state"]["profiles"][0]["desired"] == 3
    assert [(d["from"], d["to"]) for d in body["decisions"]] == [(1, 3)]


def test_operators_change_bounds_and_switch_it_off(api: Api):
    c = api.client("operator")
    r = c.put("/api/v1/autoscale", json={"enabled": True, "min": 2, "max": 6})
    assert r.status_code == 200, r.text
    assert r.json()["override"] == {"enabled": True, "profiles": {"default": {"min": 2, "max": 6}}}
    r = c.put("/api/v1/autoscale", json={"enabled": False})
    assert r.json()["override"] == {"enabled": False, "profiles": {"default": {"min": 2, "max": 6}}}
    assert api.store.get_autoscale("override")[0]["enabled"] is False
    assert api.client("viewer").get("/api/v1/autoscale").json()["enabled"] is False


def test_bad_changes_are_refused_with_the_reason_and_change_nothing(api: Api):
    c = api.client("operator")
    c.put("/api/v1/autoscale", json={"enabled": True, "min": 1, "max": 3})
    before = api.store.get_autoscale("override")
    for body, status, words in [({"enabled": True, "min": 5, "max": 2}, 422, "min (5) is greater than max (2)"),
                                ({"enabled": True, "max": 0}, 422, "min (1) is greater than max (0)"),
                                ({"enabled": True, "min": 1, "profile": "gpu"}, 422, "unknown profile 'gpu'"),
                                ({"enabled": True, "min": -1}, 422, "min"),
                                ({"min": 1}, 422, "enabled"),
                                ({"enabled": True, "workers": 3}, 422, "workers")]:
        r = c.put("/api/v1/autoscale", json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.text, (body, r.text)
    assert api.store.get_autoscale("override") == before
    assert api.client("viewer").put("/api/v1/autoscale", json={"enabled": False}).status_code == 403


def test_metrics_carry_the_desired_workers_per_profile(api: Api):
    report(api)
    _, samples = scrape(api.client("viewer"))
    assert values(samples, "clusterai_desired_workers", "profile") == {("default",): 3.0}
    assert values(samples, "clusterai_autoscale_workers", "profile", "state") == {
        ("default", "ready"): 1.0, ("default", "starting"): 1.0, ("default", "draining"): 1.0}
    assert values(samples, "clusterai_autoscale_bounds", "bound") == {("min",): 1.0, ("max",): 4.0}
    assert values(samples, "clusterai_autoscale_unschedulable_jobs") == {(): 7.0}
    assert values(samples, "clusterai_autoscale_enabled") == {(): 1.0}


def test_the_remote_client_reads_and_changes_it(api: Api):
    from clusterai.sdk.remote import RemoteClient

    report(api)
    remote = RemoteClient(api.url, api.tokens["operator"])
    try:
        assert remote.autoscale(decisions=1)["state"]["profiles"][0]["name"] == "default"
        assert remote.set_autoscale(True, minimum=0, maximum=2) == {"enabled": True,
                                                                     "profiles": {"default": {"min": 0, "max": 2}}}
    finally:
        remote.close()
