"""/api/v1/workers: the registry as the coordinator last saw it, and operator commands."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.core.model import WorkerRecord
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


def worker_dict(w: WorkerRecord) -> dict[str, Any]:
    return dataclasses.asdict(w)


async def find_worker(request: Request, name: str) -> WorkerRecord:
    return await run_in_threadpool(context(request).jobs.find_worker, name)


@router.get("", summary="Workers: labels, resources, load, breaker; all=true includes those gone")
async def list_workers(request: Request, all: bool = Query(False),
                       principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    workers = await run_in_threadpool(context(request).store.list_workers)
    return {"workers": [worker_dict(w) for w in workers if all or w.status != "gone"]}


@router.get("/{name}", summary="One worker by name or address")
async def get_worker(request: Request, name: str,
                     principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    return worker_dict(await find_worker(request, name))


async def _command(request: Request, name: str, action: str, wait: float) -> JSONResponse:
    worker, outcome = await context(request).jobs.command_worker_async(name, action, wait)
    request.state.audit_target = f"worker {worker.name} ({worker.address})"
    if outcome is None:
        return JSONResponse({"worker": worker.name, "action": action, "done": False,
                             "message": f"{action} requested; the coordinator has not acted on it within {wait:g} s"},
                            status_code=202)
    return JSONResponse({"worker": worker.name, "action": action, "done": True, "outcome": outcome})


def _add(action: str, summary: str) -> None:
    async def command(request: Request, name: str,
                      wait: float = Query(10.0, ge=0, le=120, description="seconds to wait for the coordinator"),
                      principal: Principal = Depends(require(Permission.OPERATE))) -> JSONResponse:
        return await _command(request, name, action, wait)

    router.add_api_route(f"/{{name}}/{action}", command, methods=["POST"], summary=summary, name=f"worker_{action}")


_add("drain", "Finish running jobs, take no new ones")
_add("undrain", "Put a drained worker back in rotation")
_add("remove", "Drain, then retire the worker once its jobs are done")
_add("restart", "Restart the worker process through its nanny")
