"""The gateway's Ollama <-> OpenAI translation without a network: requests, whole answers, errors,
and SSE streams rebuilt as NDJSON whatever the chunk boundaries."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from clusterai.llm.gateway.translate import (
    TRANSLATED,
    StreamToNdjson,
    Untranslatable,
    answer_to_ollama,
    error_to_ollama,
    request_to_openai,
)
from clusterai.llm.protocol import stream_error

# -- helpers -----------------------------------------------------------------------------------


def sse(*events: Any, done: bool = True, eol: str = "\n") -> bytes:
    """An OpenAI stream as a server writes it: one `data:` line per event, a blank line after each."""
    text = "".join(f"data: {json.dumps(e, ensure_ascii=False)}{eol}{eol}" for e in events)
    return (text + (f"data: [DONE]{eol}{eol}" if done else "")).encode()


def chat_chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


USAGE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def lines(out: bytes) -> list[dict[str, Any]]:
    assert out == b"" or out.endswith(b"\n")
    return [json.loads(line) for line in out.decode().split("\n") if line]


def stable(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames without what depends on the clock."""
    return [{k: v for k, v in f.items() if k not in ("created_at", "total_duration", "eval_duration")}
            for f in frames]


def run(raw: bytes, path: str = "/api/chat", step: int | None = None) -> tuple[bytes, StreamToNdjson]:
    """Feed a whole stream, in one piece or `step` bytes at a time, then close it."""
    s = StreamToNdjson(path, "m", time.perf_counter())
    pieces = [raw] if step is None else [raw[i:i + step] for i in range(0, len(raw), step)]
    out = b"".join(s.feed(p) for p in pieces)
    return out + s.close(), s


# A realistic vLLM chat stream: a role-only first delta, multi-byte text, finish_reason, then usage alone.
CHAT_STREAM = (b": keep-alive comment\n\n" + b"event: message\n"
               + sse(chat_chunk("", role="assistant"), chat_chunk("Grüß "), chat_chunk("dich 世界 🎉"),
                     chat_chunk(None, "stop"), USAGE))

# -- requests --------------------------------------------------------------------------------------


def test_translated_paths() -> None:
    assert TRANSLATED == {"/api/generate": "/v1/completions", "/api/chat": "/v1/chat/completions",
                          "/api/embed": "/v1/embeddings", "/api/embeddings": "/v1/embeddings"}


def test_generate_becomes_a_streamed_completion_by_default() -> None:
    path, body = request_to_openai("/api/generate", {"model": "llama3:8b", "prompt": "Hi", "keep_alive": "5m",
                                                     "raw": True})
    assert path == "/v1/completions"
    assert body == {"model": "llama3:8b", "prompt": "Hi", "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("stream, expected", [(False, {"stream": False}), (None, {"stream": True, "stream_options":
                                                                                  {"include_usage": True}}),
                                              (True, {"stream": True, "stream_options": {"include_usage": True}})])
def test_stream_flag(stream: bool | None, expected: dict[str, Any]) -> None:
    _, body = request_to_openai("/api/chat", {"model": "m", "messages": [], "stream": stream})
    assert {k: v for k, v in body.items() if k.startswith("stream")} == expected


