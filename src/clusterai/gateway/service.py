"""The gateway: keeps each backend's model list fresh (through /api/tags and /api/ps, or
/v1/models; never a generation), forwards a request to the backend the router picks, and
passes the answer through as it arrives. A backend that fails before the first byte reached the
client is left for another; once bytes flowed, an error ends the stream the protocol's way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from clusterai.config import GatewaySection
from clusterai.gateway.router import Backend, Router
from clusterai.placement.breaker import CircuitBreaker

log = logging.getLogger("clusterai.gateway")
PASSED_HEADERS = ("content-type",)


@dataclass
class Answer:
    """What goes back to the client: a status, headers, and the body as it arrives."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]


class UpstreamFailed(Exception):
    """Every backend tried failed before sending a byte."""


class Gateway:
    def __init__(self, settings: GatewaySection, *, worker_slots: Callable[[], Iterable[Any]] | None = None):
        self.settings = settings
        self.worker_slots = worker_slots  # the coordinator's live registry: workers that serve models
        backends = [Backend(name=b.name, url=b.url, kind=b.kind,
                            token=os.environ.get(b.token_env) if b.token_env else None,
                            max_concurrency=b.max_concurrency,
                            breaker=CircuitBreaker(failures=settings.breaker.failures,
                                                   cooldown=settings.breaker.cooldown))
                    for b in settings.backends]
        self.router = Router(backends, queue_size=settings.queue_size, queue_timeout=settings.queue_timeout)
        self._http: httpx.AsyncClient | None = None
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            timeout = httpx.Timeout(self.settings.request_timeout, connect=5.0)
            self._http = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1000,
                                                                                 max_keepalive_connections=200))
        return self._http

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._http is not None:
            await self._http.aclose()

    # -- what the backends have ----------------------------------------------------------------

    def _sync_workers(self) -> None:
        """Backends for the workers serving models now (`clusterai worker --serve-model`); one that
        left goes once its requests are over."""
        if self.worker_slots is None:
            return
        serving = {f"worker {s.name}": s.model_server for s in self.worker_slots()
                   if s.model_server is not None and s.status in ("ready", "draining")}
        backends = self.router.backends
        for b in [b for b in backends if b.name.startswith("worker ") and b.name not in serving and not b.inflight]:
            backends.remove(b)
        known = {b.name: b for b in backends}
        for name, (url, token) in serving.items():
            if name in known and known[name].url == url:
                known[name].token = token
                continue
            if name in known:
                backends.remove(known[name])
            backends.append(Backend(name=name, url=url, kind="ollama", token=token,
                                    max_concurrency=self.settings.worker_concurrency,
                                    breaker=CircuitBreaker(failures=self.settings.breaker.failures,
                                                           cooldown=self.settings.breaker.cooldown)))

    async def fresh(self) -> None:
        """Make sure the model lists are no older than the health interval (the first call waits;
        later ones refresh in the background)."""
        self._sync_workers()
        now = time.time()
        stale = [b for b in self.router.backends if now - b.checked_at >= self.settings.health_interval]
        if not stale:
            return
        never = [b for b in stale if b.checked_at == 0]  # new: their models must be known before routing
        if never:
            await self._check(never)
        known = [b for b in stale if b not in never]
        if known and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._check(known))

    async def _check(self, backends: list[Backend]) -> None:
        await asyncio.gather(*(self._check_one(b) for b in backends))

    async def _check_one(self, backend: Backend) -> None:
        headers = self._auth(backend)
        try:
            if backend.kind == "ollama":
                tags = await self.http.get(f"{backend.url}/api/tags", headers=headers, timeout=5.0)
                tags.raise_for_status()
                models = {m.get("model") or m.get("name") for m in tags.json().get("models", [])}
                ps = await self.http.get(f"{backend.url}/api/ps", headers=headers, timeout=5.0)
                loaded = {m.get("model") or m.get("name") for m in ps.json().get("models", [])} if ps.is_success \
                    else set()
            else:
                listed = await self.http.get(f"{backend.url}/v1/models", headers=headers, timeout=5.0)
                listed.raise_for_status()
                models = {m.get("id") for m in listed.json().get("data", [])}
                loaded = set()
            backend.models = frozenset(m for m in models if m)
            backend.loaded = frozenset(m for m in loaded if m)
            if not backend.reachable:
                log.info("backend %s is reachable: %s", backend.name, ", ".join(sorted(backend.models)))
            backend.reachable = True
            if backend.breaker.state(time.time()).value != "closed" and not backend.inflight:
                backend.breaker.record(True, time.time())  # a health check is its trial
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            if backend.reachable:
                log.warning("backend %s failed its health check: %s", backend.name, exc)
            backend.reachable = False
            backend.breaker.record(False, time.time())
        backend.checked_at = time.time()

    def models(self) -> list[dict[str, Any]]:
        """Every model, and on which backends it is (and is loaded)."""
        names = sorted({m for b in self.router.backends for m in b.models})
        return [{"model": name,
                 "backends": [{"name": b.name, "url": b.url, "kind": b.kind, "loaded": b.holds(name),
                               "breaker": b.breaker.state(time.time()).value, "in_flight": b.inflight}
                              for b in self.router.backends if b.has(name)]}
                for name in names]

    def backends(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"name": b.name, "url": b.url, "kind": b.kind, "reachable": b.reachable,
                 "models": sorted(b.models), "loaded": sorted(b.loaded), "in_flight": b.inflight,
                 "max_concurrency": b.max_concurrency, "breaker": b.breaker.state(now).value,
                 "requests": b.requests, "errors": b.errors} for b in self.router.backends]

    # -- forwarding ------------------------------------------------------------------------------

    def _auth(self, backend: Backend) -> dict[str, str]:
        return {"Authorization": f"Bearer {backend.token}"} if backend.token else {}

    async def forward(self, path: str, body: dict[str, Any], *, protocol: str, model: str,
                      session: str | None = None, priority: int = 0) -> Answer:
        """Send to the chosen backend; before the first byte, a failing backend is left for the next."""
        await self.fresh()
        started = time.perf_counter()
        tried: list[Backend] = []
        last = "no backend tried"
        for _ in range(self.settings.attempts):
            backend = await self.router.acquire(model, protocol, session=session, priority=priority, exclude=tried)
            request = self.http.build_request("POST", f"{backend.url}{path}", json=body, headers=self._auth(backend))
            try:
                response = await self.http.send(request, stream=True)
            except httpx.HTTPError as exc:
                self.router.release(backend, ok=False)
                tried.append(backend)
                last = f"{backend.name}: {type(exc).__name__}: {exc}"
                log.warning("backend %s failed before answering: %s", backend.name, exc)
                continue
            if response.status_code >= 500:
                text = (await response.aread())[:300].decode(errors="replace")
                await response.aclose()
                self.router.release(backend, ok=False)
                tried.append(backend)
                last = f"{backend.name}: HTTP {response.status_code}: {text}"
                continue
            headers = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
            headers.update({"X-Accel-Buffering": "no", "Cache-Control": "no-cache",
                            "X-Clusterai-Backend": backend.name})
            ok: bool | None = True if response.status_code < 400 else None
            return Answer(response.status_code, headers, self._relay(response, backend, protocol, ok, started))
        raise UpstreamFailed(f"every backend tried failed before answering ({last})")

    async def _relay(self, response: httpx.Response, backend: Backend, protocol: str,
                     ok: bool | None, started: float) -> AsyncIterator[bytes]:
        outcome = ok
        tail = b""
        first = True
        try:
            async for chunk in response.aiter_raw():
                if first:
                    backend.first_byte_seconds += time.perf_counter() - started
                    backend.answered += 1
                    first = False
                tail = (tail + chunk)[-4096:]
                yield chunk
            generated, seconds = usage_of(tail, time.perf_counter() - started)
            backend.tokens += generated
            backend.token_seconds += seconds if generated else 0.0
        except httpx.HTTPError as exc:
            outcome = False
            log.warning("backend %s broke off a stream: %s", backend.name, exc)
            yield stream_error(protocol, response.headers.get("content-type", ""),
                               f"the model server {backend.name} stopped answering mid-stream ({type(exc).__name__})")
        except BaseException:
            outcome = None  # the client went away (cancelled): not the backend's fault
            raise
        finally:
            await response.aclose()
            self.router.release(backend, outcome)


def usage_of(tail: bytes, elapsed: float) -> tuple[int, float]:
    """Tokens generated and the seconds they took, from the end of an answer: Ollama's last frame
    (eval_count, eval_duration) or OpenAI's usage (timed here); (0, 0) when it says nothing."""
    for line in reversed(tail.decode(errors="replace").splitlines()):
        text = line.removeprefix("data: ").strip()
        if not text.startswith("{"):
            continue
        try:
            frame = json.loads(text)
        except ValueError:
            continue
        if isinstance(frame.get("eval_count"), int):
            return frame["eval_count"], float(frame.get("eval_duration") or 0) / 1e9 or elapsed
        usage = frame.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            return usage["completion_tokens"], elapsed
    return 0, 0.0


def stream_error(protocol: str, content_type: str, message: str) -> bytes:
    """The end of a broken stream, in the protocol's own way."""
    if "event-stream" in content_type or (protocol == "openai" and "json" not in content_type):
        return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n".encode()
    return (json.dumps({"error": message}) + "\n").encode()
