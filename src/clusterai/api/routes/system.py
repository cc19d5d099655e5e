"""Health (no token), readiness (no token), Prometheus metrics and the task catalogue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.core.tasks import describe_tasks
from clusterai.errors import StoreUnavailable
from clusterai.service.access import Permission, Principal

router = APIRouter(tags=["system"])

# The routes anyone may call without a token; everything else needs one (the test suite checks).
# "/" answers without a session only with a redirect to the login page.
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/login", "/logout", "/static/{name}", "/",
                          "/api/v1/join/ca"})


@router.get("/healthz", summary="The API process is alive (no token needed)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/livez", summary="The process answers: touches neither the store nor a GPU (a liveness probe)")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", summary="The API can read its store (no token needed)")
async def readyz(request: Request) -> JSONResponse:
    try:
        await run_in_threadpool(context(request).store.event_bounds)
    except StoreUnavailable:
        return JSONResponse({"status": "unavailable", "store": "unreachable"}, status_code=503,
                            headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, principal: Principal = Depends(require(Permission.READ))) -> Response:
    text = await run_in_threadpool(generate_latest, context(request).registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/tasks", summary="Registered tasks with their payload schemas")
async def tasks(principal: Principal = Depends(require(Permission.READ, Permission.SUBMIT))) -> dict[str, Any]:
    return {"tasks": describe_tasks()}
