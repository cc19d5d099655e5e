"""/api/v1/join: a new machine's identity for its join token (`clusterai join`). The CA is public
(the joining side checks it against the fingerprint in its join code before it trusts anything);
the identity is handed out only over TLS that the CA verifies, to a join token with a use left."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from clusterai.api.deps import context, require
from clusterai.service.access import Permission, Principal
from clusterai.service.join import JoinService

router = APIRouter(prefix="/api/v1/join", tags=["join"])


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=63, description="the machine's name: its certificate and token")


def _service(request: Request) -> JoinService:
    service = context(request).join
    if service is None:
        raise HTTPException(404, "this API does not enroll machines: run it on a head with --tls-dir and the CA "
                                 "key (clusterai scheduler --tls-dir DIR)")
    return service


@router.get("/ca", summary="The cluster's CA certificate and its SHA-256 fingerprint (no token needed)")
async def join_ca(request: Request) -> dict[str, str]:
    return _service(request).ca()


@router.post("", summary="Trade a join token for a worker certificate, key and enrollment token")
async def join(request: Request, body: JoinRequest,
               principal: Principal = Depends(require(Permission.JOIN))) -> dict[str, Any]:
    service = _service(request)
    if request.url.scheme != "https":
        raise HTTPException(403, "joining hands out a private key: only over HTTPS (api.tls_cert)")
    request.state.audit_target = f"node {body.node}"
    return await run_in_threadpool(service.join, principal, body.node)
