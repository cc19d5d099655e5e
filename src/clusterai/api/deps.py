"""What the routes share: the API context (store, config, auth), and the dependencies that
authenticate a request and check its role."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from clusterai.api.auth import Permission, Principal, RateLimiter, TokenVerifier, retry_after_header
from clusterai.api.writer import SubmissionWriter
from clusterai.client import Client
from clusterai.config import ClusterConfig
from clusterai.jobs.store import JobStore


@dataclass
class ApiContext:
    store: JobStore
    config: ClusterConfig
    verifier: TokenVerifier
    limiter: RateLimiter
    client: Client
    registry: CollectorRegistry
    writer: SubmissionWriter
    wake: Callable[[], None] = lambda: None
    dask_dashboard: str | None = None  # the Dask dashboard's address, when it is served
    gateway: Any = None  # gateway.service.Gateway: live LLM requests
    # a credential for inference only, made at start and kept in memory: the coordinator hands it to
    # the attempts of tasks that call the gateway (llm.generate, llm.embed)
    jobs_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


SESSION_COOKIE = "clusterai_session"
CSRF_HEADER = "x-clusterai-request"  # a header a cross-site form cannot send (and we allow no CORS)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def _presented_token(request: Request) -> str | None:
    """The bearer token, or the dashboard's session cookie. A change made with the cookie must also
    carry CSRF_HEADER: a page elsewhere can make a browser send the cookie, not that header."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.method not in _SAFE and request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(403, f"a change made with the session cookie must carry the {CSRF_HEADER} header")
    return cookie or None


async def authenticate(request: Request) -> Principal:
    ctx = context(request)
    text = _presented_token(request)
    if not text:
        raise HTTPException(401, "a token is required: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    # a cached record is checked on the loop; only a cache miss reads the store, off the loop
    principal = ctx.verifier.verify_cached(text)
    if principal is False:
        principal = await run_in_threadpool(ctx.verifier.verify, text)
    if not isinstance(principal, Principal):
        raise HTTPException(401, "the token is unknown, revoked or expired", headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    wait = ctx.limiter.check(principal.token_id)
    if wait > 0:
        raise HTTPException(429, f"rate limit of {ctx.limiter.rate:g} requests/s for this token reached",
                            headers={"Retry-After": retry_after_header(wait)})
    return principal


def require(*permissions: Permission) -> Callable[..., Any]:
    """A dependency that lets the request through if its token's role has any of `permissions`."""
    wanted = " or ".join(p.value for p in permissions)

    async def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not any(principal.can(p) for p in permissions):
            raise HTTPException(403, f"role {principal.role!r} may not do this (needs {wanted})")
        return principal

    return check
