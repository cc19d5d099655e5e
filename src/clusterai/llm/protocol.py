"""How Ollama and OpenAI say that something went wrong, shared by the model server and the gateway."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any


def timestamp() -> str:
    """Now, as Ollama writes `created_at`: UTC, ISO 8601, ending in Z."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def error_body(protocol: str, status: int, message: str) -> dict[str, Any]:
    """An error answer: Ollama's {"error": text}, or OpenAI's {"error": {message, type, ...}}."""
    if protocol == "openai":
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def stream_error(sse: bool, message: str) -> bytes:
    """The end of a stream that broke: an SSE error event (and no [DONE]), or a last NDJSON line."""
    if sse:
        return f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n".encode()
    return (json.dumps({"error": message}) + "\n").encode()


def loads_only(body: dict[str, Any], chat: bool) -> bool:
    """Ollama's request to load a model and generate nothing: an empty prompt (and no system text),
    or a chat without messages."""
    if chat:
        return body.get("messages") in (None, [])
    return body.get("prompt", "") == "" and not body.get("system") and not body.get("images")


def load_answer(model: str, chat: bool) -> dict[str, Any]:
    """Ollama's answer to a load request."""
    answer: dict[str, Any] = {"model": model, "created_at": timestamp()}
    if chat:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer.update(done=True, done_reason="load")
    return answer
