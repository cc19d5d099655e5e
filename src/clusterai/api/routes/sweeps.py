"""/api/v1/sweeps: hyper-parameter sweeps (start, list, status with every trial's learning curve,
best trial, a trial's reported series, cancel, resume). A submitter sees and starts its own; reading
every sweep needs `read`, cancelling `cancel`, resuming `operate`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.api.schemas import MAX_ID, SweepRequest, body_schema, parse_body
from clusterai.errors import SweepNotFound
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1/sweeps", tags=["sweeps"])
SweepId = Path(ge=1, le=MAX_ID)
READERS = (Permission.READ, Permission.READ_OWN)


def _may_see(principal: Principal, owner: str | None) -> bool:
    return principal.can(Permission.READ) or owner == principal.name


@router.post("", summary="Start a sweep: trials of an objective task over a search space", status_code=201,
             openapi_extra=body_schema(SweepRequest))
async def start_sweep(request: Request, principal: Principal = Depends(require(Permission.SUBMIT))) -> JSONResponse:
    body = parse_body(await request.body(), SweepRequest)
    status = await run_in_threadpool(context(request).sweeps.start, body.definition(), owner=principal.name)
    request.state.audit_target = f"sweep {status['id']}"
    return JSONResponse(status, status_code=201)


@router.get("", summary="Sweeps, newest first, with their trial counts and best trial")
async def list_sweeps(
    request: Request,
    state: str | None = Query(None, pattern="^(running|succeeded|failed|cancelled)$"),
    limit: int = Query(50, ge=1, le=1000),
    principal: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    owner = None if principal.can(Permission.READ) else principal.name
    sweeps = await run_in_threadpool(context(request).sweeps.list, state=state, owner=owner, limit=limit)
    return {"sweeps": sweeps}


async def _visible(request: Request, sweep_id: int, principal: Principal, *, curves: bool = True) -> dict[str, Any]:
    status = await run_in_threadpool(context(request).sweeps.status, sweep_id, curves=curves)
    if not _may_see(principal, status["owner"]):
        raise SweepNotFound(sweep_id)  # as if it did not exist: ids are not a way to probe others' sweeps
    return status


@router.get("/{sweep_id}", summary="A sweep: its definition, counts, best trial and every trial with its curve")
async def sweep_status(request: Request, sweep_id: int = SweepId,
                       curves: bool = Query(True, description="include each trial's learning curve"),
                       principal: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    return await _visible(request, sweep_id, principal, curves=curves)


@router.get("/{sweep_id}/best", summary="The best finished trial so far (null before one has succeeded)")
async def sweep_best(request: Request, sweep_id: int = SweepId,
                     principal: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    status = await _visible(request, sweep_id, principal, curves=False)
    return {"sweep": sweep_id, "state": status["state"], "best": status["best"]}


@router.get("/{sweep_id}/trials/{number}/metrics", summary="Everything a trial reported, step by step")
async def trial_metrics(request: Request, sweep_id: int = SweepId, number: int = Path(ge=0, le=100_000),
                        principal: Principal = Depends(require(*READERS))) -> dict[str, Any]:
    await _visible(request, sweep_id, principal, curves=False)
    points = await run_in_threadpool(context(request).sweeps.trial_metrics, sweep_id, number)
    return {"sweep": sweep_id, "trial": number, "metrics": points}


async def _change(request: Request, sweep_id: int, action: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    request.state.audit_target = f"sweep {sweep_id}"
    return await run_in_threadpool(action, sweep_id)


@router.post("/{sweep_id}/cancel", summary="Cancel a sweep: no new trials, its unfinished trials cancelled")
async def cancel_sweep(request: Request, sweep_id: int = SweepId,
                       principal: Principal = Depends(require(Permission.CANCEL))) -> dict[str, Any]:
    return await _change(request, sweep_id, context(request).sweeps.cancel)


@router.post("/{sweep_id}/resume", summary="Resume a cancelled or failed sweep from its trials' checkpoints")
async def resume_sweep(request: Request, sweep_id: int = SweepId,
                       principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    return await _change(request, sweep_id, context(request).sweeps.resume)
