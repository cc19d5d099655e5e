"""/api/v1/jobs: submit (one or a batch), list with filters and a cursor, read, cancel, retry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import ApiContext, context, require
from clusterai.api.schemas import MAX_ID, BatchRequest, RequestInvalid, parse_json, parse_submission, submission_schema
from clusterai.core.model import AuditEntry, Job, JobSpec, State
from clusterai.errors import BadInput, JobNotFound
from clusterai.service.access import Permission, Principal
from clusterai.service.submission import spec_factory

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
JobId = Path(ge=1, le=MAX_ID)
StateName = Query(None, pattern="^(pending|queued|running|succeeded|dead|cancelled)$")


def parse_time(name: str, text: str | None) -> float | None:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RequestInvalid([{"field": f"query.{name}",
                               "message": f"{text!r} is neither epoch seconds nor an ISO 8601 time"}]) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def visible(job: Job, principal: Principal) -> bool:
    return principal.reads_everything or (job.owner is not None and job.owner == principal.name)


async def read_job(ctx: ApiContext, job_id: int, principal: Principal, attempts: bool = True) -> Job:
    job = await run_in_threadpool(ctx.store.get, job_id, attempts=attempts)
    if not visible(job, principal):
        raise JobNotFound(job_id)  # someone else's job: as if it did not exist
    return job


@router.post("", status_code=201, summary="Submit one job, or a batch as {\"jobs\": [...]}",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": submission_schema()}}}})
async def submit(request: Request, principal: Principal = Depends(require(Permission.SUBMIT))) -> JSONResponse:
    ctx = context(request)
    parsed = parse_submission(parse_json(await request.body()))
    items = parsed.jobs if isinstance(parsed, BatchRequest) else [parsed]
    specs = []
    makers: dict[tuple[Any, ...], Callable[..., JobSpec]] = {}  # options resolved once per kind of job
    for index, item in enumerate(items):
        try:
            kind = item.kind()
            make = makers.get(kind)
            if make is None:
                options = item.options()
                options.pop("idempotency_key", None)
                make = makers[kind] = spec_factory(ctx.config, item.task, owner=principal.name, **options)
            specs.append(make(item.payload, item.idempotency_key))
        except BadInput as exc:
            if isinstance(parsed, BatchRequest):
                exc.args = (f"jobs[{index}]: {exc}",)  # say which job of the batch is wrong
            raise
    if ctx.quota is not None:  # the whole batch, or none of it
        await ctx.quota.admit(principal.name, len(specs))
    audit = AuditEntry(principal.name, principal.role, "POST /api/v1/jobs", target=None, status=201,
                       detail=f"{len(specs)} job(s) of {', '.join(sorted({s.task for s in specs}))}")
    before = time.time()
    jobs = await ctx.writer.submit(specs, audit)
    request.state.audited = True
    if isinstance(parsed, BatchRequest):
        return JSONResponse({"count": len(jobs), "ids": [j.id for j in jobs]}, status_code=201)
    job = jobs[0]
    created = job.created_at >= before  # else an idempotency key returned an existing job
    return JSONResponse(job.to_dict(), status_code=201 if created else 200)


@router.get("", summary="List jobs with filters; newest first unless order=asc; page with the cursor")
async def list_jobs(
    request: Request,
    state: str | None = StateName,
    task: str | None = Query(None, max_length=200),
    queue: str | None = Query(None, max_length=200),
    worker: str | None = Query(None, max_length=300, description="name or address"),
    since: str | None = Query(None, description="created at or after: epoch seconds or ISO 8601"),
    until: str | None = Query(None, description="created before: epoch seconds or ISO 8601"),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    cursor: int | None = Query(None, ge=0, le=MAX_ID, description="next_cursor of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
    ids: str | None = Query(None, pattern=r"^[0-9]+(,[0-9]+)*$", max_length=20_000,
                            description="these jobs only: 1,2,3 (1,000 at most)"),
    principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN)),
) -> dict[str, Any]:
    ctx = context(request)
    if ids is not None:
        pieces = ids.split(",")
        if len(pieces) > 1000 or any(len(p) > 18 for p in pieces):
            raise RequestInvalid([{"field": "query.ids", "message": "at most 1,000 ids of at most 18 digits"}])
        wanted = [int(p) for p in pieces]
        found = await run_in_threadpool(ctx.store.get_many_found, wanted)
        return {"jobs": [j.to_dict() for j in found if visible(j, principal)], "next_cursor": None}
    newest_first = order == "desc"
    if worker is not None and "://" not in worker:  # a worker's name: jobs record its address
        known = await run_in_threadpool(ctx.store.list_workers)
        worker = next((w.address for w in known if w.name == worker), worker)
    jobs = await run_in_threadpool(
        ctx.store.list_jobs, state=State(state) if state else None, task=task, queue=queue, worker=worker,
        owner=None if principal.reads_everything else principal.name,
        since=parse_time("since", since), until=parse_time("until", until),
        after_id=None if newest_first else cursor, before_id=cursor if newest_first else None,
        newest_first=newest_first, limit=limit,
    )
    return {"jobs": [j.to_dict() for j in jobs],
            "next_cursor": jobs[-1].id if len(jobs) == limit else None}


@router.get("/{job_id}", summary="One job with every attempt; wait=N holds the answer until it ends (N s at most)")
async def get_job(
    request: Request,
    job_id: int = JobId,
    wait: float = Query(0, ge=0, le=300, description="seconds to wait for the job to end"),
    principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN)),
) -> dict[str, Any]:
    ctx = context(request)
    job = await read_job(ctx, job_id, principal)
    deadline = time.monotonic() + wait
    pause = 0.005
    while not job.state.terminal and time.monotonic() < deadline:
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.25)
        states = await run_in_threadpool(ctx.store.states_of, [job_id])
        if states.get(job_id, job.state).terminal:
            job = await read_job(ctx, job_id, principal)
    return job.to_dict()


@router.delete("/{job_id}", summary="Cancel a job (a running attempt is abandoned; a late result is ignored)")
async def cancel_job(request: Request, job_id: int = JobId,
                     principal: Principal = Depends(require(Permission.CANCEL))) -> dict[str, Any]:
    ctx = context(request)
    request.state.audit_target = f"job {job_id}"
    job = await run_in_threadpool(ctx.jobs.cancel, job_id)
    return job.to_dict()


@router.post("/{job_id}/retry", summary="Run a finished (dead, cancelled or succeeded) job again")
async def retry_job(request: Request, job_id: int = JobId,
                    principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    ctx = context(request)
    request.state.audit_target = f"job {job_id}"
    job = await run_in_threadpool(ctx.jobs.retry, job_id)
    return job.to_dict()
