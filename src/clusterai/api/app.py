"""The REST API: `create_app()` builds it on a store (and, inside `clusterai up`, beside the
coordinator, whose metrics it serves). Errors are translated here, at the edge: bad input is a 4xx
that says what is wrong, an unavailable store a 503 with Retry-After, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException

from clusterai import __version__
from clusterai.api.deps import ApiContext
from clusterai.api.edges import AuditAndCount, BodyEdges
from clusterai.api.metrics import StoreCollector
from clusterai.api.quota import QueuedQuota, StreamSlots
from clusterai.api.routes import (
    access,
    autoscale,
    cluster,
    counts,
    dashboard,
    dlq,
    docs,
    events,
    jobs,
    join,
    pipelines,
    sweeps,
    system,
    workers,
)
from clusterai.api.routes import fleet as fleet_routes
from clusterai.api.routes import gateway as gateway_routes
from clusterai.api.routes import (
    registry as registry_routes,
)
from clusterai.api.throttle import AuthThrottle
from clusterai.api.writer import SubmissionWriter
from clusterai.config import ClusterConfig
from clusterai.errors import (
    AuthRefused,
    ClusterAIError,
    LimitReached,
    MalformedRequest,
    NotFound,
    RequestInvalid,
    StoreUnavailable,
    TryLater,
    error_body,
)
from clusterai.llm.gateway.metrics import GatewayCollector
from clusterai.llm.gateway.service import Gateway
from clusterai.service.access import RateLimiter, TokenVerifier, retry_after_header
from clusterai.service.autoscale import AutoscaleService
from clusterai.service.jobs import JobService
from clusterai.service.join import JoinService
from clusterai.service.pipelines import Pipelines
from clusterai.service.registry import RegistryService
from clusterai.service.runs import PipelineRunner
from clusterai.service.sweeps import SweepService
from clusterai.store.protocol import JobStore

log = logging.getLogger("clusterai.api")


class _Forward(Collector):
    """Serves another registry's metrics (the coordinator's) from this one."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def _error(status_code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


# the code of an answer that Starlette or an auth dependency made (an HTTPException, no error class)
_HTTP_CODES = {401: AuthRefused.code, 403: AuthRefused.code, 404: NotFound.code, 405: "method_not_allowed",
               413: "body_too_large", 415: "unsupported_media_type", 429: LimitReached.code}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return await clusterai_error(request, MalformedRequest(
                "malformed JSON body: " + "; ".join(f["message"] for f in fields)))
        return await clusterai_error(request, RequestInvalid(fields))

    @app.exception_handler(ClusterAIError)
    async def clusterai_error(request: Request, exc: ClusterAIError) -> JSONResponse:
        """Every clusterai error, by its class (errors.py): status, code and details."""
        body, headers = error_body(exc), {}
        if isinstance(exc, TryLater):
            headers["Retry-After"] = retry_after_header(exc.retry_after)
        if isinstance(exc, StoreUnavailable):
            log.warning("store unavailable: %s", exc)
            body["error"] = "the job store is unavailable; try again shortly"
            headers["Retry-After"] = "2"
        return JSONResponse(body, status_code=exc.http_status, headers=headers or None)

    # Starlette's class, not FastAPI's subclass: the 404/405 of the router, FastAPI's own 400 for a
    # body it cannot read and the auth dependencies' 401/403/429 answer in the same shape
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, MalformedRequest.code if exc.status_code == 400 else "http_error")
        extra: dict[str, Any] = {"status": exc.status_code} if code == AuthRefused.code else {}
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}), code=code, **extra)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log", code="internal")


def _declare_bearer_auth(app: FastAPI) -> None:
    """The schema says what every client must send: a bearer token, except on the public routes."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            spec["security"] = [{"bearer": []}]
            for path in system.PUBLIC_PATHS:
                for operation in spec["paths"].get(path, {}).values():
                    operation["security"] = []
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


def create_app(
    store: JobStore,
    config: ClusterConfig,
    *,
    wake: Callable[[], None] | None = None,
    coordinator_registry: CollectorRegistry | None = None,
    dask_dashboard: str | None = None,
    worker_slots: Callable[[], Iterable[Any]] | None = None,
    joining: JoinService | None = None,
) -> FastAPI:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if coordinator_registry is not None:
        registry.register(_Forward(coordinator_registry))
    api = config.api
    jobs_service = JobService(store, config, wake=wake or (lambda: None))  # it tells the coordinator of new work
    ctx = ApiContext(store=store, config=config, verifier=TokenVerifier(store),
                     limiter=RateLimiter(api.rate_limit, api.rate_burst), jobs=jobs_service, registry=registry,
                     pipelines=Pipelines(PipelineRunner(store, config, wake=jobs_service.wake)),
                     writer=SubmissionWriter(jobs_service), dask_dashboard=dask_dashboard,
                     autoscale=AutoscaleService(store, config), join=joining,
                     sweeps=SweepService(store, config, wake=jobs_service.wake),
                     model_registry=RegistryService(store),
                     gateway=Gateway(config.gateway, worker_slots=worker_slots), worker_slots=worker_slots,
                     throttle=AuthThrottle(api.auth_failures, api.auth_failure_window),
                     streams=StreamSlots(api.max_streams_per_token),
                     quota=QueuedQuota(store, api.max_queued_per_token) if api.max_queued_per_token else None)
    app = FastAPI(title="clusterai", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  description="Durable AI jobs across every machine a team has. Every route but /healthz "
                              "and /readyz needs `Authorization: Bearer <token>`.")
    app.state.ctx = ctx
    registry.register(GatewayCollector(ctx.gateway))
    _add_error_handlers(app)
    for module in (jobs, dlq, workers, cluster, autoscale, join, events, access, pipelines, sweeps, registry_routes,
                   counts, system, docs, dashboard):
        app.include_router(module.router)
    app.include_router(gateway_routes.router)
    app.include_router(fleet_routes.router)
    _declare_bearer_auth(app)
    app.add_middleware(gateway_routes.InferenceFastPath)  # innermost: inside the limits and the counting
    app.add_middleware(AuditAndCount, store=store, registry=registry)
    app.add_middleware(BodyEdges, max_bytes=api.max_body_bytes)
    return app