def test_options_map_to_openai_fields_and_unknown_ones_are_dropped() -> None:
    options = {"num_predict": 50, "temperature": 0.2, "top_p": 0.9, "seed": 42, "stop": ["\n\n", "END"],
               "frequency_penalty": 0.5, "presence_penalty": 0.1, "top_k": 40, "num_ctx": 4096, "mirostat": 1}
    _, body = request_to_openai("/api/generate", {"model": "m", "prompt": "p", "stream": False, "options": options,
                                                  "stop": ["ignored"], "max_tokens": 9})
    assert body == {"model": "m", "prompt": "p", "stream": False, "max_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                    "seed": 42, "stop": ["\n\n", "END"], "frequency_penalty": 0.5, "presence_penalty": 0.1}


@pytest.mark.parametrize("limit", [-1, -2, 0])
def test_unlimited_num_predict_sets_no_max_tokens(limit: int) -> None:
    _, body = request_to_openai("/api/generate", {"model": "m", "prompt": "p", "options": {"num_predict": limit}})
    assert "max_tokens" not in body


def test_stop_as_a_string() -> None:
    _, body = request_to_openai("/api/chat", {"model": "m", "messages": [], "options": {"stop": "###"}})
    assert body["stop"] == "###"


def test_format() -> None:
    _, body = request_to_openai("/api/generate", {"model": "m", "prompt": "p", "format": "json"})
    assert body["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    _, body = request_to_openai("/api/chat", {"model": "m", "messages": [], "format": schema})
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def test_generate_with_system_becomes_a_chat() -> None:
    path, body = request_to_openai("/api/generate", {"model": "m", "prompt": "Hi", "system": "Be brief.",
                                                     "stream": False})
    assert path == "/v1/chat/completions"
    assert body == {"model": "m", "stream": False, "messages": [{"role": "system", "content": "Be brief."},
                                                                {"role": "user", "content": "Hi"}]}


def test_suffix_goes_to_completions() -> None:
    _, body = request_to_openai("/api/generate", {"model": "m", "prompt": "def f(", "suffix": "    return x"})
    assert body["suffix"] == "    return x"
    with pytest.raises(Untranslatable, match="suffix"):
        request_to_openai("/api/generate", {"model": "m", "prompt": "p", "suffix": "s", "system": "x"})


@pytest.mark.parametrize("path, body, message", [
    ("/api/generate", {"model": "m", "prompt": "p", "context": [1, 2, 3]}, "'context' has no OpenAI equivalent"),
    ("/api/generate", {"model": "m", "prompt": "p", "template": "{{ .Prompt }}"},
     "'template' has no OpenAI equivalent"),
    ("/api/generate", {"model": "m", "prompt": "p", "images": ["aGk="]}, "images need an Ollama backend"),
    ("/api/generate", {"model": "m", "prompt": "p", "system": "s", "images": ["aGk="]}, "images need an Ollama"),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
     "images need an Ollama backend"),
    ("/api/generate", {"prompt": "p"}, "'model' is required"),
    ("/api/chat", {"model": 3, "messages": []}, "'model' is required"),
    ("/api/chat", {"model": "m", "messages": "hi"}, "'messages' must be a list"),
    ("/api/generate", {"model": "m", "prompt": ["a", "b"]}, "'prompt' must be a string"),
    ("/api/embed", {"model": "m", "input": [1, 2]}, "'input' must be a string or a list of strings"),
    ("/api/embeddings", {"model": "m"}, "'prompt' must be a string"),
    ("/api/pull", {"model": "m"}, "/api/pull has no OpenAI equivalent"),
    ("/api/show", {"model": "m"}, "/api/show has no OpenAI equivalent"),
])
def test_untranslatable(path: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(Untranslatable, match=message):
        request_to_openai(path, body)
    assert issubclass(Untranslatable, ValueError)


def test_empty_context_and_images_are_no_obstacle() -> None:
    path, body = request_to_openai("/api/generate", {"model": "m", "prompt": "p", "context": [], "images": []})
    assert path == "/v1/completions" and body["prompt"] == "p"


def test_chat_messages_tools_and_tool_calls() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris and Rome?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "weather", "arguments": {"city": "Rome"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "weather"},
                {"role": "tool", "content": "rainy", "tool_name": "weather"}]
    path, body = request_to_openai("/api/chat", {"model": "m", "messages": messages, "tools": tools,
                                                 "keep_alive": 0, "stream": False})
    assert path == "/v1/chat/completions"
    assert body["tools"] == tools and "keep_alive" not in body
    system, user, assistant, first, second = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert user == {"role": "user", "content": "Paris and Rome?"}
    calls = assistant["tool_calls"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c["function"]["name"] == "weather" for c in calls)
    assert len({c["id"] for c in calls}) == 2
    # each tool answer names the call it answers, in order, as OpenAI requires
    assert (first["tool_call_id"], second["tool_call_id"]) == (calls[0]["id"], calls[1]["id"])
    assert first == {"role": "tool", "content": "sunny", "tool_call_id": calls[0]["id"]}


def test_tool_call_ids_the_client_kept_are_used() -> None:
    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_abc", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "content": "1", "tool_call_id": "call_abc"}]
    _, body = request_to_openai("/api/chat", {"model": "m", "messages": messages})
    assert body["messages"][0]["tool_calls"] == [{"id": "call_abc", "type": "function",
                                                  "function": {"name": "f", "arguments": "{\"x\": 1}"}}]
    assert body["messages"][1]["tool_call_id"] == "call_abc"


def test_embed() -> None:
    path, body = request_to_openai("/api/embed", {"model": "e", "input": ["a", "b"], "truncate": True,
                                                  "dimensions": 256, "keep_alive": "1m", "options": {}})
    assert path == "/v1/embeddings"
    assert body == {"model": "e", "input": ["a", "b"], "dimensions": 256}
    assert request_to_openai("/api/embed", {"model": "e", "input": "one"})[1] == {"model": "e", "input": "one"}


def test_legacy_embeddings_send_the_prompt_as_input() -> None:
    assert request_to_openai("/api/embeddings", {"model": "e", "prompt": "hello", "options": {"temperature": 1}}) == (
        "/v1/embeddings", {"model": "e", "input": "hello"})


# -- whole answers -----------------------------------------------------------------------------


def completion(text: str = "Hello!", finish: str | None = "stop", usage: bool = True) -> dict[str, Any]:
    answer: dict[str, Any] = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                              "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
    if usage:
        answer["usage"] = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    return answer


def chat_completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


def test_generate_answer() -> None:
    out = answer_to_ollama("/api/generate", "llama3", completion(), 1.5)
    created = out.pop("created_at")
    assert created.endswith("Z")
    assert datetime.fromisoformat(created.replace("Z", "+00:00")).utcoffset() == timedelta(0)
    assert out == {"model": "llama3", "response": "Hello!", "done": True, "done_reason": "stop",
                   "total_duration": 1_500_000_000, "load_duration": 0, "prompt_eval_count": 5,
                   "prompt_eval_duration": 0, "eval_count": 2, "eval_duration": 1_500_000_000}
    assert isinstance(out["total_duration"], int)


def test_generate_answer_from_a_chat_completion() -> None:
    # /api/generate with `system` went to /v1/chat/completions; the client still wants `response`
    out = answer_to_ollama("/api/generate", "m", chat_completion({"role": "assistant", "content": "Hi."}), 0.1)
    assert out["response"] == "Hi." and "message" not in out and out["prompt_eval_count"] == 9


@pytest.mark.parametrize("finish, reason", [("length", "length"), ("stop", "stop"), (None, "stop"),
                                            ("tool_calls", "stop"), ("content_filter", "stop")])
def test_done_reason(finish: str | None, reason: str) -> None:
    assert answer_to_ollama("/api/generate", "m", completion(finish=finish), 0.0)["done_reason"] == reason


def test_missing_usage_counts_zero() -> None:
    out = answer_to_ollama("/api/generate", "m", completion(usage=False), 0.0)
    assert (out["prompt_eval_count"], out["eval_count"]) == (0, 0)


def test_chat_answer() -> None:
    out = answer_to_ollama("/api/chat", "m", chat_completion({"role": "assistant", "content": "Bonjour"}), 2.0)
    assert out["message"] == {"role": "assistant", "content": "Bonjour"} and "response" not in out
    assert (out["done"], out["eval_count"], out["eval_duration"]) == (True, 4, 2_000_000_000)


def test_chat_answer_with_tool_calls() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": "{not json"}},
        {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}}]}
    out = answer_to_ollama("/api/chat", "m", chat_completion(message, "tool_calls"), 0.3)
    assert out["message"] == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "broken", "arguments": "{not json"}},
        {"function": {"name": "now", "arguments": {}}}]}
    assert out["done_reason"] == "stop"


