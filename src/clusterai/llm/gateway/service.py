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

import aiohttp

from clusterai.config import GatewaySection
from clusterai.errors import GatewayRefused, ModelNotFound, UpstreamFailed
from clusterai.llm.gateway.router import Backend, Router
from clusterai.llm.gateway.translate import (
    TRANSLATED,
    StreamToNdjson,
    Untranslatable,
    answer_to_ollama,
    error_to_ollama,
    request_to_openai,
)
from clusterai.llm.protocol import load_answer, loads_only, stream_error
from clusterai.placement.breaker import BreakerState, CircuitBreaker

log = logging.getLogger("clusterai.llm.gateway")
PASSED_HEADERS = ("content-type",)


@dataclass
class Answer:
    """What goes back to the client: a status, headers, and the body: whole (`content`, for a request
    that did not ask for a stream) or as it arrives (`stream`)."""

    status: int
    headers: dict[str, str]
    content: bytes | None = None
    stream: AsyncIterator[bytes] | None = None


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
        self._http: aiohttp.ClientSession | None = None
        self._refreshing: asyncio.Task[None] | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        # aiohttp rather than httpx here: about half a millisecond less per forwarded request
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=self.settings.request_timeout)
            self._http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1000))
        return self._http

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._http is not None:
            await self._http.close()

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
        try:
            if backend.kind == "ollama":
                tags = await self._get_json(backend, "/api/tags")
                entries = [m for m in tags.get("models", []) if isinstance(m, dict)]
                models = {m.get("model") or m.get("name") for m in entries}
                backend.described = {str(m.get("model") or m.get("name")): m for m in entries}
                try:
                    ps = await self._get_json(backend, "/api/ps")
                    loaded = {m.get("model") or m.get("name") for m in ps.get("models", [])}
                except aiohttp.ClientResponseError:
                    loaded = set()
            else:
                listed = await self._get_json(backend, "/v1/models")
                models = {m.get("id") for m in listed.get("data", [])}
                loaded = set()
            backend.models = frozenset(m for m in models if m)
            backend.loaded = frozenset(m for m in loaded if m)
            if not backend.reachable:
                log.info("backend %s is reachable: %s", backend.name, ", ".join(sorted(backend.models)))
            backend.reachable = True
            if backend.breaker.state(time.time()) is BreakerState.HALF_OPEN and not backend.inflight:
                # after the cooldown a good health check is the trial; during it, it does not
                # count (a server can list its models while every generation fails)
                backend.breaker.record(True, time.time())
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError) as exc:
            if backend.reachable:
                log.warning("backend %s failed its health check: %s", backend.name, exc)
            backend.reachable = False
            backend.breaker.record(False, time.time())
        backend.checked_at = time.time()

    async def _get_json(self, backend: Backend, path: str) -> dict[str, Any]:
        async with self.http.get(f"{backend.url}{path}", headers=self._auth(backend),
                                 timeout=aiohttp.ClientTimeout(total=5.0)) as response:
            response.raise_for_status()
            found = await response.json(content_type=None)
        return found if isinstance(found, dict) else {}

    def described(self, model: str) -> dict[str, Any]:
        """What an Ollama backend that has the model says of it in /api/tags (size, digest,
        details); {} when only OpenAI-only backends have it."""
        for b in self.router.backends:
            if model in b.described:
                return b.described[model]
        return {}

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

    async def forward(self, path: str, body: bytes, *, protocol: str, model: str, stream: bool,
                      parsed: dict[str, Any] | None = None, session: str | None = None,
                      priority: int = 0) -> Answer:
        """Send the request body as it came to the chosen backend (an Ollama request to an
        OpenAI-only backend: translated, and its answer translated back); before the first byte
        reached the client (for an answer not streamed: before all of it was read), a failing
        backend is left for the next."""
        await self.fresh()
        started = time.perf_counter()
        fields = parsed if parsed is not None else json.loads(body or b"{}") if protocol == "ollama" else {}
        # Ollama's "load this model" (an empty prompt): an OpenAI server would generate for it
        loading = protocol == "ollama" and path in ("/api/generate", "/api/chat") and \
            loads_only(fields, path == "/api/chat")
        translated: tuple[str, dict[str, Any]] | None = None
        untranslatable: str | None = None
        if protocol == "ollama" and path in TRANSLATED and not loading and \
                any(b.kind == "openai" for b in self.router.backends):
            try:
                translated = request_to_openai(path, fields)
            except Untranslatable as exc:
                untranslatable = str(exc)
        # a request that cannot be put in OpenAI's terms goes to backends that speak Ollama's
        skipped = [b for b in self.router.backends if b.kind == "openai"] if untranslatable else []
        tried: list[Backend] = []
        last = "no backend tried"
        for _ in range(self.settings.attempts):
            try:
                backend = await self.router.acquire(model, session=session, priority=priority,
                                                    exclude=tried + skipped)
            except ModelNotFound:
                if skipped and any(b.has(model) for b in skipped):
                    raise GatewayRefused(f"{untranslatable} (every backend with model '{model}' speaks OpenAI's "
                                  "API only)") from None
                raise
            converting = protocol == "ollama" and backend.kind == "openai"
            if converting and path == "/api/show":
                self.router.release(backend, None)
                return _shown(backend)
            if converting and loading:
                self.router.release(backend, None)
                return _loaded(backend, model, path == "/api/chat", stream)
            if converting:
                assert translated is not None
                target, payload = translated[0], json.dumps(translated[1]).encode()
            else:
                target, payload = path, body
            try:
                response = await self.http.post(f"{backend.url}{target}", data=payload,
                                                headers={"Content-Type": "application/json", **self._auth(backend)})
                whole = not stream or response.status >= 500 or (converting and response.status >= 400)
                content = await response.read() if whole else b""
                if converting and response.status >= 400:
                    content = error_to_ollama(response.status, content)
                elif converting and not stream:
                    content = json.dumps(answer_to_ollama(path, model, json.loads(content),
                                                          time.perf_counter() - started)).encode()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                # ValueError: an OpenAI answer that is not what the protocol says (nothing was sent yet)
                self.router.release(backend, ok=False)
                tried.append(backend)
                last = f"{backend.name}: {type(exc).__name__}: {exc}"
                log.warning("backend %s failed before answering: %s", backend.name, exc)
                continue
            if response.status >= 500:
                response.release()
                self.router.release(backend, ok=False)
                tried.append(backend)
                last = f"{backend.name}: HTTP {response.status}: {content[:300].decode(errors='replace')}"
                continue
            headers = {k.lower(): v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
            headers.update({"X-Accel-Buffering": "no", "Cache-Control": "no-cache",
                            "X-Clusterai-Backend": backend.name})
            if converting:
                headers["content-type"] = "application/x-ndjson" if stream and response.status < 400 \
                    else "application/json"
            ok: bool | None = True if response.status < 400 else None
            if not stream or (converting and response.status >= 400):
                took = time.perf_counter() - started
                backend.first_byte_seconds += took
                backend.answered += 1
                _count(backend, content[-4096:], took)
                response.release()
                self.router.release(backend, ok)
                return Answer(response.status, headers, content=content)
            convert = StreamToNdjson(path, model, started) if converting else None
            return Answer(response.status, headers,
                          stream=self._relay(response, backend, protocol, ok, started, convert))
        raise UpstreamFailed(f"every backend tried failed before answering ({last})")

    async def _relay(self, response: aiohttp.ClientResponse, backend: Backend, protocol: str,
                     ok: bool | None, started: float, convert: StreamToNdjson | None = None) -> AsyncIterator[bytes]:
        outcome = ok
        tail = b""
        first = True
        try:
            async for chunk in response.content.iter_any():
                if first:
                    backend.first_byte_seconds += time.perf_counter() - started
                    backend.answered += 1
                    first = False
                if convert is not None:
                    chunk = convert.feed(chunk)
                    if not chunk:
                        continue
                tail = (tail + chunk)[-4096:]
                yield chunk
            if convert is not None:
                end = convert.close()
                tail = (tail + end)[-4096:]
                if convert.failed:
                    outcome = False
                yield end
            _count(backend, tail, time.perf_counter() - started)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            outcome = False
            log.warning("backend %s broke off a stream: %s", backend.name, exc)
            sse = convert is None and _sse(protocol, response.headers.get("content-type", ""))
            if convert is None or not convert.finished:
                yield stream_error(sse, f"the model server {backend.name} stopped answering mid-stream "
                                        f"({type(exc).__name__})")
        except BaseException:
            outcome = None  # the client went away (cancelled): not the backend's fault
            raise
        finally:
            if outcome is True:
                response.release()  # read to its end: the connection goes back to the pool
            else:
                response.close()  # a broken or abandoned answer: drop the connection (the backend stops)
            self.router.release(backend, outcome)


def _loaded(backend: Backend, model: str, chat: bool, stream: bool) -> Answer:
    body = json.dumps(load_answer(model, chat)).encode()
    kind = "application/x-ndjson" if stream else "application/json"
    return Answer(200, {"content-type": kind, "X-Clusterai-Backend": backend.name}, content=body + b"\n")


def _shown(backend: Backend) -> Answer:
    """Ollama's /api/show for a model on an OpenAI-only backend, which says nothing more about it than
    that it has it."""
    body = {"modelfile": "", "parameters": "", "template": "", "details": {}, "model_info": {},
            "remote_host": backend.name}
    return Answer(200, {"content-type": "application/json", "X-Clusterai-Backend": backend.name},
                  content=json.dumps(body).encode())


def _count(backend: Backend, tail: bytes, elapsed: float) -> None:
    generated, seconds = usage_of(tail, elapsed)
    backend.tokens += generated
    backend.token_seconds += seconds if generated else 0.0


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


def _sse(protocol: str, content_type: str) -> bool:
    return "event-stream" in content_type or (protocol == "openai" and "json" not in content_type)
