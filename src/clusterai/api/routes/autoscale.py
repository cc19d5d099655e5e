"""/api/v1/autoscale: what the autoscaler reports and decided (viewers), and the operator's switch
and bounds (operators). A change is written to the store; the head applies it at its next round."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.service.access import Permission, Principal
from clusterai.service.autoscale import MAX_WORKERS

router = APIRouter(prefix="/api/v1/autoscale", tags=["autoscale"])


class AutoscaleChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(description="true: decide and act; false: leave the workers as they are")
    min: int | None = Field(None, ge=0, le=MAX_WORKERS, description="new lower bound for the profile")
    max: int | None = Field(None, ge=0, le=MAX_WORKERS, description="new upper bound for the profile")
    profile: str | None = Field(None, max_length=63, description="which profile; optional when there is one")


@router.get("", summary="Per profile: workers, desired, bounds and why; recent samples and decisions")
async def autoscale_status(request: Request, decisions: int = Query(50, ge=0, le=1000),
                           principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    return await run_in_threadpool(context(request).autoscale.status, decisions)


@router.put("", summary="Enable (optionally with new min/max for a profile) or disable the autoscaler")
async def autoscale_change(request: Request, body: AutoscaleChange,
                           principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    request.state.audit_target = "autoscale"
    override = await run_in_threadpool(context(request).autoscale.set, enabled=body.enabled, minimum=body.min,
                                       maximum=body.max, profile=body.profile)
    return {"override": override}
