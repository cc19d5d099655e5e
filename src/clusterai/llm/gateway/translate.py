"""Speaks Ollama to a client while the backend only speaks OpenAI (vLLM, llama.cpp, LM Studio).

An Ollama request (/api/generate, /api/chat, /api/embed, /api/embeddings) becomes the matching
OpenAI request; the OpenAI answer comes back as exactly what Ollama would have sent: a whole JSON
answer, or, when streaming, NDJSON lines rebuilt from the server-sent events as they arrive.
Everything here is pure: the gateway does the I/O and hands bytes and parsed bodies in.
"""

from __future__ import annotations

import json
import time
from typing import Any

from clusterai.llm.protocol import stream_error, timestamp

TRANSLATED = {"/api/generate": "/v1/completions", "/api/chat": "/v1/chat/completions",
              "/api/embed": "/v1/embeddings", "/api/embeddings": "/v1/embeddings"}
# Ollama options with an OpenAI field of the same meaning and name; num_predict and stop are handled apart.
SAME_OPTIONS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")


class Untranslatable(ValueError):
    """a request that has no OpenAI equivalent (message says why)"""


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    """Ollama's options, format and stream flag, as OpenAI request fields."""
    options = body.get("options")
    options = options if isinstance(options, dict) else {}
    limit = options.get("num_predict")
    # Ollama reads -1 (and -2, and 0) as "no limit", which is OpenAI's default when max_tokens is absent.
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        out["max_tokens"] = limit
    for name in SAME_OPTIONS:
        if isinstance(options.get(name), (int, float)) and not isinstance(options[name], bool):
            out[name] = options[name]
    stop = options.get("stop")
    if isinstance(stop, str) or (isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop)):
        out["stop"] = stop
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": fmt}}
    if body.get("stream", True) is not False:  # Ollama streams unless told not to; null counts as "not told"
        out.update(stream=True, stream_options={"include_usage": True})
    else:
        out["stream"] = False


def _function(call: Any) -> dict[str, Any]:
    """The `function` of a tool call, in Ollama's shape or OpenAI's; {} when there is none."""
    fn = call.get("function") if isinstance(call, dict) else None
    return fn if isinstance(fn, dict) else {}


def _messages(raw: Any) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI's: tool calls get the id, type and JSON-string arguments
    OpenAI requires, and each tool answer the id of the call it answers (Ollama matches by order)."""
    if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
        raise Untranslatable("'messages' must be a list of {role, content}")
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of calls not yet answered by a tool message
    for m in raw:
        if m.get("images"):
            raise Untranslatable("images need an Ollama backend")
        msg: dict[str, Any] = {"role": m.get("role"), "content": m.get("content")}
        if m.get("tool_calls"):
            msg["tool_calls"] = []
            for call in m["tool_calls"] if isinstance(m["tool_calls"], list) else []:
                fn = _function(call)
                args = fn.get("arguments", {})
                given = call.get("id") if isinstance(call, dict) else None  # newer Ollama clients keep OpenAI's
                ident = given if isinstance(given, str) else f"call_{len(out)}_{len(msg['tool_calls'])}"
                pending.append(ident)
                msg["tool_calls"].append({"id": ident, "type": "function", "function": {
                    "name": fn.get("name"), "arguments": args if isinstance(args, str) else json.dumps(args)}})
        if m.get("role") == "tool" and (pending or m.get("tool_call_id")):
            msg["tool_call_id"] = m.get("tool_call_id") or pending[0]
            if msg["tool_call_id"] in pending:
                pending.remove(msg["tool_call_id"])
        out.append(msg)
    return out


def request_to_openai(path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Ollama path + parsed JSON body -> (OpenAI path, OpenAI JSON body)."""
    if path not in TRANSLATED:
        raise Untranslatable(f"{path} has no OpenAI equivalent; it needs an Ollama backend")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Untranslatable("'model' is required")
    out: dict[str, Any] = {"model": model}
    if path == "/api/embeddings":
        if not isinstance(body.get("prompt"), str):
            raise Untranslatable("'prompt' must be a string")
        return TRANSLATED[path], {"model": model, "input": body["prompt"]}
    if path == "/api/embed":
        texts = body.get("input")
        if not (isinstance(texts, str) or (isinstance(texts, list) and all(isinstance(t, str) for t in texts))):
            raise Untranslatable("'input' must be a string or a list of strings")
        out["input"] = texts
        # `truncate` has no OpenAI field: the backend truncates or refuses by its own rule.
        if isinstance(body.get("dimensions"), int) and body["dimensions"] > 0:
            out["dimensions"] = body["dimensions"]
        return TRANSLATED[path], out
    _sampling(body, out)
    if path == "/api/chat":
        out["messages"] = _messages(body.get("messages"))
        if body.get("tools"):
            out["tools"] = body["tools"]  # Ollama's tool schema is OpenAI's
        return TRANSLATED[path], out
    for field in ("context", "template"):
        if body.get(field):
            raise Untranslatable(f"'{field}' has no OpenAI equivalent; it needs an Ollama backend")
    if body.get("images"):
        raise Untranslatable("images need an Ollama backend")
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise Untranslatable("'prompt' must be a string")
    if body.get("system"):  # completions have no system text; a chat of two messages does
        if body.get("suffix"):
            raise Untranslatable("'suffix' together with 'system' has no OpenAI equivalent")
        out["messages"] = [{"role": "system", "content": body["system"]}, {"role": "user", "content": prompt}]
        return "/v1/chat/completions", out
    out["prompt"] = prompt
    if body.get("suffix"):
        out["suffix"] = body["suffix"]
    return TRANSLATED[path], out


