"""Ollama's keep_alive as the gateway and the model server read it, the end of an answer as the
gateway reads it (tokens, seconds, the load's duration), and Ollama's expires_at."""

from __future__ import annotations

import json
import math

import pytest

from clusterai.core.keep_alive import FOREVER, as_ollama, keep_alive_seconds
from clusterai.errors import BadInput
from clusterai.llm.gateway.service import _epoch, usage_of


@pytest.mark.parametrize(("value", "seconds"), [
    ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("10s", 10.0), ("2.5s", 2.5), (".5s", 0.5),
    (30, 30.0), ("30", 30.0), (2.5, 2.5),
    (0, 0.0), ("0", 0.0), ("0s", 0.0), (-1, FOREVER), ("-1", FOREVER), ("-5m", FOREVER), (-0.5, FOREVER),
])
def test_ollamas_forms(value: object, seconds: float) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["5x", "", "m", "m5", "5 m", "5min", "1h30", "five", True, None, [], {"m": 5}, "nan",
                                   float("nan")])
def test_anything_else_is_refused_clearly(value: object) -> None:
    with pytest.raises(BadInput, match="invalid keep_alive"):
        keep_alive_seconds(value)


def test_what_is_sent_back_to_ollama() -> None:
    assert as_ollama(FOREVER) == -1 and as_ollama(0) == 0 and as_ollama(90.0) == "90s"
    assert keep_alive_seconds(as_ollama(90.0)) == 90.0


def test_the_end_of_an_answer_says_tokens_seconds_and_the_load() -> None:
    ollama = json.dumps({"done": True, "eval_count": 12, "eval_duration": 600_000_000,
                         "load_duration": 2_000_000_000}).encode()
    found = usage_of(b'{"response": "x", "done": false}\n' + ollama + b"\n", elapsed=3.0)
    assert (found.tokens, found.seconds, found.load_seconds) == (12, 0.6, 2.0)
    openai = b'data: {"choices": [], "usage": {"completion_tokens": 5}}\n\ndata: [DONE]\n\n'
    found = usage_of(openai, elapsed=1.5)
    assert (found.tokens, found.seconds, found.load_seconds) == (5, 1.5, None)
    loaded = usage_of(json.dumps({"done": True, "done_reason": "load", "load_duration": 10}).encode(), 0.1)
    assert loaded.tokens == 0 and loaded.load_seconds == 1e-8
    assert usage_of(b"not json at all", 1.0).load_seconds is None


def test_ollamas_expires_at() -> None:
    assert _epoch("2026-12-04T20:00:00Z") == 1796414400.0
    assert _epoch("2026-12-04T21:00:00.123456789+01:00") == pytest.approx(1796414400.123456)
    assert _epoch("2318-01-01T00:00:00Z") == math.inf  # Ollama's "for good"
    assert _epoch("9999-12-31T00:00:00Z") == math.inf
    assert _epoch(None) == math.inf and _epoch("garbage") == math.inf
