"""The gateway: keeps each backend's model list fresh (through /api/tags and /api/ps, or
/v1/models; never a generation), forwards a request to the backend the router picks, and
passes the answer through as it arrives. A backend that fails before the first byte reached the
client is left for another; once bytes flowed, an error ends the stream the protocol's way.

A model's keep_alive pinned in gateway.models replaces the one an Ollama request carries. Each
answer is counted per model and backend: whether the model had to be loaded first (the answer's
load_duration says so when the backend is Ollama's kind; else whether the gateway knew it loaded),
the load's seconds, the request's seconds and the tokens generated.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import aiohttp

from clusterai.config import GatewaySection
from clusterai.core.keep_alive import OLLAMA_KEEP_ALIVE, keep_alive_seconds
from clusterai.errors import BadInput, GatewayRefused, ModelNotFound, UpstreamFailed
from clusterai.llm.gateway.fleet import Fleet
from clusterai.llm.gateway.router import Backend, ModelStats, Router, iso_time
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
COLD_LOAD_SECONDS = 0.05  # a load_duration past this was a load from disk, not a model already in memory
KEEP_ALIVE_PATHS = ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings")


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
                            max_concurrency=b.max_concurrency, memory=b.memory,
                            breaker=CircuitBreaker(failures=settings.breaker.failures,
                                                   cooldown=settings.breaker.cooldown))
                    for b in settings.backends]
        self.router = Router(backends, queue_size=settings.queue_size, queue_timeout=settings.queue_timeout)
        self._http: aiohttp.ClientSession | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_checked: list[Callable[[Backend, bool], None]] = []  # (backend, it just became reachable)
        self.fleet = Fleet(self)

    @property
    def http(self) -> aiohttp.ClientSession:
        # aiohttp rather than httpx here: about half a millisecond less per forwarded request
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=self.settings.request_timeout)
            self._http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1000))
        return self._http

    def start(self) -> None:
        """Begin keeping gateway.models' placement (the API server calls this once it runs)."""
        self.fleet.start()

    async def close(self) -> None:
        await self.fleet.stop()
        if self._refreshing is not None:
            self._refreshing.cancel()
        for task in [*self._rechecks.values(), *self._tasks]:
            task.cancel()
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
        self.fleet.start()
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
        await asyncio.gather(*(self.check_one(b) for b in backends))

    def recheck(self, backend: Backend) -> None:
        """Read the backend's model lists again now, in the background (after it loaded, pulled or
        dropped a model: what it holds changed)."""
        running = self._rechecks.get(backend.name)
        if running is None or running.done():
            self._rechecks[backend.name] = asyncio.create_task(self.check_one(backend))

    async def check_one(self, backend: Backend) -> None:
        try:
            loaded: dict[str, dict[str, Any]] = {}
            if backend.kind == "ollama":
                tags = await self._get_json(backend, "/api/tags")
                entries = [m for m in tags.get("models", []) if isinstance(m, dict)]
                models = {m.get("model") or m.get("name") for m in entries}
                backend.described = {str(m.get("model") or m.get("name")): m for m in entries}
                try:
                    ps = await self._get_json(backend, "/api/ps")
                    loaded = {str(m.get("model") or m.get("name")): m for m in ps.get("models", [])
                              if isinstance(m, dict) and (m.get("model") or m.get("name"))}
                except aiohttp.ClientResponseError:
                    pass
            else:
                listed = await self._get_json(backend, "/v1/models")
                models = {m.get("id") for m in listed.get("data", [])}
            backend.models = frozenset(m for m in models if m)
            # a model whose requests are in flight is loading or loaded, whatever /api/ps said
            # while it was loading (Ollama lists a model once it is loaded)
            kept = {m: (backend.expires.get(m, math.inf), backend.loaded_sizes.get(m, 0))
                    for m in backend.loaded if backend.busy_with.get(m.removesuffix(":latest")) and m not in loaded}
            backend.loaded = frozenset(loaded) | frozenset(kept)
            backend.most_loaded = max(backend.most_loaded, len(loaded))
            backend.expires = {name: _epoch(m.get("expires_at")) for name, m in loaded.items()} | \
                {m: until for m, (until, _) in kept.items()}
            backend.loaded_sizes = {name: int(m["size"]) if isinstance(m.get("size"), int) else 0
                                    for name, m in loaded.items()} | {m: size for m, (_, size) in kept.items()}
            joined = not backend.reachable
            if joined and backend.kind == "ollama":
                self.background(self.learn_version(backend))
            if joined:
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
            joined = False
        backend.checked_at = time.time()
        if backend.reachable:
            for listener in self.on_checked:
                listener(backend, joined)

    async def learn_version(self, backend: Backend) -> None:
        """Which server it is (clusterai's model servers manage no models): asked aside from the
        health check, which a server slow to say its version must not fail."""
        try:
            backend.version = str((await self._get_json(backend, "/api/version")).get("version", ""))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            backend.version = ""

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the gateway holds (and cancels when it closes)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _get_json(self, backend: Backend, path: str) -> dict[str, Any]:
        async with self.http.get(f"{backend.url}{path}", headers=self.auth(backend),
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
        """Every model: where it is, whether loaded there and until when, what gateway.models asks for
        it, and what the gateway counted (requests, cold loads, the share that found it loaded,
        tokens/s), per backend and in all."""
        now = time.time()
        names = sorted({m for b in self.router.backends for m in b.models} |
                       {m for m in self.settings.models if any(b.reachable for b in self.router.backends)})
        listed = []
        for name in names:
            placement = self.settings.models.get(self.placement_name(name))
            rows, total = [], ModelStats()
            for b in self.router.backends:
                if not b.has(name):
                    continue
                stats = b.stats.get(name.removesuffix(":latest"), ModelStats())
                _add(total, stats)
                until = b.until(name)
                rows.append({"name": b.name, "url": b.url, "kind": b.kind, "loaded": b.holds(name),
                             "expires_at": None if until is None else iso_time(until),
                             "expiring": until is not None and until - now <= 60.0,
                             "breaker": b.breaker.state(now).value, "in_flight": b.inflight,
                             **_summary(stats)})
            listed.append({"model": name, "replicas": placement.replicas if placement else None,
                           "keep_alive": placement.keep_alive if placement else None,
                           "preload": placement.preload if placement else False,
                           "loaded_on": sum(1 for r in rows if r["loaded"]), "backends": rows, **_summary(total)})
        return listed

    def backends(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"name": b.name, "url": b.url, "kind": b.kind, "reachable": b.reachable,
                 "models": sorted(b.models), "loaded": sorted(b.loaded), "in_flight": b.inflight,
                 "max_concurrency": b.max_concurrency, "breaker": b.breaker.state(now).value,
                 "requests": b.requests, "errors": b.errors} for b in self.router.backends]

    # -- forwarding ------------------------------------------------------------------------------

    def auth(self, backend: Backend) -> dict[str, str]:
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
        placement = self.settings.models.get(self.placement_name(model))
        pinned = placement.keep_alive_seconds if placement is not None else None
        keep = pinned if pinned is not None else _keep_alive(fields if protocol == "ollama" else {})
        if protocol == "ollama" and path in KEEP_ALIVE_PATHS and placement is not None and pinned is not None:
            fields = {**fields, "keep_alive": placement.keep_alive}
            body = json.dumps(fields).encode()
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
                                                    exclude=tried + skipped,
                                                    cold_load_wait=self.settings.cold_load_wait)
            except ModelNotFound:
                if skipped and any(b.has(model) for b in skipped):
                    raise GatewayRefused(f"{untranslatable} (every backend with model '{model}' speaks OpenAI's "
                                  "API only)") from None
                raise
            held = backend.holds(model)
            backend.note_loaded(model, time.time() + keep)
            converting = protocol == "ollama" and backend.kind == "openai"
            if converting and path == "/api/show":
                self.router.release(backend, None, model)
                return _shown(backend)
            if converting and loading:
                self.router.release(backend, None, model)
                return _loaded(backend, model, path == "/api/chat", stream)
            if converting:
                assert translated is not None
                target, payload = translated[0], json.dumps(translated[1]).encode()
            else:
                target, payload = path, body
            try:
                response = await self.http.post(f"{backend.url}{target}", data=payload,
                                                headers={"Content-Type": "application/json", **self.auth(backend)})
                whole = not stream or response.status >= 500 or (converting and response.status >= 400)
                content = await response.read() if whole else b""
                if converting and response.status >= 400:
                    content = error_to_ollama(response.status, content)
                elif converting and not stream:
                    content = json.dumps(answer_to_ollama(path, model, json.loads(content),
                                                          time.perf_counter() - started)).encode()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                # ValueError: an OpenAI answer that is not what the protocol says (nothing was sent yet)
                self.router.release(backend, False, model)
                self.recheck(backend)
                tried.append(backend)
                last = f"{backend.name}: {type(exc).__name__}: {exc}"
                log.warning("backend %s failed before answering: %s", backend.name, exc)
                continue
            if response.status >= 500:
                response.release()
                self.router.release(backend, False, model)
                self.recheck(backend)
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
                self._count(backend, model, held, content[-4096:], took)
                response.release()
                self.router.release(backend, ok, model)
                return Answer(response.status, headers, content=content)
            convert = StreamToNdjson(path, model, started) if converting else None
            return Answer(response.status, headers,
                          stream=self._relay(response, backend, protocol, ok, started, convert, (model, held)))
        raise UpstreamFailed(f"every backend tried failed before answering ({last})")

    # -- where models are kept ------------------------------------------------------------------

    def placement_name(self, model: str) -> str:
        """The key of gateway.models the model goes by (with or without :latest)."""
        for name in (model, model.removesuffix(":latest"), f"{model}:latest"):
            if name in self.settings.models:
                return name
        return model

    def pinned(self, model: str) -> float | None:
        """The keep_alive (seconds) gateway.models pins for the model; None when clients choose."""
        placement = self.settings.models.get(self.placement_name(model))
        return None if placement is None else placement.keep_alive_seconds

    def _count(self, backend: Backend, model: str, held: bool, tail: bytes, elapsed: float) -> None:
        """One answer, on the backend and on the model there: tokens, seconds, and whether it was a
        cold load (then: the load's seconds, and read the backend's lists again, as it may have
        dropped another model to make room)."""
        usage = usage_of(tail, elapsed)
        backend.tokens += usage.tokens
        backend.token_seconds += usage.seconds if usage.tokens else 0.0
        stats = backend.model_stats(model)
        stats.requests += 1
        stats.answered += 1
        stats.inference_seconds += elapsed
        stats.tokens += usage.tokens
        stats.token_seconds += usage.seconds if usage.tokens else 0.0
        cold = usage.load_seconds >= COLD_LOAD_SECONDS if usage.load_seconds is not None else not held
        if cold:
            stats.cold_loads += 1
            if usage.load_seconds is not None:
                stats.load_seconds += usage.load_seconds
                stats.timed_loads += 1
            self.recheck(backend)
        else:
            stats.warm += 1

    async def _relay(self, response: aiohttp.ClientResponse, backend: Backend, protocol: str,
                     ok: bool | None, started: float, convert: StreamToNdjson | None = None,
                     counted: tuple[str, bool] | None = None) -> AsyncIterator[bytes]:
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
            if counted is not None:
                self._count(backend, counted[0], counted[1], tail, time.perf_counter() - started)
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
            self.router.release(backend, outcome, counted[0] if counted else None)


