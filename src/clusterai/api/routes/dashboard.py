"""The dashboard: a login page that takes a token, a cookie session, logout, and the page itself
with its packaged assets (nothing from a CDN). The page talks to the same API with the cookie.
A failed sign-in, and a session cookie that is no good, count against the client's address like a
bad bearer token (deps.verify: throttled, audited)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from clusterai.api.deps import SESSION_COOKIE, check_address, verify
from clusterai.api.schemas import parse_json
from clusterai.service.access import Principal

STATIC = Path(__file__).resolve().parents[2] / "dashboard" / "static"
router = APIRouter(tags=["dashboard"], include_in_schema=False)

# Scripts and styles only from our own files: an injected <script> would not run even if some text
# escaped escaping.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _session(request: Request) -> Principal | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    check_address(request)
    return await verify(request, token)


@router.get("/")
async def index(request: Request) -> Response:
    if await _session(request) is None:
        return RedirectResponse("/login", status_code=303)
    return FileResponse(STATIC / "index.html", headers=HEADERS)


@router.get("/login")
async def login_page() -> Response:
    return FileResponse(STATIC / "login.html", headers=HEADERS)


@router.post("/login")
async def login(request: Request) -> Response:
    check_address(request)  # before anything is read: a throttled address gets no further
    data = parse_json(await request.body())
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise HTTPException(422, "send {\"token\": \"cai_...\"}")
    principal = await verify(request, token.strip())
    if principal is None:
        raise HTTPException(401, "the token is unknown, revoked or expired")
    request.state.principal = principal  # a sign-in is audited like any change
    answer = JSONResponse({"name": principal.name, "role": principal.role})
    answer.set_cookie(SESSION_COOKIE, token.strip(), httponly=True, samesite="strict",
                      secure=request.url.scheme == "https", path="/")
    return answer


@router.post("/logout")
async def logout() -> Response:
    answer = JSONResponse({"logged_out": True})
    answer.delete_cookie(SESSION_COOKIE, path="/")
    return answer


@router.get("/static/{name}")
async def static(name: str) -> Response:
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file() or name.endswith(".html"):
        raise HTTPException(404, "no such file")
    return FileResponse(path, headers=HEADERS)
