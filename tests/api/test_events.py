"""/api/v1/events over real HTTP: Server-Sent Events in id order, resumable without gap or duplicate."""

from __future__ import annotations

import time

import httpx
import pytest
from api_support import Api
from sse_frames import Frame, frames, open_events

from clusterai.core.model import Outcome, State


def submit(c: httpx.Client, n: int = 1) -> list[int]:
    r = c.post("/api/v1/jobs", json={"jobs": [{"task": "bench.noop"} for _ in range(n)]})
    assert r.status_code == 201, r.text
    return r.json()["ids"]


def check_order(got: list[Frame]) -> None:
    ids = [f.id for f in got]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(set(ids)), f"ids not strictly increasing: {ids}"  # type: ignore[type-var]


def test_the_frame_parser() -> None:
    lines = ["retry: 2000", "", "id: 7", "event: hello", 'data: {"a": 1}', "", ": keep-alive", "",
             "id: 8", "event: job", "data: [1,", "data: 2]", ""]
    got = list(frames(iter(lines)))
    assert [(f.id, f.event, f.data) for f in got] == [(7, "hello", {"a": 1}), (8, "job", [1, 2])]


def test_events_arrive_in_order_as_jobs_change(api: Api) -> None:
    c = api.client("operator")
    with open_events(c) as stream:
        hello = stream.next()
        assert hello.event == "hello"
        assert hello.id == api.store.event_bounds()[1] == hello.data["last_event_id"] == 0
        assert "retry: 2000" not in hello.raw  # the retry line is a frame of its own, before
        a, b, d = submit(c, 3)
        assert c.delete(f"/api/v1/jobs/{b}").status_code == 200
        api.add_worker()
        api.finish(a, Outcome.SUCCEEDED, State.SUCCEEDED, result=1)
        got = stream.until(lambda f: f.data.get("job") == a and f.data["state"] == "succeeded")
    check_order(got)
    assert got[0].id == hello.id + 1
    assert [(f.event, f.data.get("job"), f.data["state"]) for f in got] == [
        ("job", a, "queued"), ("job", b, "queued"), ("job", d, "queued"), ("job", b, "cancelled"),
        ("worker", None, "ready"), ("job", a, "running"), ("job", a, "succeeded")]
    for f in got:
        assert f.data["id"] == f.id
        assert set(f.data) >= {"id", "at", "kind", "state", "worker", "detail"}
        if f.event == "job":
            assert f.data["task"] == "bench.noop" and f.data["queue"] == "default"
    assert got[3].data["detail"] == "was queued"
    assert got[4].data["worker"] == "w1" and got[4].data["detail"] == "joined"
    assert got[5].data["worker"] == "w1" and got[5].data["detail"] == "attempt 1"
    assert got[6].data["detail"] == "attempt 1 succeeded"


def test_many_events_come_in_pages_without_loss(api: Api) -> None:
    """More than one page (500) of the store's event log between two polls."""
    c = api.client("admin")
    with open_events(c, params={"last_event_id": 0}) as stream:
        assert stream.next().event == "hello"
        ids = submit(c, 1200)
        got = stream.until(lambda f: f.data.get("job") == ids[-1])
    check_order(got)
    assert [f.data["job"] for f in got] == ids
    assert [f.id for f in got] == list(range(1, 1201))


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_reconnect_resumes_right_after_the_last_id(api: Api, how: str) -> None:
    c = api.client("admin")
    with open_events(c) as stream:
        assert stream.next().event == "hello"
        ids = submit(c, 6)
        first = stream.until(lambda f: f.data.get("job") == ids[-1])
    check_order(first)
    assert len(first) == 6
    resume_at = first[2].id
    assert resume_at is not None
    # changes while disconnected
    more = submit(c, 2)
    c.delete(f"/api/v1/jobs/{ids[0]}")
    headers = {"Last-Event-ID": str(resume_at)} if how == "header" else None
    params = {"last_event_id": resume_at} if how == "query" else None
    with open_events(c, headers=headers, params=params) as stream:
        hello = stream.next()
        assert (hello.event, hello.id, hello.data["last_event_id"]) == ("hello", resume_at, resume_at)
        again = stream.until(lambda f: f.data.get("job") == ids[0] and f.data["state"] == "cancelled")
        # then one more change: the very next frame must be it (nothing repeated, nothing skipped)
        [last] = submit(c)
        after = stream.next()
    check_order(again + [after])
    assert [f.id for f in again] == [e["id"] for e in api.store.events_after(resume_at, 100)][: len(again)]
    assert again[0].id == resume_at + 1, "a gap after the resume point"
    assert [f.data["job"] for f in again] == ids[3:] + more + [ids[0]]
    assert [f.data["job"] for f in first[3:]] == ids[3:]  # the same events as before the disconnect
    assert [f.data for f in again[:3]] == [f.data for f in first[3:]]
    assert (after.id, after.data["job"]) == (again[-1].id + 1, last)