def _text(choice: dict[str, Any]) -> str:
    """The text of a choice in any of OpenAI's shapes: completion, chat message, or stream delta."""
    if isinstance(choice.get("text"), str):
        return str(choice["text"])
    part = choice.get("message") or choice.get("delta") or {}
    return (part.get("content") or "") if isinstance(part, dict) else ""


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls as Ollama's: arguments an object (kept as text when they are not JSON)."""
    out = []
    for call in calls:
        fn = _function(call)
        args = fn.get("arguments") or "{}"  # a call without arguments: Ollama says {}
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
            except ValueError:
                parsed = None
            args = parsed if isinstance(parsed, dict) else args
        out.append({"function": {"name": fn.get("name"), "arguments": args}})
    return out


def _finale(model: str, chat: bool, finish: Any, usage: Any, took: float) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    out: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason="length" if finish == "length" else "stop",
               total_duration=int(took * 1e9), load_duration=0, prompt_eval_count=usage.get("prompt_tokens") or 0,
               prompt_eval_duration=0, eval_count=usage.get("completion_tokens") or 0, eval_duration=int(took * 1e9))
    return out


def _index(item: dict[str, Any]) -> int:
    return item["index"] if isinstance(item.get("index"), int) else 0


def answer_to_ollama(path: str, model: str, answer: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """A whole (non-streamed) OpenAI answer -> the Ollama answer for `path`. elapsed: seconds the call took."""
    if path in ("/api/embed", "/api/embeddings"):
        data = answer.get("data")
        if not isinstance(data, list) or not data or not all(
                isinstance(d, dict) and isinstance(d.get("embedding"), list) for d in data):
            raise ValueError("the backend's answer has no embeddings ('data' missing or malformed)")
        ordered = [d["embedding"] for d in sorted(data, key=_index)]
        if path == "/api/embeddings":
            return {"embedding": ordered[0]}
        usage = answer.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return {"model": model, "embeddings": ordered, "total_duration": int(elapsed * 1e9), "load_duration": 0,
                "prompt_eval_count": usage.get("prompt_tokens") or 0}
    if path not in TRANSLATED:
        raise ValueError(f"no Ollama answer for {path}")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the backend's answer has no choices")
    chat = path == "/api/chat"
    out = _finale(model, chat, choices[0].get("finish_reason"), answer.get("usage"), elapsed)
    if chat:
        message = choices[0].get("message")
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        out["message"] = {"role": "assistant", "content": _text(choices[0])}
        if isinstance(calls, list) and calls:
            out["message"]["tool_calls"] = _tool_calls(calls)
    else:
        out["response"] = _text(choices[0])
    return out


def _error_text(body: Any) -> str | None:
    """The message in an error body of any common shape: OpenAI's, vLLM's older, FastAPI's, plain."""
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if key in body:
                inner = _error_text(body[key])
                if inner:
                    return inner
        return None
    return body if isinstance(body, str) and body.strip() else None


def error_to_ollama(status: int, raw: bytes) -> bytes:
    """An OpenAI error body (any shape, maybe not JSON) -> Ollama's {"error": "text"} as JSON bytes."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        message = _error_text(json.loads(text))
    except ValueError:
        message = text[:1000] or None  # an HTML page from a proxy, say: its start is better than nothing
    return json.dumps({"error": message or f"the backend answered HTTP {status}"}).encode()


class StreamToNdjson:
    """Feed it the raw SSE bytes of an OpenAI stream as they arrive (chunks split anywhere, even inside
    a line or inside a multi-byte UTF-8 char); it returns the NDJSON bytes to send an Ollama client now."""

    def __init__(self, path: str, model: str, started: float):
        if path not in ("/api/generate", "/api/chat"):
            raise Untranslatable(f"{path} does not stream")
        self._chat, self._model, self._started = path == "/api/chat", model, started
        self._buffer = b""  # bytes after the last newline: split lines and split characters wait here
        self._data: list[str] = []  # the data lines of the event being read (SSE allows several)
        self._finish: str | None = None
        self._seen_finish = False
        self._usage: dict[str, Any] = {}
        self._calls: dict[int, dict[str, str]] = {}  # tool calls being assembled, by index
        self._finished = False
        self._failed = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def failed(self) -> bool:
        """The stream ended with an error: the backend's, or its own end before the answer's."""
        return self._failed

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            return b""
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        return b"".join(self._line(line) for line in lines)

    def close(self) -> bytes:
        # A last line without its newline, and an event without its blank line, still count.
        out = self._line(self._buffer) + self._dispatch()
        self._buffer = b""
        if self._finished:
            return out
        if self._seen_finish:
            return out + self._done()
        return out + self._fail("the backend ended the stream early")

    def _line(self, raw: bytes) -> bytes:
        if self._finished:
            return b""
        line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        if not line:
            return self._dispatch()  # a blank line ends an event
        field, _, value = line.partition(":")
        if field == "data":  # others (comments, event:, id:, retry:) say nothing Ollama needs
            self._data.append(value.removeprefix(" "))
        return b""

    def _dispatch(self) -> bytes:
        if not self._data or self._finished:
            return b""
        payload, self._data = "\n".join(self._data), []
        if payload.strip() == "[DONE]":
            return self._done()
        try:
            event = json.loads(payload)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            return self._fail("the backend sent an unreadable stream event")
        if "error" in event or event.get("object") == "error":  # vLLM before 0.6 sent the latter
            return self._fail(_error_text(event) or "the backend failed mid-stream")
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        out = b""
        choices = event.get("choices")
        for choice in choices[:1] if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            text = _text(choice)
            if text:
                out += self._frame(text)
            delta = choice.get("delta")
            if self._chat and isinstance(delta, dict):
                for i, call in enumerate(delta.get("tool_calls") or []):
                    # name and arguments come in pieces, each marked with the index of its call
                    fn, index = _function(call), call.get("index") if isinstance(call, dict) else None
                    slot = self._calls.setdefault(index if isinstance(index, int) else i, {"name": "", "arguments": ""})
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                self._finish, self._seen_finish = choice["finish_reason"], True
                out += self._flush_calls()
        return out

    def _frame(self, text: str, calls: list[dict[str, Any]] | None = None) -> bytes:
        frame: dict[str, Any] = {"model": self._model, "created_at": timestamp()}
        if self._chat:
            frame["message"] = {"role": "assistant", "content": text}
            if calls:
                frame["message"]["tool_calls"] = calls
        else:
            frame["response"] = text
        frame["done"] = False
        return (json.dumps(frame) + "\n").encode()

    def _flush_calls(self) -> bytes:
        """The assembled tool calls in one frame, as Ollama sends them."""
        if not self._calls:
            return b""
        calls = [{"function": self._calls[i]} for i in sorted(self._calls)]
        self._calls = {}
        return self._frame("", _tool_calls(calls))

    def _done(self) -> bytes:
        out = self._flush_calls()
        self._finished = True
        took = time.perf_counter() - self._started
        return out + (json.dumps(_finale(self._model, self._chat, self._finish, self._usage, took)) + "\n").encode()

    def _fail(self, message: str) -> bytes:
        self._finished, self._failed, self._data, self._calls = True, True, [], {}
        return stream_error(False, message)
