"""An in-process model server speaking the Ollama API and the OpenAI API over `ServedModel`s, so
that any Ollama or OpenAI client (and clusterai's gateway) can use a model a clusterai machine
loaded. Streams as it generates: NDJSON for Ollama, server-sent events ending in `data: [DONE]`
for OpenAI; an error in the middle of a stream follows each protocol's convention. A request's
`keep_alive` (Ollama's) says how long its model stays loaded; /api/ps lists the loaded ones,
/api/tags all of them.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from clusterai import __version__
from clusterai.core import nesting
from clusterai.core.keep_alive import keep_alive_seconds
from clusterai.errors import BadInput, ModelNotFound
from clusterai.llm.models import EMBED, GENERATE, Options, ServedModel, Usage
from clusterai.llm.protocol import error_body, load_answer, loads_only, stream_error, timestamp

log = logging.getLogger("clusterai.llm")
NDJSON = "application/x-ndjson"
NO_BUFFERING = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
MAX_BODY = 4 * 1024 * 1024


class ModelServer:
    def __init__(self, models: dict[str, ServedModel], token: str | None = None):
        self.models = models
        self.token = token

    def model(self, name: Any, kind: str | None = None) -> ServedModel:
        if not isinstance(name, str) or not name:
            raise BadInput("'model' is required")
        found = self.models.get(name) or self.models.get(name.removesuffix(":latest"))
        if found is None:
            raise ModelNotFound(f"model '{name}' not found; this server has: {', '.join(sorted(self.models))}")
        if kind is not None and found.kind != kind:
            what = "makes embeddings" if found.kind == EMBED else "generates text"
            raise BadInput(f"model '{name}' {what}; it cannot serve this request")
        return found

    # -- Ollama ------------------------------------------------------------------------------

    def tags(self) -> dict[str, Any]:
        """Every model this server has, loaded or not."""
        return {"models": [{"name": m.name, "model": m.name, "modified_at": _iso(m.modified_at), "size": m.size,
                            "digest": m.digest, "details": m.details()} for m in self.models.values()]}

    def ps(self) -> dict[str, Any]:
        """The models loaded now, and when each unloads if no request comes."""
        models = []
        for m in self.models.values():
            expires = m.expires_at()
            if expires is None:
                continue
            models.append({"name": m.name, "model": m.name, "size": m.size, "digest": m.digest,
                           "details": m.details(), "expires_at": _iso(expires), "size_vram": m.gpu_bytes(),
                           "context_length": m.context_length or 0})
        return {"models": models}

    def show(self, body: dict[str, Any]) -> dict[str, Any]:
        m = self.model(body.get("model") or body.get("name"))
        # the modelfile names the model, not the folder it was loaded from: no path on this machine's
        # disk goes out (the gateway passes this answer on to its clients)
        family = m.details()["family"]
        info: dict[str, Any] = {"general.architecture": family}
        if m.context_length:
            info[f"{family}.context_length"] = m.context_length
        return {"modelfile": f"FROM {m.name}", "parameters": "", "template": "", "details": m.details(),
                "model_info": info, "capabilities": m.capabilities()}

    @staticmethod
    def _prompt(body: dict[str, Any], chat: bool) -> str | list[dict[str, Any]]:
        """What to continue: a chat's messages (the model templates them), or the prompt (OpenAI
        may send it as a list of one; Ollama may add a system text before it)."""
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise BadInput("'messages' must be a list of {role, content}")
            return messages
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadInput("'prompt' must be a string")
        return f"{body['system']}\n{prompt}" if body.get("system") else prompt

    def ollama_generate(self, body: dict[str, Any], chat: bool) -> tuple[Iterator[dict[str, Any]], bool]:
        """The answer's frames, the first one made already (so that a failure before it is an HTTP
        error); blocks while the model loads, so call it off the event loop."""
        m = self.model(body.get("model"), GENERATE)
        keep_alive = _keep_alive(body)
        stream = body.get("stream", True) is not False
        if loads_only(body, chat):
            # Ollama's way to load a model ahead of use (`ollama run` sends one), or with keep_alive 0
            # to unload it
            answer = load_answer(m.name, chat)
            if keep_alive == 0:
                m.unload()
                answer["done_reason"] = "unload"
            else:
                m.load(keep_alive)
            return iter([answer]), stream
        text = self._prompt(body, chat)
        options = Options.parse(body.get("options"))
        usage = Usage()
        pieces = m.generate(text, options, usage, keep_alive, stream=stream)

        def frame(text: str, done: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"model": m.name, "created_at": timestamp(), "done": done}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            if done:
                took = time.perf_counter() - usage.started
                out.update(done_reason=usage.done_reason, total_duration=int(took * 1e9),
                           load_duration=int(usage.load_seconds * 1e9), prompt_eval_count=usage.prompt_tokens,
                           eval_count=usage.completion_tokens,
                           eval_duration=int(max(0.0, took - usage.load_seconds) * 1e9))
            return out

        def frames() -> Iterator[dict[str, Any]]:
            with _closing(pieces):
                for piece in pieces:
                    yield frame(piece, False)
            yield frame("", True)

        return _primed(frames()), stream

    def ollama_embed(self, body: dict[str, Any], legacy: bool) -> dict[str, Any]:
        m = self.model(body.get("model"), EMBED)
        keep_alive = _keep_alive(body)
        usage = Usage()
        if legacy:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise BadInput("'prompt' must be a string")
            return {"embedding": m.embed([prompt], keep_alive)[0]}
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            raise BadInput("'input' must be a string or a non-empty list of strings")
        vectors = m.embed(texts, keep_alive, usage)
        return {"model": m.name, "embeddings": vectors,
                "total_duration": int((time.perf_counter() - usage.started) * 1e9),
                "load_duration": int(usage.load_seconds * 1e9), "prompt_eval_count": usage.prompt_tokens}

    # -- OpenAI --------------------------------------------------------------------------------

    def openai_generate(self, body: dict[str, Any], chat: bool) -> tuple[Iterator[dict[str, Any]], bool]:
        """Like ollama_generate: the first chunk made already; call it off the event loop."""
        m = self.model(body.get("model"), GENERATE)
        keep_alive = _keep_alive(body)  # not OpenAI's, but a model server's clients may want it there too
        text = self._prompt(body, chat)
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 128
        options = Options.parse({"num_predict": limit, "temperature": body.get("temperature", 0.0),
                                 "top_p": body.get("top_p", 1.0), "seed": body.get("seed"),
                                 "stop": body.get("stop") or ()})
        usage = Usage()
        stream = bool(body.get("stream", False))
        pieces = m.generate(text, options, usage, keep_alive, stream=stream)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": text} if text is not None else {}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return {"id": ident, "object": kind, "created": created, "model": m.name, "choices": [choice]}

        def chunks() -> Iterator[dict[str, Any]]:
            with _closing(pieces):
                for piece in pieces:
                    yield chunk(piece, None)
            final = chunk(None, usage.done_reason)
            final["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                              "total_tokens": usage.prompt_tokens + usage.completion_tokens}
            yield final

        return _primed(chunks()), stream

    def openai_embed(self, body: dict[str, Any]) -> dict[str, Any]:
        m = self.model(body.get("model"), EMBED)
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            raise BadInput("'input' must be a string or a non-empty list of strings")
        usage = Usage()
        vectors = m.embed(texts, _keep_alive(body), usage)
        tokens = usage.prompt_tokens
        return {"object": "list", "model": m.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}

    def openai_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m.name, "object": "model", "created": int(m.modified_at),
                                            "owned_by": "clusterai"} for m in self.models.values()]}


def _keep_alive(body: dict[str, Any]) -> float | None:
    """The request's keep_alive in seconds (a bad one is a 400); None: the server's default."""
    raw = body.get("keep_alive")
    return None if raw is None else keep_alive_seconds(raw)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def _primed(items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`items` with its first one made now, so that what fails before the answer starts fails here."""
    first = next(items)

    def rest() -> Iterator[dict[str, Any]]:
        yield first
        yield from items  # closing this closes `items` too

    return rest()


