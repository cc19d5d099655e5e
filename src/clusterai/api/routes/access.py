"""/api/v1/tokens (admin), /api/v1/audit (admin) and /api/v1/whoami."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import authenticate, context, require
from clusterai.api.schemas import MAX_ID, TokenRequest, body_schema, parse_body
from clusterai.service.access import Permission, Principal, new_token

router = APIRouter(prefix="/api/v1", tags=["access"])


@router.get("/whoami", summary="The calling token's name and role")
async def whoami(principal: Principal = Depends(authenticate)) -> dict[str, Any]:
    return {"token_id": principal.token_id, "name": principal.name, "role": principal.role,
            "permissions": sorted(p.value for p in Permission if principal.can(p))}


@router.get("/tokens", summary="Every token (never their secrets)")
async def list_tokens(request: Request, principal: Principal = Depends(require(Permission.ADMIN))) -> dict[str, Any]:
    tokens = await run_in_threadpool(context(request).store.list_tokens)
    return {"tokens": [t.to_dict() for t in tokens]}


@router.post("/tokens", status_code=201, summary="Create a token; its text is in this answer only",
             openapi_extra=body_schema(TokenRequest))
async def create_token(request: Request, principal: Principal = Depends(require(Permission.ADMIN))) -> JSONResponse:
    body = parse_body(await request.body(), TokenRequest)
    text, record = new_token(body.name, body.role, created_by=principal.name, expires_in=body.expires_in,
                             uses=body.uses)
    await run_in_threadpool(context(request).store.add_token, record)
    request.state.audit_target = f"token {record.id} ({record.name}, {record.role})"
    return JSONResponse({"token": text, **record.to_dict()}, status_code=201)


@router.delete("/tokens/{token_id}", summary="Revoke a token at once")
async def revoke_token(request: Request, token_id: str,
                       principal: Principal = Depends(require(Permission.ADMIN))) -> dict[str, Any]:
    ctx = context(request)
    request.state.audit_target = f"token {token_id}"
    record = await run_in_threadpool(ctx.store.revoke_token, token_id, time.time())
    ctx.verifier.forget(token_id)
    return record.to_dict()


@router.get("/audit", summary="Every mutating call: who, what, when, and how it ended; newest first")
async def audit(
    request: Request,
    actor: str | None = Query(None, max_length=100),
    since: float | None = Query(None, ge=0),
    cursor: int | None = Query(None, ge=0, le=MAX_ID),
    limit: int = Query(100, ge=1, le=1000),
    principal: Principal = Depends(require(Permission.ADMIN)),
) -> dict[str, Any]:
    entries = await run_in_threadpool(context(request).store.list_audit, actor=actor, since=since,
                                      before_id=cursor, limit=limit)
    return {"entries": entries, "next_cursor": entries[-1]["id"] if len(entries) == limit else None}
