"""/api/v1/registry: the model registry (models, their versions, aliases, a version's bytes). Reading
needs `read`; pointing an alias (`production`, `staging`) or registering by hand needs `operate`."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.api.schemas import AliasRequest, RegisterRequest, body_schema, parse_body
from clusterai.service.access import Permission, Principal

router = APIRouter(prefix="/api/v1/registry", tags=["registry"])
Name = Path(min_length=1, max_length=128)
Ref = Path(min_length=1, max_length=128, description="a version number, an alias, or latest")


@router.get("", summary="Registered models: latest version, how many, aliases")
async def list_models(request: Request, principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    return {"models": await run_in_threadpool(context(request).model_registry.models)}


@router.post("/{name}", summary="Register a new version from an artifact already in the store", status_code=201,
             openapi_extra=body_schema(RegisterRequest))
async def register_model(request: Request, name: str = Name,
                         principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    body = parse_body(await request.body(), RegisterRequest)
    version = await run_in_threadpool(context(request).model_registry.register, name, body.artifact,
                                      params=body.params, metrics=body.metrics, alias=body.alias,
                                      created_by=principal.name, job_id=body.job_id)
    request.state.audit_target = f"model {name} version {version['version']}"
    return version


@router.get("/{name}/versions", summary="A model's versions, newest first")
async def model_versions(request: Request, name: str = Name, limit: int = Query(200, ge=1, le=10_000),
                         principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    versions = await run_in_threadpool(context(request).model_registry.versions, name, limit=limit)
    return {"name": name, "versions": versions}


@router.get("/{name}/versions/{ref}", summary="One version (by number, alias or latest)")
async def show_version(request: Request, name: str = Name, ref: str = Ref,
                       principal: Principal = Depends(require(Permission.READ))) -> dict[str, Any]:
    return await run_in_threadpool(context(request).model_registry.show, name, ref)


@router.get("/{name}/versions/{ref}/download", summary="A version's bytes, checked against its SHA-256")
async def download_version(request: Request, name: str = Name, ref: str = Ref,
                           principal: Principal = Depends(require(Permission.READ))) -> Response:
    version, data = await run_in_threadpool(context(request).model_registry.download, name, ref)
    filename = f"{version['name']}-v{version['version']}.bin"
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Clusterai-Sha256": hashlib.sha256(data).hexdigest(), "X-Clusterai-Version": str(version["version"])})


@router.put("/{name}/aliases/{alias}", summary="Point an alias (production, staging) at a version",
            openapi_extra=body_schema(AliasRequest))
async def set_alias(request: Request, name: str = Name, alias: str = Path(min_length=1, max_length=128),
                    principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    body = parse_body(await request.body(), AliasRequest)
    request.state.audit_target = f"model {name} alias {alias}"
    return await run_in_threadpool(context(request).model_registry.set_alias, name, alias, body.version)


@router.delete("/{name}/aliases/{alias}", summary="Remove an alias")
async def remove_alias(request: Request, name: str = Name, alias: str = Path(min_length=1, max_length=128),
                       principal: Principal = Depends(require(Permission.OPERATE))) -> dict[str, Any]:
    request.state.audit_target = f"model {name} alias {alias}"
    return await run_in_threadpool(context(request).model_registry.set_alias, name, alias, None)
