"""/api/v1/counts: camera count series (totals reported at each checkpoint of a counting job)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.api.schemas import MAX_ID
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1/counts", tags=["counts"])


@router.get("", summary="Count series: the latest totals per counting job, and the points asked for")
async def list_counts(
    request: Request,
    job: int | None = Query(None, ge=1, le=MAX_ID, description="one counting job"),
    camera: str | None = Query(None, max_length=200),
    since: float | None = Query(None, ge=0, description="unix time, inclusive"),
    until: float | None = Query(None, ge=0, description="unix time, exclusive"),
    limit: int = Query(1000, ge=1, le=100_000),
    principal: Principal = Depends(require(Permission.READ)),
) -> dict[str, Any]:
    return await run_in_threadpool(context(request).jobs.camera_counts, job=job, camera=camera, since=since,
                                   until=until, limit=limit)
