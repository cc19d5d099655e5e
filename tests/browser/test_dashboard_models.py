"""The dashboard's Models section in a real browser (Debian's Chromium driven by Playwright) against
the REST API served over real HTTP (tests/api/api_support.py) in front of two stand-in Ollama
servers (tests/support/fake_ollama.py): the model fleet, one row per model with the replicas
gateway.models asks for, where it is loaded (kept for good, for a while, or expiring within the
minute), its cold loads, cache hit rate, tokens/s and requests; the backends table below it; an
unload shows after the page's refresh; model names from the servers stay text.

llama3.2 is pinned (replicas 2, keep_alive -1) but not preloaded: the placement loop would load a
preloaded model back within one health interval of an unload, so the test loads it itself."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, running_api
from fake_ollama import FakeOllama
from test_dashboard import shot
from test_dashboard_sweeps import browser, open_section  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

EVIL = "<img src=x onerror='window.__pwned = 1'>"  # a model name as a server may list it
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
FLEET = "#fleet-table tr[data-model='llama3.2']"
REFRESH_MS = 15_000  # the page refreshes the section every 5 s


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Api]:
    """The API with a gateway in front of backends a and b; both have llama3.2 and qwen3 (b also a
    model with markup in its name) and hold two models at a time. The servers stop after the API."""
    models = {"llama3.2": 1_000_000, "qwen3": 2_000_000}
    fa = FakeOllama(models=models, load_seconds=0.05, max_loaded=2).start()
    fb = FakeOllama(models={**models, EVIL: 1_000}, load_seconds=0.05, max_loaded=2).start()
    settings = {"gateway": {"backends": [{"name": "a", "url": fa.url}, {"name": "b", "url": fb.url}],
                            "health_interval": 0.3,
                            "models": {"llama3.2": {"replicas": 2, "preload": False, "keep_alive": -1}}}}
    try:
        with running_api(tmp_path / "api", settings) as api:
            yield api
    finally:
        fa.stop()
        fb.stop()


@pytest.fixture
def open_models(open_section: Callable[..., tuple[Any, list[str]]]  # noqa: F811 - the fixture
                ) -> Callable[[Api, str], tuple[Any, list[str]]]:
    """Sign in as `who` and go to the Models section; the page and every error it logs."""
    return lambda api, who: open_section(api, who, "models")


def cells(page: Any, selector: str) -> list[str]:
    return page.locator(f"{selector} td").all_inner_texts()


def loaded_marks(page: Any, model: str) -> dict[str, tuple[str, str]]:
    """backend -> (its mark's state, its text) in the model's "loaded on" cell."""
    marks = page.locator(f"#fleet-table tr[data-model='{model}'] .backend")
    found = marks.evaluate_all("ms => ms.map(m => [m.dataset.backend, m.dataset.state, m.textContent])")
    return {name: (state, text) for name, state, text in found}


def near(shown: str, value: float, unit: str = "") -> bool:
    """A number the page rounded (JavaScript's toFixed), within a rounding step of the API's."""
    match = re.fullmatch(rf"(\d+(?:\.(\d+))?){re.escape(unit)}", shown)
    assert match, shown
    step = 10 ** -len(match.group(2) or "")
    return abs(float(match.group(1)) - value) <= step


def test_the_model_fleet_where_each_model_is_loaded_and_an_unload(gateway: Api, open_models) -> None:
    operator, submitter = gateway.client("operator"), gateway.client("submitter")
    assert operator.get("/api/v1/models").status_code == 200  # starts the placement loop
    for _ in range(3):
        answer = submitter.post("/api/chat", json=CHAT, timeout=30)
        assert answer.status_code == 200, answer.text
    loaded = operator.post("/api/v1/models/load", json={"model": "llama3.2"}).json()  # its 2 replicas
    assert sorted(loaded["loaded"]) == ["a", "b"], loaded
    for backend, keep in (("a", "50s"), ("b", "10m")):  # about to unload on a; for a while on b
        answer = operator.post("/api/v1/models/load",
                               json={"model": "qwen3", "backends": [backend], "keep_alive": keep})
        assert answer.json()["loaded"] == [backend], answer.text
    truth = operator.get("/api/v1/models").json()
    llama = next(m for m in truth["models"] if m["model"] == "llama3.2")
    assert llama["requests"] == 3 and llama["loaded_on"] == 2

    page, errors = open_models(gateway, "viewer")
    page.wait_for_selector(FLEET)
    row = cells(page, FLEET)
    assert row[0:2] == ["llama3.2", "2"]
    assert loaded_marks(page, "llama3.2") == {"a": ("loaded", "a (kept)"), "b": ("loaded", "b (kept)")}
    assert row[3] == str(llama["cold_loads"]) and llama["cold_loads"] >= 1  # the first chat loaded it
    assert near(row[4], llama["cache_hit_rate"] * 100, " %")
    assert near(row[5], llama["tokens_per_second"])
    assert row[6] == "3"
    assert "keep_alive -1" in page.locator(f"{FLEET} td").nth(1).get_attribute("title")

    qwen = "#fleet-table tr[data-model='qwen3']"
    assert cells(page, qwen)[1] == "\u2014"  # not in gateway.models
    assert cells(page, qwen)[3:7] == ["0", "\u2014", "\u2014", "0"]  # never asked for: nothing measured
    marks = loaded_marks(page, "qwen3")
    assert marks["a"][0] == "expiring" and re.fullmatch(r"a expiring in \d+ s", marks["a"][1]), marks
    assert marks["b"][0] == "loaded" and re.fullmatch(r"b \(in (9|10) min\)", marks["b"][1]), marks
    style = page.locator(f"{qwen} .backend").evaluate_all("ms => ms.map(m => getComputedStyle(m).color)")
    assert style[0] != style[1]  # expiring looks different

    backends = {b["name"]: b for b in truth["backends"]}
    for name in ("a", "b"):
        shown = cells(page, f"#models-table tr[data-backend='{name}']")
        b = backends[name]
        assert shown[:5] == [name, "ollama", "yes", "closed", f"0/{b['max_concurrency']}"]
        assert "llama3.2*" in shown[5] and "qwen3*" in shown[5]
        assert shown[6:] == [str(b["requests"]), "0"]
    assert sum(b["requests"] for b in backends.values()) == 3
    # a name from a server is text: listed, never markup
    assert page.locator("#models-table tr[data-backend='b'] td").nth(5).inner_text().count(EVIL) == 1
    assert page.locator("#fleet-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.model)").count(EVIL) == 1
    assert page.locator("#models img").count() == 0 and page.evaluate("window.__pwned") is None
    shot(page, "models-fleet")

    unloaded = operator.post("/api/v1/models/unload", json={"model": "llama3.2", "backends": ["b"]}).json()
    assert unloaded["unloaded"] == ["b"], unloaded
    page.wait_for_selector(f"{FLEET} .backend[data-backend='b']", state="detached", timeout=REFRESH_MS)
    assert loaded_marks(page, "llama3.2") == {"a": ("loaded", "a (kept)")}
    assert "also on b" in cells(page, FLEET)[2]
    assert page.locator(FLEET).get_attribute("data-loaded-on") == "1"
    assert cells(page, FLEET)[6] == "3"
    shown = cells(page, "#models-table tr[data-backend='b']")[5]  # the same refresh
    assert "llama3.2*" not in shown and "llama3.2" in shown and "qwen3*" in shown
    assert errors == []
    shot(page, "models-fleet-unloaded")