def embeddings(order: list[int]) -> dict[str, Any]:
    return {"object": "list", "model": "e", "usage": {"prompt_tokens": 6, "total_tokens": 6},
            "data": [{"object": "embedding", "index": i, "embedding": [float(i), 0.5]} for i in order]}


def test_embed_answer_is_ordered_by_index() -> None:
    out = answer_to_ollama("/api/embed", "e", embeddings([2, 0, 1]), 0.25)
    assert out == {"model": "e", "embeddings": [[0.0, 0.5], [1.0, 0.5], [2.0, 0.5]], "total_duration": 250_000_000,
                   "load_duration": 0, "prompt_eval_count": 6}


def test_legacy_embeddings_answer() -> None:
    assert answer_to_ollama("/api/embeddings", "e", embeddings([0]), 0.1) == {"embedding": [0.0, 0.5]}


@pytest.mark.parametrize("path, answer, message", [
    ("/api/generate", {"object": "text_completion"}, "no choices"),
    ("/api/chat", {"choices": []}, "no choices"),
    ("/api/chat", {"choices": ["x"]}, "no choices"),
    ("/api/embed", {"data": []}, "no embeddings"),
    ("/api/embed", {"data": [{"index": 0}]}, "no embeddings"),
    ("/api/embeddings", {}, "no embeddings"),
    ("/api/tags", {}, "no Ollama answer"),
])
def test_malformed_answers(path: str, answer: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        answer_to_ollama(path, "m", answer, 0.0)


def test_answers_parse_with_the_official_client() -> None:
    ollama = pytest.importorskip("ollama")
    generated = ollama.GenerateResponse.model_validate(answer_to_ollama("/api/generate", "m", completion(), 1.0))
    assert generated.response == "Hello!" and generated.done and generated.eval_count == 2
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}
    chat = ollama.ChatResponse.model_validate(answer_to_ollama("/api/chat", "m", chat_completion(message), 1.0))
    assert chat.message.tool_calls[0].function.arguments == {"a": 1}
    embed = ollama.EmbedResponse.model_validate(answer_to_ollama("/api/embed", "e", embeddings([1, 0]), 1.0))
    assert embed.embeddings == [[0.0, 0.5], [1.0, 0.5]]
    legacy = ollama.EmbeddingsResponse.model_validate(answer_to_ollama("/api/embeddings", "e", embeddings([0]), 1.0))
    assert legacy.embedding == [0.0, 0.5]
    out, _ = run(CHAT_STREAM)
    for frame in lines(out):
        ollama.ChatResponse.model_validate(frame)


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    (b'{"error": {"message": "model not found", "type": "invalid_request_error"}}', "model not found"),
    (b'{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}', "too long"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b'{"error": "plain"}', "plain"),
    (b"<html>Bad Gateway</html>\n", "<html>Bad Gateway</html>"),
    (b"", "the backend answered HTTP 502"),
    (b"{}", "the backend answered HTTP 502"),
    (b"[1, 2]", "the backend answered HTTP 502"),
    (b"caf\xc3", "caf\ufffd"),
])
def test_error_to_ollama(raw: bytes, message: str) -> None:
    assert json.loads(error_to_ollama(502, raw)) == {"error": message}


