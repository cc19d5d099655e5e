"""The gateway's endpoints on the API server: Ollama's (/api/generate, /api/chat, /api/embed,
/api/embeddings, /api/show, /api/tags, /api/ps, /api/version), OpenAI's (/v1/chat/completions,
/v1/completions, /v1/embeddings, /v1/models), and /api/v1/models, /api/v1/generate. Inference
needs a token that may submit; the model lists any token. Every way in (a token, the dashboard's
cookie, a worker's credential) goes through the same throttle of failed authentications per client
address (api/throttle.py), the fast path included."""

from __future__ import annotations

import ipaddress
import logging
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from clusterai import __version__
from clusterai.api.credentials import present
from clusterai.api.deps import authenticate, check_address, check_rate, context, count_failure, require
from clusterai.core import nesting
from clusterai.core.model import Priority
from clusterai.errors import (
    BackendsBusy,
    GatewayRefused,
    ModelNotFound,
    NestedTooDeep,
    StoreUnavailable,
    UpstreamFailed,
)
from clusterai.llm.gateway.redact import without_paths
from clusterai.llm.gateway.service import Gateway
from clusterai.llm.protocol import error_body
from clusterai.service.access import Permission, Principal

log = logging.getLogger("clusterai.llm.gateway")
router = APIRouter(tags=["gateway"])
LISTS = require(Permission.READ, Permission.READ_OWN)
_SUBMITS = require(Permission.SUBMIT)
STREAMING = frozenset({"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"})
ANONYMOUS = Principal(token_id="-", name="anonymous", role="submitter")


async def INFERS(request: Request) -> Principal:  # noqa: N802 - used like the other dependencies
    """A token that may submit; the credential the coordinator gives a worker's batch inference jobs
    (good here only, while that worker is in the registry); or none at all from a trusted network
    when gateway.open_inference is on."""
    ctx = context(request)
    settings = ctx.config.gateway
    presented = request.headers.get("authorization")
    if presented is None:
        if settings.open_inference and _trusted(request, settings.open_networks):
            check_address(request)  # a throttled address is refused whatever it shows, nothing included
            request.state.principal = ANONYMOUS
            return ANONYMOUS
        return await _SUBMITS(await authenticate(request))
    scheme, _, text = presented.partition(" ")
    text = text.strip()
    if scheme.lower() != "bearer" or not ctx.credentials.looks_like(text):
        return await _SUBMITS(await authenticate(request))
    check_address(request)
    address = ctx.credentials.address_of(text)
    if address is None or not present(ctx.worker_slots, address):
        await count_failure(request, None)
        raise HTTPException(401, "this worker credential is not valid here (made by another start of the API, "
                                 "or its worker has left the cluster)")
    # its own bucket of the same rate limiter as tokens
    principal = Principal(token_id=f"-worker {address}", name=f"jobs on {address}", role="submitter")
    check_rate(ctx, principal)
    request.state.principal = principal
    return principal


def _principal(request: Request) -> Principal:
    found = getattr(request.state, "principal", None)
    return found if isinstance(found, Principal) else ANONYMOUS


def _trusted(request: Request, networks: list[str]) -> bool:
    try:
        client = ipaddress.ip_address(request.client.host if request.client else "")
    except ValueError:
        return False
    return client.is_loopback or any(client in ipaddress.ip_network(n, strict=False) for n in networks)


def gateway(request: Request) -> Gateway:
    found: Gateway = context(request).gateway
    return found


def _error(protocol: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(protocol, status, message), status_code=status, headers=headers)


async def _forward(request: Request, path: str, protocol: str) -> Response:
    # Inference is not an administrative change: it is counted (/metrics), not written to the audit
    # log one call at a time, which would put a store write in front of every answer.
    request.state.audited = True
    raw = await request.body()
    try:
        body = nesting.loads(raw or b"{}", "the body")
    except NestedTooDeep as exc:
        return _error(protocol, 400, str(exc))
    except ValueError:
        return _error(protocol, 400, "body is not JSON")
    if not isinstance(body, dict):
        return _error(protocol, 400, "body must be a JSON object")
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model:
        return _error(protocol, 400, "'model' is required")
    try:
        priority = int(Priority.parse(request.headers.get("x-clusterai-priority", "normal")))
    except ValueError as exc:
        return _error(protocol, 400, str(exc))
    try:
        # Ollama's generations stream unless told not to; OpenAI's only when asked; the rest never
        wanted = body.get("stream")  # null: as if absent
        stream = path in STREAMING and (protocol == "ollama" if wanted is None else bool(wanted))
        answer = await gateway(request).forward(path, raw or b"{}", protocol=protocol, model=model, stream=stream,
                                                parsed=body, priority=priority,
                                                session=request.headers.get("x-clusterai-session"))
    except BackendsBusy as exc:
        return _error(protocol, exc.http_status, str(exc), {"Retry-After": str(max(1, round(exc.retry_after)))})
    except (ModelNotFound, GatewayRefused, UpstreamFailed) as exc:  # in the caller's protocol's shape
        return _error(protocol, exc.http_status, str(exc))
    if answer.stream is None:
        content = answer.content
        if path == "/api/show" and content and not _principal(request).can(Permission.ADMIN):
            content = without_paths(content, model)  # where a backend keeps its files is not theirs to know
        return Response(content, status_code=answer.status, headers=answer.headers)
    return StreamingResponse(answer.stream, status_code=answer.status, headers=answer.headers)


