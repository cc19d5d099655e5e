"""/api/v1/pipelines: the pipelines this cluster knows, and their runs (start, status with per-stage
progress, outputs, cancel, retry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.api.schemas import MAX_ID, PipelineRunRequest, body_schema, parse_body
from clusterai.core.pipelines import Pipeline
from clusterai.errors import BadInput, RunNotFound
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1/pipelines", tags=["pipelines"])
RunId = Path(ge=1, le=MAX_ID)


def _may_see(principal: Principal, owner: str | None) -> bool:
    return principal.can(Permission.READ) or owner == principal.name


@router.get("", summary="Pipelines: built in and from cluster.yaml, with their stages")
async def list_pipelines(request: Request,
                         principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN))
                         ) -> dict[str, Any]:
    return {"pipelines": await run_in_threadpool(context(request).pipelines.list)}


@router.get("/runs", summary="Pipeline runs, newest first")
async def list_runs(
    request: Request,
    name: str | None = Query(None, max_length=200),
    state: str | None = Query(None, pattern="^(running|succeeded|failed|cancelled)$"),
    limit: int = Query(50, ge=1, le=1000),
    principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN)),
) -> dict[str, Any]:
    runs = await run_in_threadpool(context(request).pipelines.runs, name=name, state=state, limit=limit)
    return {"runs": [r for r in runs if _may_see(principal, r["owner"])]}


async def _start(request: Request, principal: Principal, name: str | None) -> JSONResponse:
    ctx = context(request)
    body = parse_body(await request.body(), PipelineRunRequest)
    if name is not None and body.pipeline is not None:
        raise BadInput("give either a pipeline name in the path or a 'pipeline' definition, not both")
    if name is None and body.pipeline is None:
        raise BadInput("a 'pipeline' definition is required (or POST /api/v1/pipelines/NAME/runs)")
    target: Pipeline | str = name if name is not None else Pipeline.from_dict(
        str((body.pipeline or {}).get("name") or "inline"), body.pipeline)
    status = await run_in_threadpool(ctx.pipelines.run, target, body.input, fresh=body.fresh,
                                     owner=principal.name)
    request.state.audit_target = f"pipeline run {status['id']}"
    return JSONResponse(status, status_code=201)


@router.post("/runs", summary="Start a run of a pipeline defined in the body", status_code=201,
             openapi_extra=body_schema(PipelineRunRequest))
async def start_inline(request: Request, principal: Principal = Depends(require(Permission.SUBMIT))) -> JSONResponse:
    return await _start(request, principal, None)


@router.post("/{name}/runs", summary="Start a run of a named pipeline", status_code=201,
             openapi_extra=body_schema(PipelineRunRequest))
async def start_named(request: Request, name: str = Path(max_length=200),
                      principal: Principal = Depends(require(Permission.SUBMIT))) -> JSONResponse:
    return await _start(request, principal, name)


async def _visible_status(request: Request, run_id: int, principal: Principal) -> dict[str, Any]:
    status = await run_in_threadpool(context(request).pipelines.status, run_id)
    if not _may_see(principal, status["owner"]):
        raise RunNotFound(run_id)  # as if it did not exist: ids are not a way to probe others' runs
    return status


@router.get("/runs/{run_id}", summary="A run: state, per-stage progress, every stage job")
async def run_status(request: Request, run_id: int = RunId,
                     principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN))
                     ) -> dict[str, Any]:
    return await _visible_status(request, run_id, principal)


@router.get("/runs/{run_id}/outputs", summary="A stage's results in item order (default: the last stage)")
async def run_outputs(request: Request, run_id: int = RunId, stage: str | None = Query(None, max_length=200),
                      principal: Principal = Depends(require(Permission.READ, Permission.READ_OWN))
                      ) -> dict[str, Any]:
    await _visible_status(request, run_id, principal)
    outputs = await run_in_threadpool(context(request).pipelines.outputs, run_id, stage)
    return {"run": run_id, "outputs": outputs}


async def _change(request: Request, run_id: int, action: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    request.state.audit_target = f"pipeline run {run_id}"
    return await run_in_threadpool(action, run_id)


@router.delete("/runs/{run_id}", summary="Cancel a run: its unfinished stage jobs are cancelled")
async def cancel_run(request: Request, run_id: int = RunId,
                     principal: Principal = Depends(require(Permission.CANCEL))) -> dict[str, Any]:
    return await _change(request, run_id, context(request).pipelines.cancel)


@router.post("/runs/{run_id}/retry", summary="Run a finished run's failed stage jobs again")
async def retry_run(request: Request, run_id: int = RunId,
                    principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    return await _change(request, run_id, context(request).pipelines.retry)
