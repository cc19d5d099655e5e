"""Plain ASGI middleware at the edge of the API: body size and content type are checked before
any parsing, every mutating call is audited, and every request is counted for /metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it adds no task per request and does not
buffer streamed responses (the event stream)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clusterai.core.model import AuditEntry
from clusterai.errors import StoreUnavailable
from clusterai.store.protocol import JobStore

log = logging.getLogger("clusterai.api")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _TooLarge(HTTPException):
    """An HTTPException, so that FastAPI passes it on when it reads a body for a route's model (it
    turns any other error into a 400) and the app answers 413 inside the middleware that audits."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body is over the limit of {max_bytes} bytes")


async def send_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyEdges:
    """413 for a body over `max_bytes` (by Content-Length, or counted while it streams in);
    415 for a body that is not JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length_text = headers.get("content-length")
        length = None
        if length_text is not None:
            if not length_text.strip().isdigit():
                await send_error(send, 400, f"Content-Length {length_text!r} is not a number")
                return
            length = int(length_text) if len(length_text.strip()) <= 18 else self.max_bytes + 1
            if length > self.max_bytes:
                await send_error(send, 413, f"request body of {length} bytes is over the limit of "
                                            f"{self.max_bytes} bytes")
                return
        has_body = (length or 0) > 0 or "chunked" in headers.get("transfer-encoding", "").lower()
        if has_body and not _is_json(headers.get("content-type", "")):
            shown = headers.get("content-type") or "none"
            await send_error(send, 415, f"content type {shown!r} is not accepted; send application/json")
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if started:
                raise
            await send_error(send, 413, f"request body is over the limit of {self.max_bytes} bytes")


class AuditAndCount:
    """Writes an audit record for every mutating call made with a valid token (unless the route
    wrote it in its own transaction) and counts requests by route and status."""

    def __init__(self, app: ASGIApp, store: JobStore, registry: CollectorRegistry):
        self.app = app
        self.store = store
        self.requests = Counter("clusterai_http_requests", "API requests by method, route and status",
                                ["method", "route", "status"], registry=registry)
        self.seconds = Histogram("clusterai_http_request_seconds", "API request handling time by route",
                                 ["route"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                                                     1, 5), registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        begun = time.perf_counter()
        audited = scope["method"] not in MUTATING

        async def send_status(message: Message) -> None:
            nonlocal status, audited
            if message["type"] == "http.response.start":
                status = message["status"]
                if not audited:
                    # before the answer leaves: a caller that reads the audit log next finds its call
                    audited = True
                    await self._audit(scope, status)
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.seconds.labels(route).observe(time.perf_counter() - begun)
            if not audited:  # no answer was sent (the handler crashed)
                await self._audit(scope, status)

    async def _audit(self, scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        principal = state.get("principal")
        if principal is None or state.get("audited"):
            return
        entry = AuditEntry(actor=principal.name, role=principal.role, action=f"{scope['method']} {scope['path']}",
                           target=state.get("audit_target"), status=status, detail=state.get("audit_detail"))
        try:
            await run_in_threadpool(self.store.record_audit, [entry], time.time())
        except StoreUnavailable as exc:
            log.error("audit record not written (store unavailable): %s by %s: %s", entry.action, entry.actor, exc)
