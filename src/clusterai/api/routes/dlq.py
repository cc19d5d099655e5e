"""/api/v1/dlq: dead letters (jobs that used up their attempts or failed for good), and requeue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.api.schemas import MAX_ID, RequeueRequest, body_schema, parse_body
from clusterai.core.model import State
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1/dlq", tags=["dead letters"])


@router.get("", summary="Dead letters, newest first; page with the cursor")
async def list_dead(
    request: Request,
    task: str | None = Query(None, max_length=200),
    cursor: int | None = Query(None, ge=0, le=MAX_ID),
    limit: int = Query(100, ge=1, le=1000),
    principal: Principal = Depends(require(Permission.READ)),
) -> dict[str, Any]:
    jobs = await run_in_threadpool(context(request).store.list_jobs, state=State.DEAD, task=task,
                                   before_id=cursor, newest_first=True, limit=limit)
    return {"jobs": [j.to_dict() for j in jobs], "next_cursor": jobs[-1].id if len(jobs) == limit else None}


@router.post("/requeue", summary="Put dead letters back in the queue: the ids given, or all",
             openapi_extra=body_schema(RequeueRequest))
async def requeue(request: Request, principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    ctx = context(request)
    body = parse_body(await request.body(), RequeueRequest)
    ids = await run_in_threadpool(ctx.jobs.requeue_dead, body.ids, everything=body.all)
    request.state.audit_target = f"{len(ids)} dead letters"
    return {"requeued": ids}
