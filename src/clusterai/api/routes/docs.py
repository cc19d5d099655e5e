"""/openapi.json and /docs behind the same tokens as the rest of the API (FastAPI serves them
openly by default). /docs is rendered here from the schema, with no JavaScript and nothing
fetched from a CDN: it must work on a cluster with no internet."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from clusterai.api.deps import authenticate
from clusterai.service.access import Principal

router = APIRouter(tags=["docs"])
_METHODS = ("get", "post", "put", "patch", "delete")


@router.get("/openapi.json", summary="The OpenAPI schema of this API", include_in_schema=False)
async def openapi(request: Request, principal: Principal = Depends(authenticate)) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def _fields(schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    if not props:
        variants = schema.get("oneOf") or schema.get("anyOf") or []
        return "<br>or ".join(_fields(v) for v in variants) if variants else ""
    required = set(schema.get("required") or ())
    return ", ".join(f"<code>{html.escape(name)}</code>{'*' if name in required else ''}" for name in props)


def render_docs(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method in _METHODS:
            op = operations.get(method)
            if op is None:
                continue
            params = ", ".join(
                f"<code>{html.escape(p['name'])}</code> ({html.escape(p.get('in', ''))})"
                for p in op.get("parameters", [])
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            rows.append(
                f"<tr><td><b>{method.upper()}</b></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op.get('summary', ''))}</td><td>{params}</td>"
                f"<td>{_fields(body) if body else ''}</td></tr>"
            )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>clusterai API</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}"
        "code{background:#f4f4f4;padding:0 .2em}</style></head><body>"
        f"<h1>{html.escape(info.get('title', 'API'))} {html.escape(str(info.get('version', '')))}</h1>"
        f"<p>{html.escape(info.get('description', ''))}</p>"
        "<p>The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>. "
        "Fields marked * are required.</p>"
        "<table><tr><th>method</th><th>path</th><th>what it does</th><th>parameters</th><th>body fields</th></tr>"
        + "".join(rows) + "</table></body></html>"
    )


@router.get("/docs", summary="The API reference, rendered from the schema", include_in_schema=False)
async def docs(request: Request, principal: Principal = Depends(authenticate)) -> HTMLResponse:
    return HTMLResponse(render_docs(request.app.openapi()))