# -- streams -------------------------------------------------------------------------------------------


def test_chat_stream() -> None:
    out, s = run(CHAT_STREAM)
    frames = lines(out)
    assert s.finished
    assert stable(frames) == [
        {"model": "m", "message": {"role": "assistant", "content": "Grüß "}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "dich 世界 🎉"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "load_duration": 0, "prompt_eval_count": 7, "prompt_eval_duration": 0, "eval_count": 3}]
    assert all(f["created_at"].endswith("Z") for f in frames)
    assert isinstance(frames[-1]["total_duration"], int) and frames[-1]["total_duration"] > 0


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_every_chunk_boundary_gives_the_same_frames(eol: str) -> None:
    raw = CHAT_STREAM.replace(b"\n", eol.encode())
    whole = stable(lines(run(raw)[0]))
    for cut in range(1, len(raw)):  # two pieces, split at every byte position
        s = StreamToNdjson("/api/chat", "m", time.perf_counter())
        out = s.feed(raw[:cut]) + s.feed(raw[cut:]) + s.close()
        assert stable(lines(out)) == whole, cut
    assert stable(lines(run(raw, step=1)[0])) == whole
    assert stable(lines(run(raw, step=7)[0])) == whole


def test_multibyte_character_split_across_chunks() -> None:
    raw = sse(chat_chunk("🎉"), chat_chunk(None, "stop"))
    cut = raw.index("🎉".encode()) + 2  # inside the emoji's four bytes
    s = StreamToNdjson("/api/chat", "m", time.perf_counter())
    assert s.feed(raw[:cut]) == b""
    first = lines(s.feed(raw[cut:]))
    assert first[0]["message"]["content"] == "🎉"


