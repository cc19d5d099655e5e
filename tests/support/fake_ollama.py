"""A stand-in for an Ollama server, for what cannot run here (Ollama pulls from its registry and
needs real weights): it keeps a model list, "pulls" with streamed progress, copies, creates and
deletes, takes `load_seconds` to load a model, holds at most `max_loaded` models in memory
(the least recently used goes), honours keep_alive as Ollama does, and answers one generation at a
time (OLLAMA_NUM_PARALLEL=1). It speaks Ollama's API and OpenAI's chat completions, on loopback,
in a thread of its own or (`python -m support.fake_ollama`) a process of its own.

What it counts is the ground truth the tests and the benchmark read: `loads` (cold loads, per
model), `served`, and the keep_alive each request carried."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

FAR_FUTURE = "2318-01-01T00:00:00Z"  # what Ollama shows for a model kept loaded for good
DEFAULT_KEEP_ALIVE = 300.0
_PARTS = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def _seconds(value: Any) -> float:
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value)
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
            seconds = sign * sum(float(n) * units[u] for n, u in _PARTS.findall(text))
    return math.inf if seconds < 0 else seconds


def _iso(epoch: float) -> str:
    if math.isinf(epoch):
        return FAR_FUTURE
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


class FakeOllama:
    def __init__(self, models: dict[str, int] | None = None, *, load_seconds: float = 0.2,
                 generate_seconds: float = 0.02, max_loaded: int = 1, pull_seconds: float = 0.2,
                 pullable: tuple[str, ...] = ("*",), can_create: bool = True, model_size: int = 1_000_000):
        self.models: dict[str, int] = dict(models or {})  # name -> size in bytes
        self.load_seconds = load_seconds
        self.generate_seconds = generate_seconds
        self.max_loaded = max_loaded
        self.pull_seconds = pull_seconds
        self.pullable = pullable  # names the "registry" has; "*" for any
        self.can_create = can_create
        self.model_size = model_size
        self.loaded: OrderedDict[str, float] = OrderedDict()  # name -> expires at (epoch), least recent first
        self.loads: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.keep_alives: list[Any] = []
        self.pulls: list[str] = []
        self.url = ""
        self._gate: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- what it holds --------------------------------------------------------------------------

    def _expire(self) -> None:
        now = time.time()
        for name in [n for n, until in self.loaded.items() if until <= now]:
            del self.loaded[name]

    async def _load(self, name: str) -> float:
        """Seconds spent loading (0 when it was loaded); evicts the least recently used past max_loaded."""
        self._expire()
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return 0.0
        await asyncio.sleep(self.load_seconds)
        while len(self.loaded) >= self.max_loaded:
            self.loaded.popitem(last=False)
        self.loaded[name] = math.inf
        self.loads[name] += 1
        return self.load_seconds

    def _keep(self, name: str, keep_alive: Any) -> None:
        seconds = _seconds(keep_alive)
        if seconds == 0:
            self.loaded.pop(name, None)
        elif name in self.loaded:
            self.loaded[name] = time.time() + seconds

    def _entry(self, name: str) -> dict[str, Any]:
        size = self.models[name]
        digest = hashlib.sha256(name.encode()).hexdigest()
        return {"name": name, "model": name, "size": size, "digest": digest,
                "details": {"format": "gguf", "family": "fake", "families": ["fake"], "parameter_size": "1M",
                            "quantization_level": "Q4_0"}}

    @staticmethod
    def _resolve(name: Any, known: dict[str, int]) -> str | None:
        if not isinstance(name, str):
            return None
        if name in known:
            return name
        if f"{name}:latest" in known:
            return f"{name}:latest"
        if name.endswith(":latest") and name.removesuffix(":latest") in known:
            return name.removesuffix(":latest")
        return None

    # -- HTTP -----------------------------------------------------------------------------------

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{**self._entry(n), "modified_at": _iso(time.time())}
                                             for n in self.models]})

    async def ps(self, request: web.Request) -> web.Response:
        self._expire()
        return web.json_response({"models": [{**self._entry(n), "expires_at": _iso(until),
                                              "size_vram": self.models[n]}
                                             for n, until in self.loaded.items() if n in self.models]})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0-fake"})

    async def show(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = self._resolve(body.get("model") or body.get("name"), self.models)
        if name is None:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        return web.json_response({"modelfile": f"FROM {name}", "parameters": "", "template": "",
                                  "details": self._entry(name)["details"], "model_info": {},
                                  "capabilities": ["completion"]})

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        name = body.get("model") or body.get("name")
        stream = body.get("stream", True) is not False
        if not isinstance(name, str) or not name:
            return web.json_response({"error": "model is required"}, status=400)
        if "*" not in self.pullable and name not in self.pullable:
            return web.json_response({"error": "pull model manifest: file does not exist"}, status=500)
        self.pulls.append(name)
        size = self.model_size
        digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        steps = 4
        frames = [{"status": "pulling manifest"}]
        frames += [{"status": f"pulling {digest[7:19]}", "digest": digest, "total": size,
                    "completed": size * i // steps} for i in range(1, steps + 1)]
        frames += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        if not stream:
            await asyncio.sleep(self.pull_seconds)
            self.models[name] = size
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for frame in frames:
            if frame["status"] == "success":
                self.models[name] = size
            await response.write((json.dumps(frame) + "\n").encode())
            await asyncio.sleep(self.pull_seconds / len(frames))
        await response.write_eof()
        return response

    async def delete(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = self._resolve(body.get("model") or body.get("name"), self.models)
        if name is None:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        del self.models[name]
        self.loaded.pop(name, None)
        return web.Response(status=200)

    async def copy(self, request: web.Request) -> web.Response:
        body = await request.json()
        source = self._resolve(body.get("source"), self.models)
        if source is None:
            return web.json_response({"error": f"model '{body.get('source')}' not found"}, status=404)
        self.models[str(body["destination"])] = self.models[source]
        return web.Response(status=200)

    async def create(self, request: web.Request) -> web.StreamResponse:
        if not self.can_create:
            return web.json_response({"error": "404 page not found"}, status=404)
        body = await request.json()
        base = self._resolve(body.get("from"), self.models)
        if base is None:
            return web.json_response({"error": f"model '{body.get('from')}' not found"}, status=404)
        self.models[str(body["model"])] = self.models[base]
        if body.get("stream", True) is False:
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for status in ("using existing layer", "writing manifest", "success"):
            await response.write((json.dumps({"status": status}) + "\n").encode())
        await response.write_eof()
        return response

    async def _generation(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        name = self._resolve(body.get("model"), self.models)
        if name is None:
            return web.json_response({"error": f"model '{body.get('model')}' not found, try pulling it first"},
                                     status=404)
        self.keep_alives.append(body.get("keep_alive"))
        load_only = (chat and not body.get("messages")) or (not chat and not body.get("prompt"))
        if load_only and _seconds(body.get("keep_alive")) == 0:
            self.loaded.pop(name, None)
            return self._answer(request, body, name, chat, "", "unload", 0.0)
        assert self._gate is not None
        async with self._gate:
            started = time.perf_counter()
            loading = await self._load(name)
            if not load_only:
                await asyncio.sleep(self.generate_seconds)
                self.served[name] += 1
            self._keep(name, body.get("keep_alive"))
            took = time.perf_counter() - started
        text = "" if load_only else "fake answer"
        return await self._send(request, body, name, chat, text, "load" if load_only else "stop", loading, took)

    def _answer(self, request: web.Request, body: dict[str, Any], name: str, chat: bool, text: str, reason: str,
                loading: float) -> web.Response:
        return web.json_response(self._final(name, chat, text, reason, loading, loading))

    @staticmethod
    def _final(name: str, chat: bool, text: str, reason: str, loading: float, took: float) -> dict[str, Any]:
        out: dict[str, Any] = {"model": name, "created_at": _iso(time.time()), "done": True, "done_reason": reason,
                               "total_duration": int(took * 1e9), "load_duration": int(loading * 1e9),
                               "prompt_eval_count": 1, "eval_count": 2 if text else 0,
                               "eval_duration": int(max(took - loading, 1e-6) * 1e9)}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        return out

    async def _send(self, request: web.Request, body: dict[str, Any], name: str, chat: bool, text: str,
                    reason: str, loading: float, took: float) -> web.StreamResponse:
        final = self._final(name, chat, text, reason, loading, took)
        if body.get("stream", True) is False:
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if text:
            piece: dict[str, Any] = {"model": name, "created_at": final["created_at"], "done": False}
            piece.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
            final = {**final, **({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})}
            await response.write((json.dumps(piece) + "\n").encode())
        await response.write((json.dumps(final) + "\n").encode())
        await response.write_eof()
        return response

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, chat=True)

    async def openai_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fake"}
                                                             for n in self.models]})

    async def openai_chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = self._resolve(body.get("model"), self.models)
        if name is None:
            return web.json_response({"error": {"message": f"model '{body.get('model')}' not found"}}, status=404)
        assert self._gate is not None
        async with self._gate:
            await self._load(name)
            await asyncio.sleep(self.generate_seconds)
            self.served[name] += 1
            self._keep(name, None)
        return web.json_response({"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                                  "model": name, "choices": [{"index": 0, "finish_reason": "stop",
                                                              "message": {"role": "assistant",
                                                                          "content": "fake answer"}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/api/tags", self.tags), web.get("/api/ps", self.ps),
                        web.get("/api/version", self.version), web.post("/api/show", self.show),
                        web.post("/api/pull", self.pull), web.delete("/api/delete", self.delete),
                        web.post("/api/copy", self.copy), web.post("/api/create", self.create),
                        web.post("/api/generate", self.generate), web.post("/api/chat", self.chat),
                        web.get("/v1/models", self.openai_models),
                        web.post("/v1/chat/completions", self.openai_chat)])
        return app

    # -- running --------------------------------------------------------------------------------

    async def _start(self, port: int) -> None:
        self._gate = asyncio.Lock()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{bound}"

    def start(self, port: int = 0) -> FakeOllama:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start(port))
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-ollama", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake Ollama server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """A fake Ollama in a process of its own (the benchmark's backends): prints its URL, then serves."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--load-seconds", type=float, default=2.0)
    parser.add_argument("--generate-seconds", type=float, default=0.05)
    parser.add_argument("--max-loaded", type=int, default=1)
    parser.add_argument("--stats", help="a file to write the counts to on SIGTERM")
    args = parser.parse_args()
    fake = FakeOllama({m: 1_000_000 for m in args.model}, load_seconds=args.load_seconds,
                      generate_seconds=args.generate_seconds, max_loaded=args.max_loaded)

    async def serve() -> None:
        import signal

        fake._gate = asyncio.Lock()
        runner = web.AppRunner(fake.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", args.port)
        await site.start()
        print(f"http://127.0.0.1:{args.port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        if args.stats:
            with open(args.stats, "w") as out:
                json.dump({"loads": dict(fake.loads), "served": dict(fake.served)}, out)
        await runner.cleanup()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
