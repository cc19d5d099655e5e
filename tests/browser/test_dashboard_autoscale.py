"""The dashboard's Autoscaling section in a real browser (Debian's Chromium driven by Playwright)
against the REST API served over real HTTP (tests/api/api_support.py: no head runs, so the state
document written straight into the store here is what the page shows): the status line, the
profiles, the workers-over-time chart and the decision log; operators change bounds and switch the
autoscaler from the page (a refused change shows the API's reason and changes nothing); viewers get
no form; an autoscaler that never reported is said so. Screenshots go with the other dashboard ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_support import Api, ApiFactory
from test_dashboard import CHROMIUM, FLAGS, playwright_api, shot, sign_in

pytestmark = [pytest.mark.browser]

STATE: dict[str, Any] = {
    "enabled": True, "interval_s": 5, "provider": "local", "unmanaged": 2,
    "error": "launching default: no free port",
    "profiles": [{"name": "default", "min": 1, "max": 4, "current": 2, "ready": 1, "starting": 1,
                  "draining": 1, "busy": 3, "desired": 3, "reason": "target_tracking: backlog",
                  "labels": [], "resources": {}, "models": [], "concurrency": 1, "start_s": 2.0,
                  "workers": ["as-default-1", "as-default-2", "as-default-3"]}],
    "unschedulable": [{"queue": "gpu", "requires": {"GPU": 1.0}, "labels": [], "queued": 7}],
}
TWO_PROFILES = {"autoscale": {"profiles": {"cpu": {"min": 1, "max": 4}, "gpu": {"min": 0, "max": 2,
                                                                               "resources": {"GPU": 1}}}}}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def report(api: Api, state: dict[str, Any] | None = None) -> None:
    """What the head writes each round: the state document, with samples of the last two minutes."""
    now = time.time()
    doc = {"at": now, **STATE, **(state or {})}
    doc.setdefault("samples", [[now - 120, {"default": [1, 1]}], [now - 60, {"default": [1, 3]}],
                               [now - 1, {"default": [2, 3]}]])
    api.store.put_autoscale("state", doc, now)


def decide(api: Api, *changes: tuple[str, int, int, str]) -> None:
    now = time.time()
    api.store.add_scale_decisions([{"at": now - 100 + i, "profile": profile, "from": old, "to": new,
                                    "reason": reason, "inputs": {"queued": 30}}
                                   for i, (profile, old, new, reason) in enumerate(changes)])


@pytest.fixture
def open_section(browser: object, api_factory: ApiFactory) -> Iterator[Callable[..., Any]]:
    """Sign in as `who` and go to the section. Every page closes before api_factory stops the
    servers: a page's open event stream would hold up a server's shutdown."""
    pages: list[Any] = []

    def open_(api: Api, who: str, width: int = 1280) -> Any:
        page = sign_in(browser, api, api.tokens[who], width=width)  # type: ignore[arg-type]  # it reads .url only
        pages.append(page)
        page.click("nav a[href='#autoscale']")
        page.wait_for_selector("#autoscale-status:not(:empty)")
        return page

    yield open_
    for page in pages:
        page.close()


def cells(page: Any, selector: str) -> list[str]:
    return page.locator(f"{selector} td").all_inner_texts()


def test_the_panel_shows_profiles_the_chart_and_the_decision_log(api: Api, open_section) -> None:
    report(api)
    decide(api, ("default", 0, 1, "back within bounds 1..4"), ("default", 1, 3, "target_tracking: backlog"))
    page = open_section(api, "viewer")
    profile = "#profiles-table tr[data-profile='default']"
    page.wait_for_selector(profile)
    assert cells(page, profile) == ["default", "1..4", "1", "1", "1", "3", "3", "target_tracking: backlog"]
    status = page.inner_text("#autoscale-status")
    for words in ("enabled", "provider local", "head reporting", "2 workers not managed by the autoscaler"):
        assert words in status, status
    assert page.inner_text("#autoscale-provider-error") == "provider error: launching default: no free port"
    assert page.locator("#autoscale-backlog li").all_inner_texts() == [
        "7 queued jobs in 'gpu' need GPU=1: no profile can run them"]
    chart = page.locator("#autoscale-charts figure[data-profile='default']")
    assert chart.locator("polyline").count() == 2
    assert [chart.locator(f"polyline.{kind}").count() for kind in ("ready", "desired")] == [1, 1]
    # steps: each sample after the first holds the last count up to its time, then moves (3 samples -> 5 points)
    ready = chart.locator("polyline.ready").get_attribute("points").split()
    assert len(ready) == 5 and ready[0].startswith("0.0,") and ready[-1].startswith("600.0,")
    assert "ready" in chart.locator("figcaption").inner_text() and "desired" in chart.locator("figcaption").inner_text()
    rows = page.locator("#decisions-table tbody tr")
    assert rows.count() == 2
    assert cells(page, "#decisions-table tbody tr:nth-child(1)")[1:] == ["default", "1 → 3", "target_tracking: backlog"]
    assert cells(page, "#decisions-table tbody tr:nth-child(2)")[1:] == ["default", "0 → 1", "back within bounds 1..4"]
    assert page.locator("#autoscale-form").count() == 0  # a viewer: no form
    assert page.locator("button.op").count() == 0
    shot(page, "autoscale-viewer")


def test_an_autoscaler_that_never_reported_is_said_so_and_the_poll_picks_up_its_first_report(
        api: Api, open_section) -> None:
    page = open_section(api, "viewer", width=390)  # phone width
    assert "autoscaler has not reported yet" in page.inner_text("#autoscale-status")
    assert page.locator("#profiles-table tbody tr").count() == 0
    assert page.locator("#autoscale-charts figure").count() == 0
    assert page.inner_text("#autoscale-charts") == "no samples yet"
    assert page.inner_text("#message") == ""  # nothing broke
    shot(page, "autoscale-not-reported")
    report(api, {"error": None, "unschedulable": [], "unmanaged": 0})
    page.wait_for_selector("#profiles-table tr[data-profile='default']", timeout=15_000)  # the 5 s refresh
    assert "head reporting" in page.inner_text("#autoscale-status")
    assert page.locator("#autoscale-provider-error").is_hidden()
    assert page.locator("#autoscale-backlog li").count() == 0


def test_an_operator_sets_bounds_and_switches_the_autoscaler(api: Api, open_section) -> None:
    report(api)
    page = open_section(api, "operator")
    page.wait_for_selector("#autoscale-form")
    assert page.locator("#autoscale-profile").is_hidden()  # one profile: nothing to choose
    assert page.get_attribute("#autoscale-min", "placeholder") == "1"
    page.fill("#autoscale-min", "2")
    page.fill("#autoscale-max", "6")
    page.click("#autoscale-form button:text-is('Enable')")
    page.wait_for_selector("#message:has-text('autoscaler enabled')")
    assert api.store.get_autoscale("override")[0] == {"enabled": True, "profiles": {"default": {"min": 2, "max": 6}}}
    page.wait_for_selector("#autoscale-status:has-text('operator override: enable, bounds default 2..6')")
    assert page.input_value("#autoscale-min") == ""  # done: cleared
    page.click("#autoscale-form button:text-is('Disable')")
    page.wait_for_selector("#message:has-text('autoscaler disabled')")
    assert api.store.get_autoscale("override")[0] == {"enabled": False, "profiles": {"default": {"min": 2, "max": 6}}}
    assert page.locator("#autoscale-form-error").is_hidden()
    shot(page, "autoscale-operator")


def test_a_refused_change_shows_the_reason_and_changes_nothing(api: Api, open_section) -> None:
    report(api)
    with api.client("operator") as c:
        assert c.put("/api/v1/autoscale", json={"enabled": True, "min": 1, "max": 3}).status_code == 200
    before = api.store.get_autoscale("override")
    page = open_section(api, "operator")
    page.wait_for_selector("#autoscale-form")
    page.fill("#autoscale-min", "5")
    page.fill("#autoscale-max", "2")
    page.click("#autoscale-form button:text-is('Enable')")
    page.wait_for_selector("#autoscale-form-error:not([hidden])")
    assert "min (5) is greater than max (2) for profile 'default'" in page.inner_text("#autoscale-form-error")
    assert api.store.get_autoscale("override") == before
    assert page.input_value("#autoscale-min") == "5"  # kept, to be corrected
    shot(page, "autoscale-refused")
    page.fill("#autoscale-min", "2")  # corrected: the error goes
    page.click("#autoscale-form button:text-is('Enable')")
    page.wait_for_selector("#autoscale-form-error", state="hidden")
    assert api.store.get_autoscale("override")[0]["profiles"] == {"default": {"min": 2, "max": 2}}


def test_with_several_profiles_the_operator_chooses_one(api_factory: ApiFactory, open_section) -> None:
    api = api_factory(TWO_PROFILES)
    now = time.time()
    gpu = {**STATE["profiles"][0], "name": "gpu", "min": 0, "max": 2, "ready": 0, "starting": 0, "draining": 0,
           "busy": 0, "desired": 0, "reason": "no demand", "resources": {"GPU": 1}}
    report(api, {"profiles": [{**STATE["profiles"][0], "name": "cpu"}, gpu],
                 "samples": [[now - 30, {"cpu": [1, 3]}], [now - 5, {"cpu": [2, 3], "gpu": [0, 0]}]]})
    page = open_section(api, "operator")
    page.wait_for_selector("#profiles-table tr[data-profile='gpu']")
    assert page.locator("#autoscale-charts figure").count() == 2
    assert page.locator("#autoscale-charts figure[data-profile='gpu'] polyline").count() == 2
    assert page.locator("#autoscale-profile").is_visible()
    page.select_option("#autoscale-profile", "gpu")
    assert page.get_attribute("#autoscale-max", "placeholder") == "2"
    page.fill("#autoscale-max", "3")
    page.click("#autoscale-form button:text-is('Enable')")
    page.wait_for_selector("#message:has-text('autoscaler enabled')")
    assert api.store.get_autoscale("override")[0] == {"enabled": True, "profiles": {"gpu": {"min": 0, "max": 3}}}
    shot(page, "autoscale-two-profiles")
