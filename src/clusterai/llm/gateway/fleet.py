"""The models on the gateway's backends, managed as one fleet: pull (to chosen backends, or to the N
with the most free memory; progress streamed per backend and summed), delete, copy, create, load
and unload (Ollama's keep_alive), what is loaded where (ps), and the placement gateway.models asks
for, kept by a loop: `replicas` backends have each model (pulled where missing), a preloaded model
is loaded on them (also on a backend that just joined), and a pinned keep_alive is put back when a
backend's own clock says it will unload a model pinned for good (an OpenAI-style request resets
it to Ollama's default).

Only Ollama servers manage models: an OpenAI-only backend and clusterai's own model servers (which
serve what they were started with) are never asked to pull, copy, create or delete.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from clusterai.core.keep_alive import FOREVER, OLLAMA_KEEP_ALIVE, as_ollama, keep_alive_seconds
from clusterai.errors import BadInput, ModelNotFound
from clusterai.llm.gateway.router import Backend, iso_time

if TYPE_CHECKING:
    from clusterai.llm.gateway.service import Gateway


log = logging.getLogger("clusterai.llm.gateway")
MANAGE_TIMEOUT = 3600.0  # a pull of tens of gigabytes takes a while
PROGRESS_EVERY = 0.5  # seconds between summed progress lines
RETRY_AFTER = 60.0  # seconds before the placement loop tries a failed pull or load on a backend again


class Fleet:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self._acting: set[tuple[str, str]] = set()  # (model, backend) the placement loop is working on
        self._failed: dict[tuple[str, str], float] = {}  # (model, backend) -> when it last failed
        self._keeper: asyncio.Task[None] | None = None
        gateway.on_checked.append(self._checked)

    # -- which backends ------------------------------------------------------------------------

    @property
    def backends(self) -> list[Backend]:
        return self.gateway.router.backends

    async def fresh(self) -> None:
        """The model lists fresh, and each Ollama-kind backend's version known: which server it is
        decides whether it manages models (a health check asks for it only in the background)."""
        await self.gateway.fresh()
        unknown = [b for b in self.backends if b.reachable and b.kind == "ollama" and not b.version]
        await asyncio.gather(*(self.gateway.learn_version(b) for b in unknown))

    def managing(self) -> list[Backend]:
        """Backends that manage their own models: Ollama servers, reachable."""
        return [b for b in self.backends if b.reachable and manages_models(b)]

    def named(self, names: Sequence[str]) -> list[Backend]:
        known = {b.name: b for b in self.backends}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadInput(f"no backend named {', '.join(unknown)}; backends: {', '.join(sorted(known)) or 'none'}")
        return [known[n] for n in dict.fromkeys(names)]

    def _manageable(self, names: Sequence[str]) -> list[Backend]:
        chosen = self.named(names)
        refused = [b.name for b in chosen if not manages_models(b)]
        if refused:
            raise BadInput(f"backend {', '.join(refused)} does not manage its models (an OpenAI-only server, or a "
                           "clusterai model server, which serves what it was started with)")
        return chosen

    def by_free_memory(self, pool: Sequence[Backend], model: str) -> list[Backend]:
        """Backends that have the model first (a pull there is an update), then the most free memory
        (unknown last), then the fewest models loaded."""
        def key(b: Backend) -> tuple[bool, bool, int, int]:
            free = b.free_memory()
            return (not b.has(model), free is None, -(free or 0), len(b.loaded))
        return sorted(pool, key=key)

    def replicas(self, model: str) -> int | None:
        placement = self.gateway.settings.models.get(self.gateway.placement_name(model))
        return None if placement is None else placement.replicas

    def pull_targets(self, model: str, backends: Sequence[str] | None, replicas: int | None) -> list[Backend]:
        if backends:
            return self._manageable(backends)
        pool = self.managing()
        if not pool:
            raise BadInput("no reachable backend can pull models (only Ollama servers do)")
        wanted = replicas if replicas is not None else self.replicas(model)
        if wanted is None:
            return pool
        if wanted < 1:
            raise BadInput("replicas must be at least 1")
        return self.by_free_memory(pool, model)[:wanted]

    # -- pull and create: progress streamed ------------------------------------------------------

    async def pull(self, model: str, *, backends: Sequence[str] | None = None, replicas: int | None = None,
                   insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Pull onto each target at once; yields each backend's progress (with `backend`), summed
        progress lines, and a last line: status success, or the error of those that failed."""
        await self.fresh()
        targets = self.pull_targets(model, backends, replicas)
        body = {"model": model, "stream": True, "insecure": insecure}
        async for line in self._fan_out("/api/pull", body, targets, f"pulling {model}"):
            yield line

    async def create(self, body: dict[str, Any], *,
                     backends: Sequence[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Ollama's /api/create on each target: the chosen ones, else those that have its `from` model,
        else every Ollama server. One that does not know the endpoint is reported as unsupported."""
        await self.fresh()
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise BadInput("'model' is required")
        base = body.get("from")
        if backends:
            targets = self._manageable(backends)
        elif isinstance(base, str) and base:
            targets = [b for b in self.managing() if b.has(base)]
            if not targets:
                raise ModelNotFound(f"model '{base}' not found on any backend that manages models")
        else:
            targets = self.managing()
        if not targets:
            raise BadInput("no reachable backend can create models (only Ollama servers do)")
        async for line in self._fan_out("/api/create", {**body, "stream": True}, targets, f"creating {model}"):
            yield line

    async def _fan_out(self, path: str, body: dict[str, Any], targets: list[Backend],
                       doing: str) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[tuple[Backend, dict[str, Any] | None]] = asyncio.Queue()
        outcome: dict[str, str] = {}
        progress: dict[str, tuple[int, int]] = {}  # backend -> (completed, total) of the layer now

        async def one(backend: Backend) -> None:
            try:
                async for frame in self._stream(backend, path, body):
                    if "error" in frame:
                        outcome[backend.name] = f"error: {frame['error']}"
                    elif frame.get("status") == "success":
                        outcome[backend.name] = "success"
                        # known at once, not at the next health check (which also adds its details)
                        backend.models = backend.models | {str(body.get("model"))}
                    await queue.put((backend, frame))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                outcome[backend.name] = f"error: {type(exc).__name__}: {exc}"
                await queue.put((backend, {"error": f"{type(exc).__name__}: {exc}"}))
            finally:
                outcome.setdefault(backend.name, "error: the stream ended without success")
                self.gateway.recheck(backend)
                await queue.put((backend, None))

        tasks = [asyncio.create_task(one(b)) for b in targets]
        running, last_sum = len(tasks), 0.0
        try:
            while running:
                backend, frame = await queue.get()
                if frame is None:
                    running -= 1
                    continue
                if isinstance(frame.get("total"), int) and isinstance(frame.get("completed"), int):
                    progress[backend.name] = (frame["completed"], frame["total"])
                if frame.get("status") == "success":
                    continue  # the last line says it for all of them
                yield {**frame, "backend": backend.name}
                now = time.monotonic()
                if progress and now - last_sum >= PROGRESS_EVERY:
                    last_sum = now
                    yield {"status": f"{doing} on {len(targets)} backend(s), {len(outcome)} done",
                           "total": sum(t for _, t in progress.values()),
                           "completed": sum(c for c, _ in progress.values())}
        finally:
            for task in tasks:
                task.cancel()
        failed = {name: text for name, text in outcome.items() if text != "success"}
        summary = {"backends": dict(sorted(outcome.items()))}
        if failed:
            yield {"error": f"{doing} failed on {', '.join(sorted(failed))}: "
                            + "; ".join(f"{n}: {t.removeprefix('error: ')}" for n, t in sorted(failed.items())),
                   **summary}
        else:
            yield {"status": "success", **summary}

    async def _stream(self, backend: Backend, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self.gateway.http.post(f"{backend.url}{path}", json=body, headers=self.gateway.auth(backend),
                                          timeout=aiohttp.ClientTimeout(total=MANAGE_TIMEOUT,
                                                                        sock_read=MANAGE_TIMEOUT)) as response:
            if response.status in (404, 405, 501) and path == "/api/create":
                yield {"error": "this backend cannot create models"}
                return
            if response.status >= 400:
                yield {"error": _error_text(response.status, await response.read())}
                return
            async for raw in response.content:
                line = raw.strip()
                if line:
                    frame = json.loads(line)
                    if isinstance(frame, dict):
                        yield frame

    # -- delete, copy: one call per backend -------------------------------------------------------

    async def _each(self, method: str, path: str, targets: list[Backend], body: dict[str, Any],
                    timeout: float = 60.0) -> tuple[list[str], dict[str, str]]:
        async def one(backend: Backend) -> tuple[str, str | None]:
            try:
                async with self.gateway.http.request(method, f"{backend.url}{path}", json=body,
                                                     headers=self.gateway.auth(backend),
                                                     timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                    content = await response.read()
                    return backend.name, None if response.status < 400 else _error_text(response.status, content)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return backend.name, f"{type(exc).__name__}: {exc}"
            finally:
                self.gateway.recheck(backend)

        results = await asyncio.gather(*(one(b) for b in targets))
        return [n for n, e in results if e is None], {n: e for n, e in results if e is not None}

    async def delete(self, model: str, *, backends: Sequence[str] | None = None) -> dict[str, Any]:
        await self.fresh()
        targets = self._manageable(backends) if backends else [b for b in self.managing() if b.has(model)]
        if not targets:
            raise ModelNotFound(f"model '{model}' not found on any backend that manages models")
        done, failed = await self._each("DELETE", "/api/delete", targets, {"model": model})
        # a 404: that backend no longer had it (the gateway's list was older than the backend's)
        missing = [n for n, e in failed.items() if e.startswith("HTTP 404")]
        failed = {n: e for n, e in failed.items() if n not in missing}
        for b in targets:
            if b.name in done or b.name in missing:
                b.forget(model)
        if not done and not failed:
            raise ModelNotFound(f"model '{model}' not found on any backend that manages models")
        return {"model": model, "deleted": done, "failed": failed}

    async def copy(self, source: str, destination: str, *, backends: Sequence[str] | None = None) -> dict[str, Any]:
        if not destination:
            raise BadInput("'destination' is required")
        await self.fresh()
        targets = self._manageable(backends) if backends else [b for b in self.managing() if b.has(source)]
        if not targets:
            raise ModelNotFound(f"model '{source}' not found on any backend that manages models")
        done, failed = await self._each("POST", "/api/copy", targets, {"source": source, "destination": destination})
        return {"source": source, "destination": destination, "copied": done, "failed": failed}

    # -- load and unload: Ollama's empty request with a keep_alive ---------------------------------

    async def load(self, model: str, *, backends: Sequence[str] | None = None, replicas: int | None = None,
                   keep_alive: Any = None) -> dict[str, Any]:
        """Load on the chosen backends, else on `replicas` (gateway.models', else 1) of those that have
        it: those holding it already first, then the most free memory."""
        await self.gateway.fresh()
        if keep_alive is not None:
            keep_alive_seconds(keep_alive)  # a bad one is refused before anything is sent
        if backends:
            targets = self.named(backends)
            lacking = [b.name for b in targets if not b.has(model)]
            if lacking:
                raise ModelNotFound(f"backend {', '.join(lacking)} does not have model '{model}'")
        else:
            having = [b for b in self.backends if b.reachable and b.has(model)]
            if not having:
                raise ModelNotFound(f"model '{model}' not found on any reachable backend")
            wanted = replicas if replicas is not None else self.replicas(model) or 1
            if wanted < 1:
                raise BadInput("replicas must be at least 1")
            targets = sorted(self.by_free_memory(having, model), key=lambda b: not b.holds(model))[:wanted]
        pinned = self.gateway.pinned(model)
        keep = keep_alive if keep_alive is not None else (as_ollama(pinned) if pinned is not None else None)
        done, failed = await self._load_on(model, targets, keep)
        return {"model": model, "loaded": done, "failed": failed}

    async def unload(self, model: str, *, backends: Sequence[str] | None = None) -> dict[str, Any]:
        await self.gateway.fresh()
        targets = self.named(backends) if backends else [b for b in self.backends if b.holds(model)]
        if not targets:
            return {"model": model, "unloaded": [], "failed": {}}
        done, failed = await self._load_on(model, targets, 0)
        return {"model": model, "unloaded": done, "failed": failed}

    async def _load_on(self, model: str, targets: list[Backend], keep_alive: Any) -> tuple[list[str], dict[str, str]]:
        body: dict[str, Any] = {"model": model, "stream": False}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        openai_only = [b for b in targets if b.kind != "ollama"]
        targets = [b for b in targets if b.kind == "ollama"]
        done, failed = await self._each("POST", "/api/generate", targets, body, timeout=MANAGE_TIMEOUT)
        embedders = [b for b in targets if b.name in failed and "embed" in failed[b.name].lower()]
        if embedders:  # an embedding model loads through /api/embed, not /api/generate
            again, still = await self._each("POST", "/api/embed", embedders, {**body, "input": ""},
                                            timeout=MANAGE_TIMEOUT)
            done += again
            failed = {n: e for n, e in failed.items() if n not in again} | still
        seconds = keep_alive_seconds(keep_alive) if keep_alive is not None else None
        until = time.time() + (seconds if seconds is not None else OLLAMA_KEEP_ALIVE)
        for b in targets:
            if b.name in done:
                b.note_loaded(model, until)
        for b in openai_only:
            failed[b.name] = "an OpenAI-only server loads and unloads its models itself"
        return done, failed

    # -- what is loaded where -------------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        """One entry per model loaded somewhere: Ollama's fields (expires_at: the latest of its
        backends), and where it is loaded, until when."""
        now = time.time()
        found: dict[str, dict[str, Any]] = {}
        for b in self.backends:
            for name in sorted(b.loaded):
                entry = found.setdefault(name, {**b.described.get(name, {}), "name": name, "model": name,
                                                "size_vram": 0, "backends": []})
                until = b.expires.get(name, math.inf)
                entry["backends"].append({"name": b.name, "expires_at": iso_time(until),
                                          "expiring": until - now <= 60.0, "size": b.loaded_sizes.get(name, 0)})
                entry["size_vram"] += b.loaded_sizes.get(name, 0)
        for entry in found.values():
            entry.pop("modified_at", None)
            entry["expires_at"] = max((e["expires_at"] for e in entry["backends"]), default=iso_time(math.inf))
        return [found[name] for name in sorted(found)]

    # -- the placement loop ---------------------------------------------------------------------

    def start(self) -> None:
        """Keep gateway.models' placement, checking every health_interval (only when it lists models)."""
        if self.gateway.settings.models and (self._keeper is None or self._keeper.done()):
            self._keeper = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()

    async def _keep(self) -> None:
        while True:
            try:
                await self.gateway.fresh()
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must outlive one bad pass; the next retries
                log.exception("keeping the models' placement failed; trying again")
            await asyncio.sleep(self.gateway.settings.health_interval)

    def _checked(self, backend: Backend, joined: bool) -> None:
        """A backend that just became reachable gets its preloads at once."""
        if joined and self.gateway.settings.models:
            self.start()
            with_preload = [m for m, p in self.gateway.settings.models.items() if p.preload and backend.has(m)]
            for model in with_preload:
                self._act(model, backend, self._ensure_loaded(model, backend))

    async def reconcile(self) -> None:
        """One pass: for each model of gateway.models, start what its placement lacks."""
        now = time.time()
        for model, placement in self.gateway.settings.models.items():
            live = [b for b in self.backends if b.reachable]
            having = [b for b in live if b.has(model)]
            if placement.pull and len(having) < placement.replicas:
                spare = [b for b in self.managing() if not b.has(model) and self._may(model, b, now)]
                for b in self.by_free_memory(spare, model)[:placement.replicas - len(having)]:
                    self._act(model, b, self._pull_then_load(model, b, placement.preload))
            if placement.preload:
                holding = [b for b in having if b.holds(model)]
                idle = [b for b in having if not b.holds(model) and self._may(model, b, now)]
                for b in self.by_free_memory(idle, model)[:max(0, placement.replicas - len(holding))]:
                    self._act(model, b, self._ensure_loaded(model, b))
            if placement.keep_alive_seconds == FOREVER:
                for b in having:
                    if b.holds(model) and b.kind == "ollama" and self._expires(b, model):
                        self._act(model, b, self._ensure_loaded(model, b))

    @staticmethod
    def _expires(backend: Backend, model: str) -> bool:
        """The backend means to unload a model pinned for good (an OpenAI-style request reset its
        clock to Ollama's default). A finite pin is left alone: the backend's clock for it is
        counted from the last request, which the gateway cannot tell from an early reset."""
        until = backend.until(model)
        return until is not None and until != math.inf

    def _may(self, model: str, backend: Backend, now: float) -> bool:
        key = (model, backend.name)
        return key not in self._acting and now - self._failed.get(key, -math.inf) >= RETRY_AFTER

    def _act(self, model: str, backend: Backend, work: Any) -> None:
        key = (model, backend.name)
        if key in self._acting:
            work.close()
            return
        self._acting.add(key)

        async def run() -> None:
            try:
                if not await work:
                    self._failed[key] = time.time()
            finally:
                self._acting.discard(key)

        self.gateway.background(run())

    async def _ensure_loaded(self, model: str, backend: Backend) -> bool:
        pinned = self.gateway.pinned(model)
        done, failed = await self._load_on(model, [backend], as_ollama(pinned) if pinned is not None else -1)
        if failed:
            log.warning("loading %s on %s failed: %s", model, backend.name, failed[backend.name])
        else:
            log.info("loaded %s on %s (gateway.models)", model, backend.name)
        return not failed

    async def _pull_then_load(self, model: str, backend: Backend, load: bool) -> bool:
        log.info("pulling %s onto %s (gateway.models asks for more replicas)", model, backend.name)
        last: dict[str, Any] = {}
        async for frame in self._fan_out("/api/pull", {"model": model, "stream": True}, [backend], f"pulling {model}"):
            last = frame
        if "error" in last:
            log.warning("%s", last["error"])
            return False
        await self.gateway.check_one(backend)
        return await self._ensure_loaded(model, backend) if load else True


def manages_models(backend: Backend) -> bool:
    return backend.kind == "ollama" and not backend.name.startswith("worker ") and \
        not backend.version.startswith("clusterai")


def _error_text(status: int, content: bytes) -> str:
    try:
        found = json.loads(content)
    except ValueError:
        found = None
    if isinstance(found, dict) and isinstance(found.get("error"), (str, dict)):
        error = found["error"]
        return f"HTTP {status}: {error.get('message') if isinstance(error, dict) else error}"
    return f"HTTP {status}: {content[:300].decode(errors='replace')}"