def test_the_query_parameter_wins_over_the_header(api: Api) -> None:
    c = api.client("admin")
    ids = submit(c, 3)
    with open_events(c, params={"last_event_id": 1}, headers={"Last-Event-ID": "2"}) as stream:
        assert stream.next().id == 1
        assert stream.next().data["job"] == ids[1]


def test_a_bad_last_event_id_header_is_ignored(api: Api) -> None:
    c = api.client("admin")
    submit(c, 2)
    with open_events(c, headers={"Last-Event-ID": "not-a-number"}) as stream:
        hello = stream.next()
        assert (hello.event, hello.id) == ("hello", 2)  # from now on
    r = c.get("/api/v1/events", params={"last_event_id": -1})
    assert r.status_code == 422


def test_an_id_older_than_the_log_gets_a_reset(api: Api) -> None:
    c = api.client("admin")
    old = submit(c, 3)
    assert api.store.prune_events(time.time() + 1, 1000) == 3  # every event is gone
    new = submit(c, 2)
    with open_events(c, headers={"Last-Event-ID": "1"}) as stream:
        hello = stream.next()
        assert hello.event == "hello"
        reset = stream.next()
        assert reset.event == "reset", reset
        assert "reload" in reset.data["message"]
        assert reset.data["first_kept"] == 4
        # after the reset, the stream goes on with what the log still keeps
        got = stream.until(lambda f: f.data.get("job") == new[-1])
    assert [f.data["job"] for f in got] == new
    assert not set(old) & {f.data.get("job") for f in got}


def test_an_id_older_than_an_empty_log_gets_a_reset(api: Api) -> None:
    c = api.client("admin")
    submit(c, 3)
    assert api.store.prune_events(time.time() + 1, 1000) == 3
    with open_events(c, headers={"Last-Event-ID": "1"}) as stream:
        assert stream.next().event == "hello"
        assert stream.next().event == "reset"
        [new] = submit(c)
        frame = stream.next()
        assert (frame.event, frame.data["job"]) == ("job", new)


def test_an_id_from_the_future_gets_a_reset(api: Api) -> None:
    c = api.client("admin")
    submit(c, 2)
    with open_events(c, params={"last_event_id": 99}) as stream:
        hello = stream.next()
        assert (hello.event, hello.id) == ("hello", 2)
        assert stream.next().event == "reset"
        [new] = submit(c)
        frame = stream.next()
        assert (frame.id, frame.data["job"]) == (3, new)


def test_an_up_to_date_client_gets_no_reset_after_the_log_was_emptied(api: Api) -> None:
    """The log pruned empty still knows its last id: a client that saw it has missed nothing."""
    c = api.client("admin")
    submit(c, 3)
    assert api.store.prune_events(time.time() + 1, 1000) == 3
    with open_events(c, headers={"Last-Event-ID": "3"}) as stream:
        assert stream.next().event == "hello"
        [new] = submit(c)
        frame = stream.next()
        assert frame.event == "job", f"got {frame.event}: {frame.data}"
        assert (frame.id, frame.data["job"]) == (4, new)


def test_an_up_to_date_client_gets_no_reset_after_pruning(api: Api) -> None:
    c = api.client("admin")
    submit(c, 5)
    assert api.store.prune_events(0, 2) == 3  # keeps 4 and 5
    for last_seen in (3, 4, 5):
        with open_events(c, headers={"Last-Event-ID": str(last_seen)}) as stream:
            assert stream.next().event == "hello"
            if last_seen < 5:
                assert stream.next().id == last_seen + 1  # no reset: nothing was missed
    with open_events(c, headers={"Last-Event-ID": "2"}) as stream:
        assert stream.next().event == "hello"
        assert stream.next().event == "reset"  # event 3 is gone
