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
from clusterai.api.quota import QueuedQuota, StreamSlots
from clusterai.api.routes import (
    access,
    cluster,
    counts,
    dashboard,
    dlq,
    docs,
    events,
    jobs,
    pipelines,
    system,
    workers,
)
from clusterai.api.routes import gateway as gateway_routes
from clusterai.api.schemas import MalformedJSON, RequestInvalid, validation_message
from clusterai.api.throttle import AuthThrottle
from clusterai.api.writer import SubmissionWriter
from clusterai.config import ClusterConfig
from clusterai.errors import (
    BadInput,
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    LimitReached,
    RunNotFound,
    StoreUnavailable,
    UnknownTaskError,
)
from clusterai.head.metrics import StoreCollector
from clusterai.llm.gateway.metrics import GatewayCollector
from clusterai.llm.gateway.service import Gateway
from clusterai.sdk.local import Client
from clusterai.service.access import RateLimiter, TokenVerifier, retry_after_header
from clusterai.store.protocol import JobStore

log = logging.getLogger("clusterai.api")


class _Forward(Collector):
    """Serves another registry's metrics (the coordinator's) from this one."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return _error(400, "malformed JSON body: " + "; ".join(f["message"] for f in fields), fields=fields)
        return _error(422, validation_message(fields), fields=fields)

    @app.exception_handler(MalformedJSON)
    async def malformed(request: Request, exc: MalformedJSON) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestInvalid)
    async def invalid_body(request: Request, exc: RequestInvalid) -> JSONResponse:
        return _error(422, str(exc), fields=exc.fields)

    @app.exception_handler(UnknownTaskError)
    async def unknown_task(request: Request, exc: UnknownTaskError) -> JSONResponse:
        return _error(422, str(exc), known_tasks=exc.known)

    @app.exception_handler(IdempotencyConflict)
    async def conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _error(409, str(exc), job=exc.job_id)

    @app.exception_handler(InvalidTransition)
    async def transition(request: Request, exc: InvalidTransition) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(LimitReached)
    async def limit_reached(request: Request, exc: LimitReached) -> JSONResponse:
        return _error(429, str(exc), headers={"Retry-After": retry_after_header(exc.retry_after)})

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(RunNotFound)
    async def run_not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable: %s", exc)
        return _error(503, "the job store is unavailable; try again shortly", headers={"Retry-After": "2"})

    # Starlette's class, not FastAPI's subclass: the 404/405 of the router and FastAPI's own 400 for a
    # body it cannot read are Starlette HTTPExceptions, and answer in the same {"error": ...} shape
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


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
) -> FastAPI:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if coordinator_registry is not None:
        registry.register(_Forward(coordinator_registry))
    api = config.api
    client = Client(store, config, runtime=None)
    ctx = ApiContext(store=store, config=config, verifier=TokenVerifier(store),
                     limiter=RateLimiter(api.rate_limit, api.rate_burst), client=client, registry=registry,
                     writer=SubmissionWriter(client), wake=wake or (lambda: None), dask_dashboard=dask_dashboard,
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
    for module in (jobs, dlq, workers, cluster, events, access, pipelines, counts, system, docs, dashboard):
        app.include_router(module.router)
    app.include_router(gateway_routes.router)
    _declare_bearer_auth(app)
    app.add_middleware(gateway_routes.InferenceFastPath)  # innermost: inside the limits and the counting
    app.add_middleware(AuditAndCount, store=store, registry=registry)
    app.add_middleware(BodyEdges, max_bytes=api.max_body_bytes)
    return app
