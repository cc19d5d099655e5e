"""A submitter reads only what it submitted: its jobs in lists, by id, and in the event stream.
A viewer reads everything."""

from __future__ import annotations

from typing import Any

from api_support import Api
from sse_frames import open_events

from clusterai.core.model import Outcome, State


def submit(api: Api, who: str, n: int, task: str = "bench.noop") -> list[int]:
    r = api.client(who).post("/api/v1/jobs", json={"jobs": [{"task": task} for _ in range(n)]})
    assert r.status_code == 201, r.text
    return r.json()["ids"]


def listed(api: Api, who: str, **params: Any) -> list[int]:
    r = api.client(who).get("/api/v1/jobs", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return sorted(j["id"] for j in r.json()["jobs"])


def test_a_submitter_lists_only_its_own_jobs(api: Api) -> None:
    mine = submit(api, "submitter", 3)
    theirs = submit(api, "other", 2)
    by_operator = submit(api, "operator", 1)
    local = api.add_job().id  # submitted on the store, without a token: no owner
    assert listed(api, "submitter") == mine
    assert listed(api, "other") == theirs
    assert listed(api, "submitter", order="asc") == mine
    assert listed(api, "submitter", task="bench.noop", state="queued") == mine
    assert listed(api, "viewer") == sorted(mine + theirs + by_operator + [local])
    jobs = api.client("submitter").get("/api/v1/jobs").json()["jobs"]
    assert {j["owner"] for j in jobs} == {"submitter"}


def test_a_submitter_asking_for_ids_gets_only_its_own(api: Api) -> None:
    mine = submit(api, "submitter", 2)
    theirs = submit(api, "other", 2)
    ids = ",".join(str(i) for i in [theirs[0], mine[1], theirs[1], mine[0], 999])
    r = api.client("submitter").get("/api/v1/jobs", params={"ids": ids})
    assert r.status_code == 200, r.text
    assert [j["id"] for j in r.json()["jobs"]] == [mine[1], mine[0]]  # in the order asked
    r = api.client("viewer").get("/api/v1/jobs", params={"ids": ids})
    assert [j["id"] for j in r.json()["jobs"]] == [theirs[0], mine[1], theirs[1], mine[0]]


def test_a_submitter_pages_through_its_own_jobs_only(api: Api) -> None:
    mine, theirs = [], []
    for _ in range(3):
        mine += submit(api, "submitter", 2)
        theirs += submit(api, "other", 2)
    seen: list[int] = []
    cursor = None
    c = api.client("submitter")
    while True:
        page = c.get("/api/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(mine) and len(seen) == len(set(seen))


def test_another_owners_job_is_not_found(api: Api) -> None:
    [theirs] = submit(api, "other", 1)
    [mine] = submit(api, "submitter", 1)
    local = api.add_job().id
    c = api.client("submitter")
    assert c.get(f"/api/v1/jobs/{mine}").status_code == 200
    for job_id in (theirs, local):
        r = c.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 404, r.text
        # exactly what a job that does not exist gets: nothing tells them apart
        assert r.json() == {"error": f"no job with id {job_id}", "code": "job_not_found", "job": job_id}
        assert c.get(f"/api/v1/jobs/{job_id}", params={"wait": 0.2}).status_code == 404
    missing = c.get("/api/v1/jobs/999999").json()
    assert missing == {"error": "no job with id 999999", "code": "job_not_found", "job": 999999}
    viewer = api.client("viewer")
    for job_id in (theirs, mine, local):
        assert viewer.get(f"/api/v1/jobs/{job_id}").json()["id"] == job_id


def test_the_event_stream_of_a_submitter_carries_only_its_own_jobs(api: Api) -> None:
    start = api.store.event_bounds()[1]
    # interleaved: other's jobs, a worker event, and the submitter's, whose last job ends the read
    theirs = submit(api, "other", 2)
    mine = submit(api, "submitter", 2)
    api.add_worker()
    theirs += submit(api, "other", 1)
    api.finish(theirs[0], Outcome.SUCCEEDED, State.SUCCEEDED, result={"secret": "not yours"})
    api.client("operator").delete(f"/api/v1/jobs/{theirs[1]}")
    api.finish(mine[0], Outcome.FAILED, State.DEAD, error="boom")
    mine += submit(api, "submitter", 1)
    last = mine[-1]
    with open_events(api.client("submitter"), params={"last_event_id": start}) as stream:
        hello = stream.next()
        assert hello.event == "hello"
        got = stream.until(lambda f: f.data.get("job") == last)
    assert {f.event for f in got} == {"job"}, "a submitter saw worker events"
    assert {f.data["job"] for f in got} == set(mine)
    assert all("owner" not in f.data for f in got)
    assert [(f.data["job"], f.data["state"]) for f in got] == [
        (mine[0], "queued"), (mine[1], "queued"), (mine[0], "running"), (mine[0], "dead"), (mine[2], "queued")]

    with open_events(api.client("viewer"), params={"last_event_id": start}) as stream:
        assert stream.next().event == "hello"
        everything = stream.until(lambda f: f.data.get("job") == last)
    jobs_seen = {f.data["job"] for f in everything if f.event == "job"}
    assert jobs_seen == set(mine + theirs)
    assert any(f.event == "worker" and f.data["worker"] == "w1" for f in everything)
    assert len(everything) == len(api.store.events_after(start, 1000))


def test_the_live_stream_of_a_submitter_skips_other_jobs(api: Api) -> None:
    """The same while the stream is open: events written after it started."""
    with open_events(api.client("submitter")) as stream:
        assert stream.next().event == "hello"
        submit(api, "other", 3)
        [mine] = submit(api, "submitter", 1)
        frame = stream.next()
        assert (frame.event, frame.data["job"], frame.data["state"]) == ("job", mine, "queued")
