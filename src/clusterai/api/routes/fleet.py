"""The model fleet on the API server: Ollama's management endpoints (/api/pull, /api/delete,
/api/copy, /api/create) across the gateway's backends, and /api/v1/models/load and /unload. Each
changes what the backends hold, so each needs `operate` (an operator or admin token): a token that
may only infer cannot pull or delete. Errors come back as {"error": text}, which Ollama's clients
read. Pull and create stream NDJSON progress unless `stream` is false."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from clusterai.api.deps import context, require
from clusterai.api.schemas import (
    CopyRequest,
    DeleteRequest,
    LoadRequest,
    PullRequest,
    UnloadRequest,
    body_schema,
    parse_body,
    parse_json,
)
from clusterai.errors import BadInput
from clusterai.llm.gateway.fleet import Fleet
from clusterai.service.access import Permission, Principal

router = APIRouter(tags=["models"])
OPERATES = require(Permission.OPERATE)


def fleet(request: Request) -> Fleet:
    found: Fleet = context(request).gateway.fleet
    return found


async def _progress(lines: AsyncIterator[dict[str, Any]], stream: bool) -> Response:
    """NDJSON as it comes, or (stream false) the last line alone: 200 on success, else 502. The first
    line is awaited here, so that a refused request (no such backend, nothing can pull) is a 4xx."""
    first = await lines.__anext__()
    if not stream:
        last = first
        async for line in lines:
            last = line
        return JSONResponse(last, status_code=502 if "error" in last else 200)

    async def body() -> AsyncIterator[bytes]:
        yield (json.dumps(first) + "\n").encode()
        async for line in lines:
            yield (json.dumps(line) + "\n").encode()

    return StreamingResponse(body(), media_type="application/x-ndjson",
                             headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})


def _outcome(result: dict[str, Any]) -> JSONResponse:
    """200 when every backend did it; 502 when some failed (the answer says which did)."""
    status = 502 if result["failed"] else 200
    if result["failed"]:
        result = {"error": "failed on " + "; ".join(f"{n}: {e}" for n, e in sorted(result["failed"].items())),
                  **result}
    return JSONResponse(result, status_code=status)


@router.post("/api/pull", summary="Ollama: pull a model onto backends (chosen, N by free memory, or all)",
             openapi_extra=body_schema(PullRequest))
async def pull(request: Request, principal: Principal = Depends(OPERATES)) -> Response:
    body = parse_body(await request.body(), PullRequest)
    request.state.audit_target = f"model {body.model_name}"
    return await _progress(fleet(request).pull(body.model_name, backends=body.backends, replicas=body.replicas,
                                               insecure=body.insecure), body.stream)


@router.delete("/api/delete", summary="Ollama: delete a model from the backends that have it (or those chosen)",
               openapi_extra=body_schema(DeleteRequest))
async def delete(request: Request, principal: Principal = Depends(OPERATES)) -> Response:
    body = parse_body(await request.body(), DeleteRequest)
    request.state.audit_target = f"model {body.model_name}"
    return _outcome(await fleet(request).delete(body.model_name, backends=body.backends))


@router.post("/api/copy", summary="Ollama: copy a model under a new name, on each backend that has it",
             openapi_extra=body_schema(CopyRequest))
async def copy(request: Request, principal: Principal = Depends(OPERATES)) -> Response:
    body = parse_body(await request.body(), CopyRequest)
    request.state.audit_target = f"model {body.source} to {body.destination}"
    return _outcome(await fleet(request).copy(body.source, body.destination, backends=body.backends))


@router.post("/api/create", summary="Ollama: create a model (from another, with a system prompt, ...) on backends "
             "that support it")
async def create(request: Request, principal: Principal = Depends(OPERATES)) -> Response:
    data = parse_json(await request.body())
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object")
    backends = data.pop("backends", None)
    if backends is not None and not (isinstance(backends, list) and all(isinstance(b, str) for b in backends)):
        raise BadInput("'backends' must be a list of backend names")
    stream = data.get("stream", True) is not False
    request.state.audit_target = f"model {data.get('model') or data.get('name')}"
    return await _progress(fleet(request).create(data, backends=backends), stream)


@router.post("/api/v1/models/load", summary="Load a model on backends (Ollama's keep_alive; pinned by "
             "gateway.models unless given)", openapi_extra=body_schema(LoadRequest))
async def load(request: Request, principal: Principal = Depends(OPERATES)) -> Response:
    body = parse_body(await request.body(), LoadRequest)
    request.state.audit_target = f"model {body.model_name}"
    return _outcome(await fleet(request).load(body.model_name, backends=body.backends, replicas=body.replicas,
                                              keep_alive=body.keep_alive))


@router.post("/api/v1/models/unload", summary="Unload a model from the backends holding it (or those chosen)",
             openapi_extra=body_schema(UnloadRequest))
async def unload(request: Request, principal: Principal = Depends(OPERATES)) -> Response:
    body = parse_body(await request.body(), UnloadRequest)
    request.state.audit_target = f"model {body.model_name}"
    return _outcome(await fleet(request).unload(body.model_name, backends=body.backends))
