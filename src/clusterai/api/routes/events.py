"""/api/v1/events: job and worker changes as Server-Sent Events, in commit order.

Each event's id is its row in the store's event log, so a client that reconnects with
Last-Event-ID (browsers do it by themselves) gets everything it missed, as long as the log still
keeps it; if it does not, the client gets a `reset` event and should reload what it shows.

A token may hold api.max_streams_per_token streams at once (each polls the store), and an open
stream checks its token again every api.stream_recheck seconds, through the same verifier as every
request: once the token is revoked or expired the stream sends a `closed` event and ends (the
browser's reconnection then gets 401)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from clusterai.api.deps import ApiContext, context, presented_token, require
from clusterai.api.schemas import MAX_ID
from clusterai.errors import StoreUnavailable
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1", tags=["events"])
PAGE = 500
HEARTBEAT = 15.0


def _frame(event_id: int, kind: str, data: dict[str, Any]) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _visible(event: dict[str, Any], principal: Principal) -> bool:
    if principal.reads_everything:
        return True
    return event["kind"] == "job" and event["owner"] is not None and event["owner"] == principal.name


async def _still_good(ctx: ApiContext, token: str) -> bool:
    try:
        verified = ctx.verifier.verify_cached(token)
        if verified is False:
            verified = await run_in_threadpool(ctx.verifier.verify, token)
    except StoreUnavailable:
        return True  # the store is away, not the token: keep streaming (nothing is sent meanwhile)
    return isinstance(verified, Principal)


async def _stream(ctx: ApiContext, principal: Principal, token: str, after: int | None,
                  poll: float) -> AsyncIterator[str]:
    low, high = await run_in_threadpool(ctx.store.event_bounds)
    pruned = after is not None and after < low - 1
    unknown = after is not None and after > high  # an id from another store (or a store reset)
    cursor = high if after is None or unknown else after
    yield f"retry: 2000\n\n{_frame(cursor, 'hello', {'last_event_id': cursor, 'first_kept': low})}"
    if pruned or unknown:
        why = "no longer kept" if pruned else "unknown to this store"
        yield _frame(cursor, "reset", {"message": f"events after id {after} are {why}; reload", "first_kept": low})
    quiet_since = checked = time.monotonic()
    recheck = ctx.config.api.stream_recheck
    while True:
        if time.monotonic() - checked >= recheck:
            if not await _still_good(ctx, token):
                yield _frame(cursor, "closed", {"message": "the token was revoked or has expired"})
                return
            checked = time.monotonic()
        try:
            events = await run_in_threadpool(ctx.store.events_after, cursor, PAGE)
        except StoreUnavailable:
            events = []  # keep the stream open; the client sees events again when the store is back
        for event in events:
            cursor = event["id"]
            if _visible(event, principal):
                event.pop("owner", None)
                yield _frame(cursor, event["kind"], event)
                quiet_since = time.monotonic()
        if len(events) == PAGE:
            continue
        if time.monotonic() - quiet_since > HEARTBEAT:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(poll)


@router.get("/events", summary="Server-Sent Events of job and worker changes; resumable with Last-Event-ID",
            response_class=StreamingResponse)
async def events(
    request: Request,
    last_event_id: int | None = Query(None, ge=0, le=MAX_ID,
                                      description="resume after this id (or send Last-Event-ID)"),
    principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN)),
) -> StreamingResponse:
    header = request.headers.get("last-event-id")
    after = last_event_id
    if after is None and header is not None and header.strip().isdigit() and len(header.strip()) <= 18:
        after = int(header)
    ctx = context(request)
    token = presented_token(request)
    assert token is not None  # authenticated with it
    if not ctx.streams.take(principal.token_id):
        raise HTTPException(429, f"this token has {ctx.streams.limit} event streams open, its limit "
                                 "(api.max_streams_per_token); close one first", headers={"Retry-After": "5"})
    return _HeldStream(_stream(ctx, principal, token, after, poll=0.1),
                       release=lambda: ctx.streams.give_back(principal.token_id))


class _HeldStream(StreamingResponse):
    """A stream that gives its slot back when it ends, however it ends (the client went away, the
    token was revoked, or the response never started)."""

    def __init__(self, content: AsyncIterator[str], release: Any):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