def test_lines_go_out_as_soon_as_their_event_is_complete() -> None:
    s = StreamToNdjson("/api/generate", "m", time.perf_counter())
    assert lines(s.feed(sse(text_chunk("a"), done=False)))[0]["response"] == "a"
    assert s.feed(sse(text_chunk("", "length"), done=False)) == b""  # finish: wait for usage and [DONE]
    assert not s.finished
    done = lines(s.feed(b"data: [DONE]\n\n"))
    assert len(done) == 1 and done[0]["done"] and done[0]["done_reason"] == "length" and s.finished
    assert s.feed(sse(text_chunk("late"))) == b"" and s.close() == b""


def test_generate_stream_from_completions_and_from_chat() -> None:
    out, _ = run(sse(text_chunk("Hel"), text_chunk("lo"), text_chunk("", "stop")), "/api/generate")
    assert [f["response"] for f in lines(out)] == ["Hel", "lo", ""]
    out, _ = run(sse(chat_chunk("Hel", role="assistant"), chat_chunk("lo"), chat_chunk(None, "stop")), "/api/generate")
    frames = lines(out)
    assert [f["response"] for f in frames] == ["Hel", "lo", ""] and all("message" not in f for f in frames)
    assert frames[-1]["done"] and frames[-1]["done_reason"] == "stop"


def test_usage_after_finish_reason_reaches_the_done_frame() -> None:
    out, _ = run(sse(chat_chunk("x"), chat_chunk(None, "length"), USAGE))
    last = lines(out)[-1]
    assert (last["done_reason"], last["prompt_eval_count"], last["eval_count"]) == ("length", 7, 3)


def test_stream_without_usage_counts_zero() -> None:
    last = lines(run(sse(chat_chunk("x"), chat_chunk(None, "stop")))[0])[-1]
    assert (last["prompt_eval_count"], last["eval_count"]) == (0, 0)


@pytest.mark.parametrize("event, message", [
    ({"error": {"message": "CUDA out of memory", "type": "server_error"}}, "CUDA out of memory"),
    ({"object": "error", "message": "engine dead", "type": "InternalServerError", "code": 500}, "engine dead"),
    ({"error": {}}, "the backend failed mid-stream"),
])
def test_error_event_ends_the_stream(event: dict[str, Any], message: str) -> None:
    s = StreamToNdjson("/api/chat", "m", time.perf_counter())
    out = s.feed(sse(chat_chunk("partial"), event, chat_chunk("more"), done=True))
    frames = lines(out)
    assert frames[-1] == {"error": message} and len(frames) == 2 and s.finished
    assert s.feed(sse(chat_chunk("again"))) == b"" and s.close() == b""