@contextlib.contextmanager
def _closing(items: Iterator[Any]) -> Iterator[None]:
    """Close a generator when its reader stops early: a client gone must end its row at once, not
    whenever the garbage collector gets to the abandoned generator."""
    try:
        yield
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


# -- HTTP ---------------------------------------------------------------------------------------


class _Stream(StreamingResponse):
    """A streamed answer that closes its generator once the response ends, a client gone included:
    left to the garbage collector (a cancelled task's traceback can hold it in a cycle), a row whose
    reader left could generate on to its last token."""

    def __init__(self, items: Iterator[bytes], media_type: str):
        super().__init__(items, media_type=media_type, headers=NO_BUFFERING)
        self._items = items

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # no thread is inside the generator now: starlette waits for the one reading it
            close = getattr(self._items, "close", None)
            if close is not None:
                close()


def ndjson(frames: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    with _closing(frames):
        try:
            for f in frames:
                yield (json.dumps(f) + "\n").encode()
        except Exception as exc:  # noqa: BLE001 - Ollama's convention: a last line with the error
            yield stream_error(False, f"generation failed: {exc}")


def sse(chunks: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    with _closing(chunks):
        try:
            for c in chunks:
                yield f"data: {json.dumps(c)}\n\n".encode()
        except Exception as exc:  # noqa: BLE001 - OpenAI's convention: an error event, and no [DONE]
            yield stream_error(True, f"generation failed: {exc}")
            return
        yield b"data: [DONE]\n\n"


def _collect_ollama(frames: Iterator[dict[str, Any]], chat: bool) -> dict[str, Any]:
    text, last = "", {}
    for f in frames:
        text += f["message"]["content"] if chat else f["response"]
        last = f
    if chat:
        last["message"] = {"role": "assistant", "content": text}
    else:
        last["response"] = text
    return last


def _collect_openai(chunks: Iterator[dict[str, Any]], chat: bool) -> dict[str, Any]:
    text, last = "", {}
    for c in chunks:
        choice = c["choices"][0]
        text += (choice["delta"].get("content") or "") if chat else choice["text"]
        last = c
    choice = last["choices"][0]
    if chat:
        last.update(object="chat.completion", choices=[{"index": 0, "finish_reason": choice["finish_reason"],
                                                        "message": {"role": "assistant", "content": text}}])
    else:
        last.update(choices=[{"index": 0, "text": text, "finish_reason": choice["finish_reason"], "logprobs": None}])
    return last


def create_app(server: ModelServer) -> Starlette:
    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadInput(f"body over {MAX_BODY} bytes")
        try:
            body = nesting.loads(raw or b"{}", "the body")  # NestedTooDeep is a BadInput: a 400
        except ValueError:
            raise BadInput("body is not JSON") from None
        if not isinstance(body, dict):
            raise BadInput("body must be a JSON object")
        return body

    def guarded(handler: Callable[..., Any], openai: bool) -> Callable[[Request], Any]:
        protocol = "openai" if openai else "ollama"

        def error(status: int, message: str) -> JSONResponse:
            return JSONResponse(error_body(protocol, status, message), status_code=status)

        async def endpoint(request: Request) -> Response:
            if server.token is not None:
                scheme, _, value = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), server.token.encode()):
                    return error(401, "a valid bearer token is required")
            try:
                return await handler(request)
            except BadInput as exc:
                return error(400, str(exc))
            except ModelNotFound as exc:
                return error(404, str(exc))
            except Exception as exc:  # a generation that failed before its answer began
                log.exception("model server: %s failed", request.url.path)
                return error(500, f"{type(exc).__name__}: {exc}")

        return endpoint

    async def generate(request: Request, chat: bool = False) -> Response:
        frames, stream = await run_in_threadpool(server.ollama_generate, await body_of(request), chat)
        if stream:
            return _Stream(ndjson(frames), NDJSON)
        return JSONResponse(await run_in_threadpool(_collect_ollama, frames, chat))

    async def chat(request: Request) -> Response:
        return await generate(request, chat=True)

    async def openai_generate(request: Request, chat: bool) -> Response:
        chunks, stream = await run_in_threadpool(server.openai_generate, await body_of(request), chat)
        if stream:
            return _Stream(sse(chunks), "text/event-stream")
        return JSONResponse(await run_in_threadpool(_collect_openai, chunks, chat))

    async def chat_completions(request: Request) -> Response:
        return await openai_generate(request, True)

    async def completions(request: Request) -> Response:
        return await openai_generate(request, False)

    async def embed(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(server.ollama_embed, await body_of(request), False))

    async def embeddings(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(server.ollama_embed, await body_of(request), True))

    async def openai_embeddings(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(server.openai_embed, await body_of(request)))

    async def tags(request: Request) -> Response:
        return JSONResponse(server.tags())

    async def ps(request: Request) -> Response:
        return JSONResponse(server.ps())

    async def show(request: Request) -> Response:
        return JSONResponse(server.show(await body_of(request)))

    async def version(request: Request) -> Response:
        return JSONResponse({"version": f"clusterai-{__version__}"})

    async def models(request: Request) -> Response:
        return JSONResponse(server.openai_models())

    ollama_routes = [("/api/generate", generate, "POST"), ("/api/chat", chat, "POST"), ("/api/embed", embed, "POST"),
                     ("/api/embeddings", embeddings, "POST"), ("/api/tags", tags, "GET"), ("/api/ps", ps, "GET"),
                     ("/api/show", show, "POST"), ("/api/version", version, "GET")]
    openai_routes = [("/v1/chat/completions", chat_completions, "POST"), ("/v1/completions", completions, "POST"),
                     ("/v1/embeddings", openai_embeddings, "POST"), ("/v1/models", models, "GET")]
    routes = [Route(path, guarded(fn, False), methods=[method]) for path, fn, method in ollama_routes]
    routes += [Route(path, guarded(fn, True), methods=[method]) for path, fn, method in openai_routes]
    return Starlette(routes=routes)