def _add(total: ModelStats, more: ModelStats) -> None:
    for name in vars(total):
        setattr(total, name, getattr(total, name) + getattr(more, name))


def _summary(stats: ModelStats) -> dict[str, Any]:
    return {"requests": stats.requests, "cold_loads": stats.cold_loads,
            "cache_hit_rate": round(stats.warm / stats.requests, 4) if stats.requests else None,
            "tokens_per_second": round(stats.tokens / stats.token_seconds, 2) if stats.token_seconds else None,
            "load_seconds": round(stats.load_seconds / stats.timed_loads, 3) if stats.timed_loads else None}


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


def _keep_alive(fields: dict[str, Any]) -> float:
    """How long the backend will keep the model after a request that pins nothing."""
    if fields.get("keep_alive") is not None:
        try:
            return keep_alive_seconds(fields["keep_alive"])
        except BadInput:
            return OLLAMA_KEEP_ALIVE  # the backend will refuse it and say why
    return OLLAMA_KEEP_ALIVE


@dataclass(frozen=True)
class Usage:
    tokens: int = 0
    seconds: float = 0.0  # generating them
    load_seconds: float | None = None  # loading the model first, when the answer says


def usage_of(tail: bytes, elapsed: float) -> Usage:
    """What the end of an answer says: Ollama's last frame (eval_count, eval_duration,
    load_duration) or OpenAI's usage (timed here); nothing when it says nothing."""
    for line in reversed(tail.decode(errors="replace").splitlines()):
        text = line.removeprefix("data: ").strip()
        if not text.startswith("{"):
            continue
        try:
            frame = json.loads(text)
        except ValueError:
            continue
        if not isinstance(frame, dict):
            continue
        loading = frame.get("load_duration")
        load_seconds = loading / 1e9 if isinstance(loading, (int, float)) and not isinstance(loading, bool) else None
        if isinstance(frame.get("eval_count"), int):
            return Usage(frame["eval_count"], float(frame.get("eval_duration") or 0) / 1e9 or elapsed, load_seconds)
        usage = frame.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            return Usage(usage["completion_tokens"], elapsed)
        if load_seconds is not None:
            return Usage(0, 0.0, load_seconds)
    return Usage()


def _epoch(expires_at: Any) -> float:
    """Ollama's expires_at (ISO 8601, nanoseconds and a zone offset) as seconds since the epoch; a
    date past the year 2200 (Ollama's way to say never) or none at all: never."""
    if not isinstance(expires_at, str) or not expires_at:
        return math.inf
    text = expires_at.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most microseconds
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return math.inf
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return math.inf if moment.year >= 2200 else moment.timestamp()


def _sse(protocol: str, content_type: str) -> bool:
    return "event-stream" in content_type or (protocol == "openai" and "json" not in content_type)
