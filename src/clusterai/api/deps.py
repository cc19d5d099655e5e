"""What the routes share: the API context (store, config, auth), and the dependencies that
authenticate a request and check its role."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from clusterai.api.credentials import WorkerCredentials
from clusterai.api.quota import QueuedQuota, StreamSlots
from clusterai.api.throttle import AuthThrottle, client_key
from clusterai.api.writer import SubmissionWriter
from clusterai.config import ClusterConfig
from clusterai.errors import StoreUnavailable
from clusterai.service.access import Permission, Principal, RateLimiter, TokenVerifier, retry_after_header
from clusterai.service.autoscale import AutoscaleService
from clusterai.service.jobs import JobService
from clusterai.service.join import JoinService
from clusterai.service.pipelines import Pipelines
from clusterai.service.registry import RegistryService
from clusterai.service.sweeps import SweepService
from clusterai.store.protocol import JobStore

log = logging.getLogger("clusterai.api")


@dataclass
class ApiContext:
    store: JobStore
    config: ClusterConfig
    verifier: TokenVerifier
    limiter: RateLimiter
    jobs: JobService  # the job operations (service/jobs.py), shared with the Python client and the CLI
    pipelines: Pipelines
    autoscale: AutoscaleService
    sweeps: SweepService
    model_registry: RegistryService  # `registry` is the metrics registry
    registry: CollectorRegistry
    writer: SubmissionWriter
    dask_dashboard: str | None = None  # the Dask dashboard's address, when it is served
    gateway: Any = None  # gateway.service.Gateway: live LLM requests
    throttle: AuthThrottle = field(default_factory=lambda: AuthThrottle(10, 60.0))
    streams: StreamSlots = field(default_factory=lambda: StreamSlots(4))
    quota: QueuedQuota | None = None  # unfinished jobs per token (None: no limit)
    # the coordinator's live registry (slots with .address and .status); None without a coordinator
    worker_slots: Callable[[], Iterable[Any]] | None = None
    # inference-only credentials for batch workers, one per worker, from a secret made at start and
    # kept in memory: the coordinator hands each worker's to the attempts of tasks that call the
    # gateway (llm.generate, llm.embed); see credentials.py
    credentials: WorkerCredentials = field(default_factory=WorkerCredentials)
    join: JoinService | None = None  # a head with its CA key enrolls machines (`clusterai join`)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


SESSION_COOKIE = "clusterai_session"
CSRF_HEADER = "x-clusterai-request"  # a header a cross-site form cannot send (and we allow no CORS)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def presented_token(request: Request) -> str | None:
    """The bearer token, or the dashboard's session cookie. A change made with the cookie must also
    carry CSRF_HEADER: a page elsewhere can make a browser send the cookie, not that header."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.method not in _SAFE and request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(403, f"a change made with the session cookie must carry the {CSRF_HEADER} header")
    return cookie or None


def _address(request: Request) -> str:
    return client_key(request.client.host if request.client else None)


def check_address(request: Request) -> None:
    """429 for a client address throttled after too many failed authentications (throttle.py)."""
    ctx = context(request)
    wait = ctx.throttle.blocked(_address(request))
    if wait > 0:
        raise HTTPException(429, "too many failed authentications from this address; every request from it is "
                                 "refused for a while", headers={"Retry-After": retry_after_header(wait)})


async def count_failure(request: Request, presented: str | None) -> None:
    """Count a failed authentication against the client's address, and write the audit records that
    calls for (aggregated: see throttle.py). The presented text itself is never written or logged."""
    ctx = context(request)
    records = ctx.throttle.failed(_address(request), presented, f"{request.method} {request.url.path}")
    if not records:
        return
    try:
        await run_in_threadpool(ctx.store.record_audit, records, time.time())
    except StoreUnavailable as exc:
        log.error("audit of a failed authentication not written (store unavailable): %s", exc)


async def verify(request: Request, text: str) -> Principal | None:
    """The token's principal (a cached record is checked on the loop; only a cache miss reads the
    store, off the loop); None, counted as a failure, for a token that is not good."""
    ctx = context(request)
    principal = ctx.verifier.verify_cached(text)
    if principal is False:
        principal = await run_in_threadpool(ctx.verifier.verify, text)
    if isinstance(principal, Principal):
        return principal
    await count_failure(request, text)
    return None


def check_rate(ctx: ApiContext, principal: Principal) -> None:
    wait = ctx.limiter.check(principal.token_id)
    if wait > 0:
        raise HTTPException(429, f"rate limit of {ctx.limiter.rate:g} requests/s for this token reached",
                            headers={"Retry-After": retry_after_header(wait)})


async def authenticate(request: Request) -> Principal:
    check_address(request)
    text = presented_token(request)
    if not text:
        raise HTTPException(401, "a token is required: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    principal = await verify(request, text)
    if principal is None:
        why = await run_in_threadpool(context(request).verifier.refusal, text)
        raise HTTPException(401, why, headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    check_rate(context(request), principal)
    return principal


def require(*permissions: Permission) -> Callable[..., Any]:
    """A dependency that lets the request through if its token's role has any of `permissions`."""
    wanted = " or ".join(p.value for p in permissions)

    async def check(principal: Principal = Depends(authenticate)) -> Principal:
        if not any(principal.can(p) for p in permissions):
            raise HTTPException(403, f"role {principal.role!r} may not do this (needs {wanted})")
        return principal

    return check
