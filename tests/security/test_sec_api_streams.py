"""Event streams (/api/v1/events) under attack: a token cannot open more than its share (each stream
polls the store), and a stream stops when its token is revoked or expires."""

from __future__ import annotations

import time

import httpx
import pytest
from api_support import Api, ApiFactory
from sse_frames import open_events


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory({"api": {"max_streams_per_token": 2, "stream_recheck": 0.3}})


def test_a_token_past_its_streams_gets_429_and_a_closed_stream_frees_its_slot(api: Api) -> None:
    c = api.client("viewer")
    with open_events(c) as one, open_events(c) as two:
        assert one.next().event == two.next().event == "hello"
        third = c.get("/api/v1/events")  # answered at once: no stream starts
        assert third.status_code == 429, third.text
        assert int(third.headers["retry-after"]) >= 1 and "max_streams_per_token" in third.json()["error"]
        # the dashboard's cookie is the same token: it counts against the same limit
        browser = api.client(None, cookies={"clusterai_session": api.tokens["viewer"]})
        assert browser.get("/api/v1/events").status_code == 429
        # another token has streams of its own
        with open_events(api.client("submitter")) as theirs:
            assert theirs.next().event == "hello"
    deadline = time.monotonic() + 5
    while api.app.state.ctx.streams.held(api.token_ids["viewer"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    with open_events(c) as again:  # both were closed: their slots are free again
        assert again.next().event == "hello"


def test_a_stream_ends_within_seconds_when_its_token_is_revoked(api: Api) -> None:
    text, token_id = api.add_token("viewer", "watcher")
    c = api.client(None, headers={"Authorization": f"Bearer {text}"})
    with open_events(c) as stream:
        assert stream.next().event == "hello"
        began = time.monotonic()
        assert api.client("admin").delete(f"/api/v1/tokens/{token_id}").status_code == 200
        closed = stream.next()
        assert closed.event == "closed" and "revoked" in closed.data["message"]
        with pytest.raises(StopIteration):  # and then the stream ends
            stream.next()
        assert time.monotonic() - began < 5
    assert c.get("/api/v1/events").status_code == 401  # the browser's reconnection
    assert api.app.state.ctx.streams.held(token_id) == 0


def test_a_stream_ends_when_its_token_expires(api: Api) -> None:
    text, token_id = api.add_token("viewer", "short", expires_at=time.time() + 1.5)
    c = api.client(None, headers={"Authorization": f"Bearer {text}"})
    with open_events(c) as stream:
        assert stream.next().event == "hello"
        api.add_worker()  # events still flow to it while it is good
        assert stream.next().event == "worker"
        closed = stream.next()
        assert closed.event == "closed" and "expired" in closed.data["message"]
        with pytest.raises(StopIteration):
            stream.next()
    assert time.time() >= api.store.get_token(token_id).expires_at


def test_a_revoked_session_cookie_stream_ends_too(api: Api) -> None:
    text, token_id = api.add_token("viewer", "browser")
    browser = api.client(None, cookies={"clusterai_session": text})
    with open_events(browser) as stream:
        assert stream.next().event == "hello"
        api.client("admin").delete(f"/api/v1/tokens/{token_id}")
        assert stream.next().event == "closed"
    with pytest.raises(httpx.HTTPStatusError):
        browser.get("/api/v1/events").raise_for_status()