INFERENCE: dict[str, tuple[str, str, str]] = {  # the path a client calls: (backend path, protocol, summary)
    "/api/generate": ("/api/generate", "ollama", "Ollama: generate (NDJSON stream unless stream=false)"),
    "/api/chat": ("/api/chat", "ollama", "Ollama: chat"),
    "/api/embed": ("/api/embed", "ollama", "Ollama: embeddings"),
    "/api/embeddings": ("/api/embeddings", "ollama", "Ollama: embedding (legacy)"),
    "/api/show": ("/api/show", "ollama", "Ollama: a model's details"),
    "/v1/chat/completions": ("/v1/chat/completions", "openai", "OpenAI: chat completions (SSE when stream=true)"),
    "/v1/completions": ("/v1/completions", "openai", "OpenAI: completions"),
    "/v1/embeddings": ("/v1/embeddings", "openai", "OpenAI: embeddings"),
    "/api/v1/generate": ("/api/generate", "ollama",
                         "Generate with any model of the cluster (Ollama's request and answer)"),
}


async def infer(request: Request, path: str, protocol: str) -> Response:
    """One live request: authenticate it, then forward it. Errors, the token's included, come back
    in the protocol's own shape so that its client can show them."""
    try:
        await INFERS(request)
        return await _forward(request, path, protocol)
    except HTTPException as exc:
        return _error(protocol, exc.status_code, str(exc.detail), dict(exc.headers or {}))
    except StoreUnavailable as exc:
        return _error(protocol, 503, f"the store is unavailable: {exc}", {"Retry-After": "1"})
    except Exception as exc:  # the fast path has no FastAPI handler around it
        log.exception("internal error on %s", request.url.path)
        return _error(protocol, 500, f"internal error ({type(exc).__name__}); see the server log")


class InferenceFastPath:
    """Plain ASGI in front of the API's router for the inference paths: a live request skips route
    matching across every API route and FastAPI's dependency solving (about a third of the time the
    gateway added to a request). The size limit, counting and error handling around it still apply;
    the routes below stay declared for the API's schema and call the same `infer`."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.routes = {path: SimpleNamespace(path=path) for path in INFERENCE}  # what /metrics labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = INFERENCE.get(scope.get("path", "")) if scope["type"] == "http" else None
        if target is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[scope["path"]]
        response = await infer(Request(scope, receive), target[0], target[1])
        await response(scope, receive, send)


def _declare(client_path: str, path: str, protocol: str, summary: str) -> None:
    async def endpoint(request: Request) -> Response:
        return await infer(request, path, protocol)

    endpoint.__name__ = "gateway_" + client_path.strip("/").replace("/", "_")
    router.add_api_route(client_path, endpoint, methods=["POST"], summary=summary, response_model=None)


for _client_path, (_path, _protocol, _summary) in INFERENCE.items():
    _declare(_client_path, _path, _protocol, _summary)


@router.get("/api/tags", summary="Ollama: every model of every backend")
async def tags(request: Request, principal: Principal = Depends(LISTS)) -> dict[str, Any]:
    gw = gateway(request)
    await gw.fresh()
    return {"models": [{**gw.described(m["model"]), "name": m["model"], "model": m["model"],
                        "backends": [b["name"] for b in m["backends"]]} for m in gw.models()]}


@router.get("/api/ps", summary="Ollama: the models loaded on some backend, where, and until when")
async def ps(request: Request, principal: Principal = Depends(LISTS)) -> dict[str, Any]:
    gw = gateway(request)
    await gw.fresh()
    return {"models": gw.fleet.ps()}


@router.get("/api/version", summary="Ollama: version")
async def version(principal: Principal = Depends(LISTS)) -> dict[str, str]:
    return {"version": f"clusterai-{__version__}"}


@router.get("/v1/models", summary="OpenAI: models")
async def openai_models(request: Request, principal: Principal = Depends(LISTS)) -> dict[str, Any]:
    gw = gateway(request)
    await gw.fresh()
    return {"object": "list", "data": [{"id": m["model"], "object": "model", "created": 0, "owned_by": "clusterai"}
                                       for m in gw.models()]}


@router.get("/api/v1/models", summary="Every model, the backends that have it, and their state")
async def models(request: Request, principal: Principal = Depends(LISTS)) -> dict[str, Any]:
    gw = gateway(request)
    await gw.fresh()
    return {"models": gw.models(), "backends": gw.backends(), "queued": gw.router.queued}
