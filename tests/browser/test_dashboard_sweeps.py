"""The dashboard's Sweeps and Model registry sections in a real browser (Debian's Chromium driven by
Playwright) against the REST API served over real HTTP (tests/api/api_support.py: no head runs, so
the sweep, its trials, their reported metrics and the registered versions are written straight into
the store the way the head's sweep driver writes them): the sweeps table with its counts and best
trial, a sweep's trials and their learning curves drawn as SVG (pruned ones dashed, the best one
highlighted), the curves growing as trials report, the registry with its aliases and versions; a
submitter sees its own sweeps and no registry; text from the store stays text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_support import Api
from test_dashboard import CHROMIUM, FLAGS, playwright_api, shot

from clusterai.core.trials import ModelVersion
from clusterai.service.submission import spec_factory
from clusterai.sweeps.spec import parse_spec

pytestmark = [pytest.mark.browser]

EVIL = "<img src=x onerror='window.__pwned = 1'><script>window.__pwned = 2</script>"
# number -> (params, final state, final value, note, accuracy per step)
TRIALS: dict[int, tuple[dict[str, Any], str, float | None, str | None, list[float]]] = {
    0: ({"alpha": 1e-4, "penalty": "l2"}, "succeeded", 0.91, None, [0.80, 0.86, 0.89, 0.90, 0.91]),
    1: ({"alpha": 0.05, "penalty": "l1"}, "pruned", 0.62, "pruned at step 2: below the median", [0.55, 0.62]),
    2: ({"alpha": 3e-5, "penalty": "l2"}, "succeeded", 0.953, None, [0.84, 0.90, 0.93, 0.945, 0.953]),
    3: ({"alpha": 0.02, "penalty": "l1"}, "pruned", 0.7, "pruned at step 3: below the median", [0.6, 0.66, 0.7]),
    4: ({"alpha": 0.09, "penalty": "l1"}, "failed", None, EVIL, []),
    5: ({"alpha": 2e-4, "penalty": "l2"}, "running", None, None, [0.82, 0.87]),
}


def make_sweep(api: Api, name: str, owner: str, trials: dict[int, Any]) -> tuple[int, list[int]]:
    """A running sweep of train.sgd_digits and its trials, as the driver stores them; (id, job ids)."""
    spec = parse_spec({"name": name, "objective": "train.sgd_digits", "trials": 6, "sampler": "random",
                       "space": {"alpha": {"loguniform": [1e-5, 0.1]}, "penalty": ["l1", "l2"]},
                       "metric": "accuracy", "mode": "max", "pruner": "median",
                       "register": {"name": "digits", "alias": "production"}}, default_sampler="random")
    now = time.time()
    sweep_id = api.store.create_sweep(name, spec.to_json(), now, owner=owner)
    make = spec_factory(api.config, "train.sgd_digits", owner=owner)
    jobs = api.store.add_trials(sweep_id, [(n, p, make(p)) for n, (p, *_) in trials.items()], now)
    api.store.add_trial_metrics([(sweep_id, n, step + 1, {"accuracy": acc, "loss": 1 - acc}, now + step)
                                 for n, (*_, curve) in trials.items() for step, acc in enumerate(curve)])
    api.store.finish_trials([(sweep_id, n, s, value, note) for n, (_, s, value, note, _) in trials.items()
                             if s != "running"], time.time())
    return sweep_id, [j.id for j in jobs]


def register(api: Api, sweep_id: int, trial: int, job_id: int, aliases: tuple[str, ...], accuracy: float
             ) -> ModelVersion:
    artifact = {"artifact": "file:///models/digits.npz", "size": 4096, "sha256": "ab12" * 16}
    return api.store.register_model(ModelVersion(
        name="digits", version=0, artifact=artifact, created_at=0.0, params=TRIALS[trial][0],
        metrics={"accuracy": accuracy}, sweep_id=sweep_id, trial=trial, job_id=job_id, created_by="submitter",
        aliases=aliases), time.time())


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def open_section(browser: Any) -> Iterator[Callable[..., tuple[Any, list[str]]]]:
    """Sign in as `who`, go to `section`; the page and every console error and page error it logs.
    Every page closes before the API stops (an open event stream would hold up its shutdown)."""
    pages: list[Any] = []

    def open_(api: Api, who: str, section: str) -> tuple[Any, list[str]]:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        pages.append(page)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.set_default_timeout(30_000)
        page.goto(api.url + "/")
        page.wait_for_url("**/login")
        page.fill("#token", api.tokens[who])
        page.keyboard.press("Enter")
        page.wait_for_url(api.url + "/")
        page.wait_for_selector("#whoami:not(:empty)")
        page.click(f"nav a[href='#{section}']")
        return page, errors

    yield open_
    for page in pages:
        page.close()


def cells(page: Any, selector: str) -> list[str]:
    return page.locator(f"{selector} td").all_inner_texts()


def test_sweeps_their_learning_curves_and_the_registry(api: Api, open_section) -> None:
    sweep_id, jobs = make_sweep(api, "digits-alpha", "submitter", TRIALS)
    register(api, sweep_id, 2, jobs[2], ("production",), 0.953)
    register(api, sweep_id, 0, jobs[0], ("staging",), 0.91)
    page, errors = open_section(api, "viewer", "sweeps")
    sweep = f"#sweeps-table tr[data-sweep='{sweep_id}']"
    page.wait_for_selector(sweep)
    shown = cells(page, sweep)
    assert shown[:6] == [str(sweep_id), "digits-alpha", "train.sgd_digits", "running", "5/6",
                         "1 running · 2 succeeded · 2 pruned · 1 failed"]
    assert shown[6] == "accuracy 0.953 (trial 2)" and shown[7] == "alpha=0.00003, penalty=l2"

    page.click(f"{sweep} button:text-is('Trials')")
    page.wait_for_selector("#sweep-detail:not([hidden]) #trials-table")
    detail = page.locator("#sweep-detail")
    assert "maximise accuracy" in detail.inner_text()
    rows = page.locator("#trials-table tbody tr")
    assert rows.count() == 6
    assert cells(page, "#trials-table tr[data-trial='2']")[:5] == ["2", "succeeded", "alpha=0.00003, penalty=l2",
                                                                   "0.953", "5"]
    assert page.locator("#trials-table tr.best").get_attribute("data-trial") == "2"
    assert cells(page, "#trials-table tr[data-trial='4']")[6] == EVIL  # a note is text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#sweep-detail img, #sweep-detail script").count() == 0

    chart = detail.locator("svg.curves")
    lines = chart.locator("polyline.trial")
    assert lines.count() == 5  # one per trial that reported (trial 4 failed before its first step)
    assert sorted(lines.evaluate_all("ls => ls.map(l => Number(l.dataset.trial))")) == [0, 1, 2, 3, 5]
    assert chart.locator("polyline.trial.pruned").evaluate_all("ls => ls.map(l => l.dataset.trial)") == ["1", "3"]
    best = chart.locator("polyline.trial.best")
    assert best.count() == 1 and best.get_attribute("data-trial") == "2"
    assert chart.locator("polyline.trial").last.get_attribute("data-trial") == "2"  # drawn last: on top
    assert len(best.get_attribute("points").split()) == 5
    # pruned lines look different from the others: dashed and grey
    style = lines.evaluate_all("ls => ls.map(l => [l.dataset.trial, getComputedStyle(l).strokeDasharray,"
                               " getComputedStyle(l).stroke, getComputedStyle(l).strokeWidth])")
    by_trial = {t: (dash, stroke, width) for t, dash, stroke, width in style}
    assert by_trial["1"][0] != "none" and by_trial["0"][0] == "none" and by_trial["1"][1] != by_trial["0"][1]
    assert by_trial["2"][1] not in (by_trial["0"][1], by_trial["1"][1])
    assert float(by_trial["2"][2].rstrip("px")) > float(by_trial["0"][2].rstrip("px"))
    assert "trial 2 (succeeded, best): accuracy 0.953 at step 5" in best.locator("title").text_content()
    labels = chart.locator("text").all_text_contents()
    for label in ("0.953", "0.55", "1", "5", "accuracy", "step"):  # min and max of both axes, their names
        assert label in labels, labels
    legend = detail.locator("figcaption").inner_text()
    assert "best" in legend and "pruned" in legend
    shot(page, "sweep-curves")

    # the running trial reports two more steps: the open chart follows (the 5 s refresh)
    api.store.add_trial_metrics([(sweep_id, 5, step, {"accuracy": acc}, time.time())
                                 for step, acc in ((3, 0.9), (4, 0.92))])
    running = "#sweep-detail svg.curves polyline.trial[data-trial='5']"
    deadline = time.monotonic() + 15
    while len(page.get_attribute(running, "points").split()) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)  # (the page's CSP refuses the string eval that wait_for_function needs)
    assert len(page.get_attribute(running, "points").split()) == 4
    assert cells(page, "#trials-table tr[data-trial='5']")[4] == "4"

    page.click("nav a[href='#registry']")
    model = "#registry-table tr[data-model='digits']"
    page.wait_for_selector(model)
    assert cells(page, model)[:5] == ["digits", "v2", "2", "production → v1, staging → v2", "accuracy=0.91"]
    page.click(f"{model} button:text-is('Versions')")
    page.wait_for_selector("#registry-detail:not([hidden]) #versions-table")
    v1 = cells(page, "#versions-table tr[data-version='1']")
    assert [v1[i] for i in (0, 1, 3, 4, 5)] == ["v1", "production", "submitter", f"sweep {sweep_id} trial 2",
                                                 "accuracy=0.953"]
    assert page.locator("#versions-table tbody tr").count() == 2
    assert page.locator("#registry-refused").is_hidden()
    shot(page, "registry")
    assert page.inner_text("#message") == ""
    assert errors == []


def test_a_submitter_sees_its_own_sweeps_and_no_registry(api: Api, open_section) -> None:
    mine, _ = make_sweep(api, "mine", "submitter", {0: TRIALS[0], 1: TRIALS[1]})
    theirs, _ = make_sweep(api, "theirs", "other", {0: TRIALS[2]})
    api.store.update_sweep(mine, "succeeded", time.time(), expected="running", best=0)
    register(api, theirs, 0, 1, ("production",), 0.9)
    page, errors = open_section(api, "submitter", "sweeps")
    page.wait_for_selector(f"#sweeps-table tr[data-sweep='{mine}']")
    assert page.locator("#sweeps-table tbody tr").count() == 1  # not the other submitter's
    assert cells(page, f"#sweeps-table tr[data-sweep='{mine}']")[3:6] == ["succeeded", "2/6", "1 succeeded · 1 pruned"]
    page.click(f"#sweeps-table tr[data-sweep='{mine}'] button")
    page.wait_for_selector("#sweep-detail:not([hidden]) svg.curves")
    assert page.locator("#sweep-detail polyline.trial").count() == 2
    assert page.locator("#sweep-detail polyline.trial.best").get_attribute("data-trial") == "0"
    # no registry for this role: no link to it, and, gone to by address, it says why
    assert page.locator("nav a[href='#registry']").is_hidden()
    page.goto(api.url + "/#registry")
    page.wait_for_selector("#registry-refused", state="visible")
    assert page.locator("#registry-table").is_hidden()
    assert page.inner_text("#message") == ""
    shot(page, "registry-submitter")
    assert errors == []


def test_an_empty_sweep_says_no_trial_reported(api: Api, open_section) -> None:
    sweep_id, _ = make_sweep(api, "fresh", "submitter", {0: ({"alpha": 1e-3, "penalty": "l2"}, "running", None,
                                                             None, [])})
    page, errors = open_section(api, "admin", "sweeps")
    page.click(f"#sweeps-table tr[data-sweep='{sweep_id}'] button")
    page.wait_for_selector("#sweep-detail:not([hidden]) figure.curves")
    assert "no trial has reported yet" in page.inner_text("#sweep-detail figure.curves")
    assert page.locator("#sweep-detail svg").count() == 0
    assert cells(page, f"#sweeps-table tr[data-sweep='{sweep_id}']")[4:8] == ["0/6", "1 running", "-", "-"]
    assert page.locator("#registry-table tbody tr").count() == 0
    assert errors == []
