"""/api/v1/cluster/status: the cluster in one answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.service.access import Permission, Principal
from clusterai.service.status import cluster_status, history

router = APIRouter(prefix="/api/v1/cluster", tags=["cluster"])


@router.get("/status", summary="Workers, queue depth per queue and priority, throughput, latency, error rate")
async def status(request: Request,
                 window: float = Query(60.0, ge=1, le=86400, description="seconds of history for the rates"),
                 principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    ctx = context(request)
    status = await run_in_threadpool(cluster_status, ctx.store, window, None, ctx.config.alerts)
    status["dask_dashboard"] = ctx.dask_dashboard
    return status


@router.get("/history", summary="Per minute: jobs that succeeded and their mean latency (the dashboard's charts)")
async def history_route(request: Request, minutes: int = Query(60, ge=1, le=1440),
                        principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    return {"minutes": await run_in_threadpool(history, context(request).store, minutes)}