def test_early_end_is_an_error_line() -> None:
    out, s = run(sse(chat_chunk("half"), done=False))
    frames = lines(out)
    assert frames[0]["message"]["content"] == "half"
    assert out.endswith(stream_error(False, "the backend ended the stream early"))
    assert s.finished and s.close() == b""


def test_end_without_done_after_a_finish_reason_still_finishes() -> None:
    out, s = run(sse(chat_chunk("ok"), chat_chunk(None, "stop"), USAGE, done=False))
    last = lines(out)[-1]
    assert last["done"] and last["done_reason"] == "stop" and last["eval_count"] == 3 and s.finished


def test_last_event_without_its_newlines() -> None:
    out, s = run(sse(chat_chunk("a"), done=False) + b"data: [DONE]")
    assert lines(out)[-1]["done"] and s.finished


def test_empty_stream_is_an_early_end() -> None:
    out, _ = run(b"")
    assert lines(out) == [{"error": "the backend ended the stream early"}]


def test_unreadable_event() -> None:
    out, s = run(b"data: {not json\n\n" + sse(chat_chunk("x")))
    assert lines(out) == [{"error": "the backend sent an unreadable stream event"}] and s.finished


def test_event_spread_over_several_data_lines() -> None:
    event = json.dumps(chat_chunk("joined"), indent=1).replace("\n", "\ndata: ")
    out, _ = run(f"data: {event}\n\n".encode() + sse(chat_chunk(None, "stop")))
    assert lines(out)[0]["message"]["content"] == "joined"


def test_data_without_a_space_after_the_colon() -> None:
    out, _ = run(b"data:" + json.dumps(chat_chunk("tight")).encode() + b"\n\ndata:[DONE]\n\n")
    assert [f["message"]["content"] for f in lines(out)] == ["tight", ""]


def tool_stream(finish: str | None) -> list[dict[str, Any]]:
    """Two tool calls in fragments, the way vLLM and OpenAI send them."""
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return chat_chunk(None, tool_calls=[{"index": index, **fields}])
    events = [chat_chunk(None, role="assistant"),
              call(0, id="call_a", type="function", function={"name": "weather", "arguments": ""}),
              call(0, function={"arguments": "{\"city\": "}), call(0, function={"arguments": "\"Zürich\"}"}),
              call(1, id="call_b", type="function", function={"name": "time", "arguments": "{}"})]
    return events + ([chat_chunk(None, finish)] if finish else []) + [USAGE]


def test_tool_calls_stream_in_one_frame_at_finish_reason() -> None:
    s = StreamToNdjson("/api/chat", "m", time.perf_counter())
    events = tool_stream("tool_calls")
    assert s.feed(sse(*events[:-2], done=False)) == b""  # fragments are held back
    calls = lines(s.feed(sse(events[-2], done=False)))
    assert stable(calls) == [{"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "weather", "arguments": {"city": "Zürich"}}},
        {"function": {"name": "time", "arguments": {}}}]}, "done": False}]
    done = lines(s.feed(sse(events[-1])))
    assert len(done) == 1 and done[0]["done"] and done[0]["done_reason"] == "stop"
    ollama = pytest.importorskip("ollama")
    ollama.ChatResponse.model_validate(calls[0])


def test_tool_calls_without_finish_reason_go_out_at_the_end() -> None:
    out, _ = run(sse(*tool_stream(None)))
    frames = lines(out)
    assert [len(f["message"].get("tool_calls", [])) for f in frames] == [2, 0] and frames[-1]["done"]


def test_tool_call_stream_at_every_boundary() -> None:
    raw = sse(*tool_stream("tool_calls"))
    whole = stable(lines(run(raw)[0]))
    assert stable(lines(run(raw, step=1)[0])) == whole
    assert whole[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Zürich"}


def test_only_generation_streams() -> None:
    with pytest.raises(Untranslatable):
        StreamToNdjson("/api/embed", "m", 0.0)
